package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hfmerge/hfmerge/safetensors"
)

// ProvenanceFile is the name of the file push commits beside the model, recording what
// it was made from.
const ProvenanceFile = "hfmerge.json"

// sourceID says which exact inputs a source is: a Hub repo at a commit, or a local
// directory by a digest of its contents.
type sourceID struct {
	Repo     string `json:"repo,omitempty"`
	Revision string `json:"revision,omitempty"`
	Commit   string `json:"commit,omitempty"`
	Dir      string `json:"dir,omitempty"`
	// Digest is the sha256 of a local directory's files: of safetensors files, their
	// names, sizes and headers; of other files up to 64 MB, their names and bytes.
	Digest string `json:"sha256,omitempty"`
}

// fileID is one committed file.
type fileID struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	Git    string `json:"git_oid,omitempty"` // the git blob id, for files committed inline
}

// provenance is the content of hfmerge.json.
type provenance struct {
	Tool    string            `json:"tool"`
	Inputs  string            `json:"inputs"` // sha256 of tool, base, adapter and options
	Base    sourceID          `json:"base"`
	Adapter sourceID          `json:"adapter"`
	Options map[string]string `json:"options"`
	Files   map[string]fileID `json:"files"`
}

// identify names a source's exact content.
func identify(s source) (sourceID, error) {
	switch s := s.(type) {
	case *hubSource:
		return sourceID{Repo: s.repo.String(), Revision: s.rev, Commit: s.commit}, nil
	case *localSource:
		d, err := dirDigest(s.dir)
		return sourceID{Dir: filepath.Base(filepath.Clean(s.dir)), Digest: d}, err
	}
	return sourceID{}, fmt.Errorf("cannot identify %s", s)
}

// dirDigest hashes a local directory's files without reading tensor bytes.
func dirDigest(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	for _, name := range names {
		p := filepath.Join(dir, name)
		st, err := os.Stat(p)
		if err != nil || !st.Mode().IsRegular() {
			continue
		}
		fmt.Fprintf(h, "%s\x00%d\x00", name, st.Size())
		f, err := os.Open(p)
		if err != nil {
			return "", err
		}
		switch {
		case strings.HasSuffix(name, ".safetensors"):
			var prefix [8]byte
			if _, err := io.ReadFull(f, prefix[:]); err == nil {
				n := binary.LittleEndian.Uint64(prefix[:])
				h.Write(prefix[:])
				if n <= safetensors.MaxHeaderLen {
					io.CopyN(h, f, int64(n))
				}
			}
		case st.Size() <= 64<<20:
			_, err = io.Copy(h, f)
		}
		f.Close()
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// newProvenance records the inputs of a run; Inputs is their digest.
func newProvenance(base, adapter sourceID, o *options) *provenance {
	p := &provenance{Tool: "hfmerge " + version(), Base: base, Adapter: adapter,
		Options: map[string]string{"dtype": string(o.plan.DType), "tied_embeddings": string(o.plan.Tied)},
		Files:   map[string]fileID{}}
	b, _ := json.Marshal([]any{p.Tool, p.Base, p.Adapter, p.Options})
	sum := sha256.Sum256(b)
	p.Inputs = hex.EncodeToString(sum[:])
	return p
}

func (p *provenance) encode() []byte {
	b, _ := json.MarshalIndent(p, "", "  ")
	return append(b, '\n')
}

// upToDate reads the target's hfmerge.json and says whether it records these inputs and
// every file it lists is at the branch's head with the content it records.
func upToDate(ctx context.Context, t *target, want *provenance) (bool, error) {
	entries, err := t.client.Tree(ctx, t.repo, t.branch, "", true)
	if err != nil {
		return false, nil // no branch yet, or nothing there
	}
	byPath := map[string]int{}
	for i, e := range entries {
		byPath[e.Path] = i
	}
	if _, ok := byPath[ProvenanceFile]; !ok {
		return false, nil
	}
	info, err := t.client.FileInfo(ctx, t.repo, t.branch, ProvenanceFile)
	if err != nil || info.Size > 16<<20 {
		return false, err
	}
	b, err := t.client.ReadRange(ctx, info, 0, info.Size)
	if err != nil {
		return false, err
	}
	var have provenance
	if json.Unmarshal(b, &have) != nil || have.Inputs != want.Inputs || len(have.Files) == 0 {
		return false, nil
	}
	for path, f := range have.Files {
		i, ok := byPath[path]
		if !ok {
			return false, nil
		}
		e := entries[i]
		switch {
		case e.LFS != nil && (e.LFS.OID != f.SHA256 || e.LFS.Size != f.Size):
			return false, nil
		case e.LFS == nil && (f.Git == "" || e.OID != f.Git):
			return false, nil
		}
	}
	return true, nil
}
