package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

// seedRepos commits every repo found under dir: dir/<owner>/<name>/** as models,
// dir/datasets/<owner>/<name>/** and dir/spaces/<owner>/<name>/** as the other kinds.
// Files already identical on main are left alone, so restarting with --state and
// --seed does not pile up commits. It returns the repos it committed to.
func seedRepos(h *hubtest.Hub, dir string) ([]string, error) {
	var repos []string
	owners, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("seed: %w", err)
	}
	for _, o := range owners {
		if !o.IsDir() {
			continue
		}
		prefix, ownerDir := "", filepath.Join(dir, o.Name())
		if o.Name() == "datasets" || o.Name() == "spaces" {
			prefix = o.Name() + "/"
			inner, err := os.ReadDir(ownerDir)
			if err != nil {
				return nil, fmt.Errorf("seed: %w", err)
			}
			for _, o2 := range inner {
				if o2.IsDir() {
					r, err := seedOwner(h, prefix, filepath.Join(ownerDir, o2.Name()), o2.Name())
					if err != nil {
						return nil, err
					}
					repos = append(repos, r...)
				}
			}
			continue
		}
		r, err := seedOwner(h, prefix, ownerDir, o.Name())
		if err != nil {
			return nil, err
		}
		repos = append(repos, r...)
	}
	return repos, nil
}

func seedOwner(h *hubtest.Hub, prefix, ownerDir, owner string) ([]string, error) {
	names, err := os.ReadDir(ownerDir)
	if err != nil {
		return nil, fmt.Errorf("seed: %w", err)
	}
	var repos []string
	for _, n := range names {
		if !n.IsDir() {
			continue
		}
		id := prefix + owner + "/" + n.Name()
		files, err := readTree(filepath.Join(ownerDir, n.Name()))
		if err != nil {
			return nil, err
		}
		for p, data := range files {
			if old, err := h.File(id, "main", p); err == nil && bytes.Equal(old, data) {
				delete(files, p)
			}
		}
		if len(files) == 0 {
			continue
		}
		if _, err := h.Seed(id, files, hubtest.Message("Seed from hubfake")); err != nil {
			return nil, err
		}
		repos = append(repos, id)
	}
	return repos, nil
}

// readTree reads every regular file under root, keyed by slash-separated path.
func readTree(root string) (map[string][]byte, error) {
	files := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == ".git" {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files[filepath.ToSlash(rel)] = data
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("seed: %w", err)
	}
	return files, nil
}
