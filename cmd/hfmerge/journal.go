package main

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// journal records, per run's inputs and target, what push has done with each shard, so
// that a rerun after a crash neither merges again a shard whose digest is known nor
// uploads again one the Hub has. It is rewritten atomically after every change.
type journal struct {
	mu     sync.Mutex
	path   string
	Inputs string                   `json:"inputs"`
	Target string                   `json:"target"`
	Shards map[string]*journalShard `json:"shards"`
}

type journalShard struct {
	SHA256   string `json:"sha256"`
	Size     int64  `json:"size"`
	Uploaded bool   `json:"uploaded"`
}

// openJournal reads the journal at path, or starts an empty one; a journal that does not
// parse or is for other inputs is started again.
func openJournal(path, inputs, target string) *journal {
	j := &journal{path: path, Inputs: inputs, Target: target, Shards: map[string]*journalShard{}}
	b, err := os.ReadFile(path)
	if err != nil {
		return j
	}
	var old journal
	if json.Unmarshal(b, &old) == nil && old.Inputs == inputs && old.Target == target && old.Shards != nil {
		j.Shards = old.Shards
	}
	return j
}

func (j *journal) get(name string) journalShard {
	j.mu.Lock()
	defer j.mu.Unlock()
	if s, ok := j.Shards[name]; ok {
		return *s
	}
	return journalShard{}
}

// set records a shard and writes the journal.
func (j *journal) set(name string, s journalShard) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.Shards[name] = &s
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(j.path), 0o755); err != nil {
		return err
	}
	tmp := j.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, j.path)
}

// remove deletes the journal once its run has committed.
func (j *journal) remove() error {
	if err := os.Remove(j.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
