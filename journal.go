package hfmerge

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// journal records, for one run's inputs and target, what push has done with each
// shard, so that a rerun after a crash neither merges again a shard whose sha256 is
// known nor uploads again one the Hub has. It is rewritten atomically after every
// change. Its name is a digest of the inputs and the target, so a journal is only ever
// used by a run of the same inputs; and "uploaded" is only a hint: the Hub is asked
// again before anything is skipped.
type journal struct {
	mu     sync.Mutex
	path   string
	Inputs string                   `json:"inputs"`
	Target string                   `json:"target"`
	Shards map[string]*journalShard `json:"shards"`
	stale  bool                     // a base file changed since the journal was written
}

type journalShard struct {
	SHA256   string `json:"sha256"`
	Size     int64  `json:"size"`
	Uploaded bool   `json:"uploaded"`
	// Base is the sha256 of the base file the shard was merged from, and BaseStamp
	// that file's cheap identity when it was (see baseid.go); both empty for a Hub base
	// whose listing gives no digest.
	BaseFile  string `json:"base_file,omitempty"`
	Base      string `json:"base_sha256,omitempty"`
	BaseStamp string `json:"base_stamp,omitempty"`
}

// openJournal reads the journal at path, or starts an empty one; a journal that does not
// parse, is for other inputs, or records a base file whose stamp is not its stamp now
// (stamps: base file → fileStamp) is started again.
func openJournal(path, inputs, target string, stamps map[string]string) *journal {
	j := &journal{path: path, Inputs: inputs, Target: target, Shards: map[string]*journalShard{}}
	b, err := os.ReadFile(path)
	if err != nil {
		return j
	}
	var old journal
	if json.Unmarshal(b, &old) == nil && old.Inputs == inputs && old.Target == target && old.Shards != nil {
		j.Shards = old.Shards
	}
	for _, s := range j.Shards {
		if s.BaseStamp != "" && stamps[s.BaseFile] != s.BaseStamp {
			j.stale = true
		}
	}
	if j.stale {
		j.Shards = map[string]*journalShard{}
	}
	return j
}

// get returns what the journal knows of a shard of the given size.
func (j *journal) get(name string, size int64) (journalShard, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if s, ok := j.Shards[name]; ok && s.Size == size && len(s.SHA256) == 64 {
		return *s, true
	}
	return journalShard{}, false
}

// set records a shard and writes the journal.
func (j *journal) set(name string, s journalShard) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if old, ok := j.Shards[name]; ok && s.Base == "" && old.SHA256 == s.SHA256 {
		s.BaseFile, s.Base, s.BaseStamp = old.BaseFile, old.Base, old.BaseStamp // an upload record keeps what learning found
	}
	j.Shards[name] = &s
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(j.path), 0o755); err != nil {
		return err
	}
	tmp := j.path + ".tmp"
	err = os.WriteFile(tmp, b, 0o644)
	if err == nil {
		err = os.Rename(tmp, j.path)
	}
	if err != nil {
		os.Remove(tmp) // a full disk leaves no empty journal behind
	}
	return err
}

// remove deletes the journal once it can no longer be used.
func (j *journal) remove() error {
	if err := os.Remove(j.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// cleanWorkDir removes what killed or finished runs left in the work dir and can never
// be used again: temp dirs no process holds, and journals of this target for other
// inputs (a rerun with these inputs replaces what they describe).
func cleanWorkDir(work, keepID, inputs, target string) {
	entries, _ := os.ReadDir(work)
	for _, e := range entries {
		name := e.Name()
		p := filepath.Join(work, name)
		switch {
		case e.IsDir() && strings.HasPrefix(name, "tmp-") && (keepID == "" || name != "tmp-"+keepID):
			if unlock, err := tryLockDir(p); err == nil {
				os.RemoveAll(p)
				unlock()
			}
		case strings.HasPrefix(name, "journal-") && strings.HasSuffix(name, ".json.tmp"):
			if keepID == "" || !strings.Contains(name, keepID) {
				os.Remove(p)
			}
		case strings.HasPrefix(name, "journal-") && strings.HasSuffix(name, ".json") && (keepID == "" || !strings.Contains(name, keepID)):
			var old journal
			if b, err := os.ReadFile(p); err == nil && json.Unmarshal(b, &old) == nil && old.Target == target && old.Inputs != inputs {
				os.Remove(p)
			}
		}
	}
}
