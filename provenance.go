package hfmerge

import (
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
	"syscall"

	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// ProvenanceFile is the name of the file written beside the merged model, recording
// what it was made from.
const ProvenanceFile = "hfmerge.json"

// SourceID says which exact inputs a source is: a Hub repo at a commit, or a local
// directory by a digest of its contents.
type SourceID struct {
	Repo     string `json:"repo,omitempty"`
	Revision string `json:"revision,omitempty"`
	Commit   string `json:"commit,omitempty"`
	Dir      string `json:"dir,omitempty"` // the directory's name, never its full path
	// Digest identifies a local directory's content. For an adapter (small) it is the
	// sha256 of every byte of its files. For a base it is cheap to compute and changes
	// when any file does: names, sizes, modification times and inodes of every file,
	// and the safetensors headers.
	Digest string `json:"sha256,omitempty"`
}

// WeightedID is one adapter of a stack and its weight.
type WeightedID struct {
	SourceID
	Weight float64 `json:"weight"`
}

// FileID is one published file.
type FileID struct {
	SHA256 string `json:"sha256,omitempty"`
	Size   int64  `json:"size"`
	Git    string `json:"git_oid,omitempty"` // the git blob id, for files small enough to go inline
}

// Provenance is the content of hfmerge.json.
type Provenance struct {
	Tool    string   `json:"tool"`
	Inputs  string   `json:"inputs"` // sha256 of tool, base, adapter and options
	Base    SourceID `json:"base"`
	Adapter SourceID `json:"adapter"`
	// Adapters lists every adapter with its weight when several were stacked (or one
	// was weighted); Adapter is then the first.
	Adapters []WeightedID      `json:"adapters,omitempty"`
	Options  map[string]string `json:"options"`
	Files    map[string]FileID `json:"files"`
	// BaseFiles is the identity of every base shard the model was merged from (push
	// records each one's sha256; see baseid.go).
	BaseFiles map[string]FileID `json:"base_files,omitempty"`
	// Run says what started the push (a Hub Job, a webhook delivery); it is no part
	// of Inputs, so the same merge started again finds the target up to date.
	Run *Run `json:"run,omitempty"`
}

// identify names a source's exact content. full reads every byte of a local
// directory's files; otherwise only their metadata and safetensors headers.
func identify(s Source, full bool) (SourceID, error) {
	switch s := s.(type) {
	case *hubSource:
		return SourceID{Repo: s.repo.String(), Revision: s.rev, Commit: s.commit}, nil
	case *localSource:
		d, err := dirDigest(s.dir, full)
		return SourceID{Dir: filepath.Base(filepath.Clean(s.dir)), Digest: d}, err
	}
	return SourceID{}, fmt.Errorf("cannot identify %s", s)
}

// dirDigest hashes a local directory's regular files. With full, every byte of every
// file; otherwise each file's name, size, modification time and inode, and the header
// of each safetensors file, so that a model replaced in place (by a same-shaped
// sibling) has another digest without the whole model being read.
func dirDigest(dir string, full bool) (string, error) {
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
		if !full {
			var ino uint64
			if sys, ok := st.Sys().(*syscall.Stat_t); ok {
				ino = uint64(sys.Ino)
			}
			fmt.Fprintf(h, "%d\x00%d\x00", st.ModTime().UnixNano(), ino)
		}
		f, err := openRegular(p)
		if err != nil {
			return "", err
		}
		switch {
		case full:
			_, err = io.Copy(h, io.NewSectionReader(f, 0, f.Size()))
		case strings.HasSuffix(name, ".safetensors"):
			var prefix [8]byte
			if _, err := f.ReadAt(prefix[:], 0); err == nil {
				n := binary.LittleEndian.Uint64(prefix[:])
				h.Write(prefix[:])
				if n <= safetensors.MaxHeaderLen {
					io.Copy(h, io.NewSectionReader(f, 8, int64(n)))
				}
			}
		}
		f.Close()
		if err != nil {
			return "", fmt.Errorf("%s: %w", p, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// newProvenance records the inputs of a run; Inputs is their digest.
func newProvenance(l *Inputs, opts mergeplan.Options) (*Provenance, error) {
	base, err := identify(l.Base, false)
	if err != nil {
		return nil, err
	}
	p := &Provenance{Tool: "hfmerge " + Version(), Base: base,
		Options: map[string]string{"dtype": string(opts.DType), "tied_embeddings": string(opts.Tied)},
		Files:   map[string]FileID{}}
	for k, a := range l.Stack {
		id, err := identify(a.Source, true)
		if err != nil {
			return nil, err
		}
		if k == 0 {
			p.Adapter = id
		}
		p.Adapters = append(p.Adapters, WeightedID{id, a.Weight})
	}
	if len(p.Adapters) == 1 && p.Adapters[0].Weight == 1 {
		p.Adapters = nil // one adapter as it is: the file reads as it always did
	}
	if opts.Quantized != "" && opts.Quantized != mergeplan.QuantBF16 {
		// Only a mode other than the default changes a quantized base's output; the
		// default leaves every identity made before the option existed as it was.
		p.Options["quantized"] = string(opts.Quantized)
	}
	b, _ := json.Marshal([]any{p.Tool, p.Base, p.Adapter, p.Adapters, p.Options})
	sum := sha256.Sum256(b)
	p.Inputs = hex.EncodeToString(sum[:])
	return p, nil
}

func (p *Provenance) encode() []byte {
	b, _ := json.MarshalIndent(p, "", "  ")
	return append(b, '\n')
}

// readProvenance reads hfmerge.json, or nil when it is not one.
func readProvenance(b []byte) *Provenance {
	var p Provenance
	if json.Unmarshal(b, &p) != nil || p.Inputs == "" {
		return nil
	}
	return &p
}
