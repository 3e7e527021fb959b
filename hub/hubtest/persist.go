package hubtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// State dir layout (WithStateDir):
//
//	state.json        repos, refs and commits (file entries without content)
//	blobs/<sha1>      content of regular files, by git blob sha1
//	objects/<sha256>  LFS objects
//
// Pending uploads, tokens and counters are not saved: tokens come from the command
// line, and an interrupted upload is started again by its client.
type savedState struct {
	Seq   int     `json:"seq"`
	Repos []*repo `json:"repos"`
}

// persistLocked rewrites state.json and any missing blob file. h.mu must be held.
func (h *Hub) persistLocked() error {
	dir := h.cfg.stateDir
	if dir == "" {
		return nil
	}
	st := savedState{Seq: h.seq}
	for _, k := range sortedRepoKeys(h.repos) {
		rp := h.repos[k]
		st.Repos = append(st.Repos, rp)
		for _, cm := range rp.Commits {
			for _, e := range cm.Files {
				if e.isLFS() {
					continue
				}
				if err := writeOnce(filepath.Join(dir, "blobs", e.BlobOID), e.data); err != nil {
					return err
				}
			}
		}
	}
	b, err := json.MarshalIndent(st, "", " ")
	if err != nil {
		return fmt.Errorf("hubtest: save state: %w", err)
	}
	return writeAtomic(filepath.Join(dir, "state.json"), b)
}

func sortedRepoKeys(m map[repoKey]*repo) []repoKey {
	byName := map[string]repoKey{}
	for k := range m {
		byName[k.String()] = k
	}
	var out []repoKey
	for _, n := range sortedKeys(byName) {
		out = append(out, byName[n])
	}
	return out
}

// persistObjectLocked saves an LFS object. h.mu must be held.
func (h *Hub) persistObjectLocked(oid string, data []byte) error {
	if h.cfg.stateDir == "" {
		return nil
	}
	return writeOnce(filepath.Join(h.cfg.stateDir, "objects", oid), data)
}

// writeOnce writes a content-addressed file unless it exists.
func writeOnce(path string, data []byte) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	return writeAtomic(path, data)
}

// writeAtomic writes through a temp file and a rename, so a crash never leaves half a
// file under the final name.
func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("hubtest: save state: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("hubtest: save state: %w", err)
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("hubtest: save state: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("hubtest: save state: %w", err)
	}
	return nil
}

// load reads the state dir, if it holds a state.
func (h *Hub) load() error {
	dir := h.cfg.stateDir
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("hubtest: load state: %w", err)
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("hubtest: load state %s: %w", dir, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq = st.Seq
	for _, rp := range st.Repos {
		for _, cm := range rp.Commits {
			for p, e := range cm.Files {
				if e.isLFS() {
					continue
				}
				if e.data, err = os.ReadFile(filepath.Join(dir, "blobs", e.BlobOID)); err != nil {
					return fmt.Errorf("hubtest: load state: %s of commit %s: %w", p, cm.ID, err)
				}
			}
		}
		if rp.Tags == nil {
			rp.Tags = map[string]string{}
		}
		if rp.PRs == nil {
			rp.PRs = map[int]string{}
		}
		if rp.Granted == nil {
			rp.Granted = map[string]bool{}
		}
		h.repos[rp.key()] = rp
	}
	entries, err := os.ReadDir(filepath.Join(dir, "objects"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("hubtest: load state: %w", err)
	}
	for _, de := range entries {
		if !isSHA256(de.Name()) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, "objects", de.Name()))
		if err != nil {
			return fmt.Errorf("hubtest: load state: %w", err)
		}
		if sha256Hex(data) != de.Name() {
			return fmt.Errorf("hubtest: load state: object %s is corrupt", de.Name())
		}
		h.objects[de.Name()] = data
	}
	return nil
}
