package cache

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// The intent log. A process that fetches files into the cache only for the length of a
// run (Transient) writes down each path before it creates it, in a log under
// .locks/hfmerge/ that it holds an flock on while it lives. When it ends normally it
// removes what it fetched and the log. When it is killed (SIGKILL, a power cut), the
// log stays, and the next process that opens a cache there (Recover) finds it unlocked,
// and removes what the dead process created: its links when they still point where it
// made them, its partial downloads, its blobs when no other snapshot links to them,
// its refs when the snapshot they name is gone, and its directories when empty. Files
// that were in the cache before are never in a log.
type intents struct {
	mu     sync.Mutex
	root   string
	f      *os.File
	unlock func()
	err    error
	off    bool // no flock here: nothing is recorded
}

func intentDir(root string) string { return filepath.Join(root, ".locks", "hfmerge") }

// Transient makes c record what it creates before creating it, so that a killed run's
// files can be removed by the next (see Recover). Call it before the first Fetch of a
// run whose files are all removed when it ends.
func (c *Cache) Transient() { c.made.log = &intents{root: c.root} }

// record appends one line: kind, the path relative to the root, and an argument.
func (l *intents) record(kind, path, arg string) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil || l.off {
		return l.err
	}
	if l.f == nil {
		if l.err = os.MkdirAll(intentDir(l.root), 0o755); l.err != nil {
			return l.err
		}
		p := filepath.Join(intentDir(l.root), fmt.Sprintf("%d-%d.log", os.Getpid(), time.Now().UnixNano()))
		if l.unlock, l.err = tryLock(p); l.err != nil {
			if errors.Is(l.err, errLocked) {
				l.off, l.err = true, nil // a platform without flock
			}
			return l.err
		}
		if l.f, l.err = os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0o644); l.err != nil {
			l.unlock()
			return l.err
		}
	}
	rel, err := filepath.Rel(l.root, path)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(l.f, "%s\t%s\t%s\n", kind, filepath.ToSlash(rel), arg); err != nil {
		return err
	}
	return l.f.Sync() // on disk before the file it names exists
}

// close removes the log: everything it names was removed.
func (l *intents) close() {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		os.Remove(l.f.Name())
		l.f.Close()
		l.unlock()
		l.f = nil
	}
}

// Recover removes what killed processes left in the cache (see Transient), and
// returns the paths it removed.
func (c *Cache) Recover() []string {
	logs, _ := filepath.Glob(filepath.Join(intentDir(c.root), "*.log"))
	var removed []string
	for _, p := range logs {
		unlock, err := tryLock(p)
		if err != nil {
			continue // alive, or another process is recovering it
		}
		removed = append(removed, c.undo(p)...)
		os.Remove(p)
		unlock()
	}
	return removed
}

// undo removes what one dead process's log names, newest first.
func (c *Cache) undo(log string) []string {
	f, err := os.Open(log)
	if err != nil {
		return nil
	}
	defer f.Close()
	type entry struct{ kind, path, arg string }
	var entries []entry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), "\t", 3)
		if len(parts) != 3 {
			continue // a line cut by the kill
		}
		p, err := within(c.root, filepath.FromSlash(parts[1]))
		if err != nil {
			continue
		}
		entries = append(entries, entry{parts[0], p, parts[2]})
	}
	var removed []string
	rm := func(p string) {
		if os.Remove(p) == nil {
			removed = append(removed, p)
		}
	}
	slices.Reverse(entries)
	for _, e := range entries {
		switch e.kind {
		case "link":
			if target, err := os.Readlink(e.path); err == nil && target == e.arg {
				rm(e.path)
			}
		case "partial":
			rm(e.path)
		case "blob":
			if !linked(e.path) {
				rm(e.path)
			}
		case "ref":
			if st, err := os.Stat(e.arg); err != nil || !st.IsDir() || empty(e.arg) {
				rm(e.path)
			}
		}
	}
	for _, e := range entries {
		if e.kind == "dir" && empty(e.path) {
			rm(e.path)
		}
	}
	return removed
}

// linked says whether any snapshot of the blob's repo links to it.
func linked(blob string) bool {
	repo := filepath.Dir(filepath.Dir(blob))
	found := false
	filepath.WalkDir(filepath.Join(repo, "snapshots"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || found || d.Type()&fs.ModeSymlink == 0 {
			return nil
		}
		if t, err := filepath.EvalSymlinks(p); err == nil {
			if b, err := filepath.EvalSymlinks(blob); err == nil && t == b {
				found = true
			}
		}
		return nil
	})
	return found
}

func empty(dir string) bool {
	entries, err := os.ReadDir(dir)
	return err == nil && len(entries) == 0
}

var errLocked = errors.New("cache: locked by another process")
