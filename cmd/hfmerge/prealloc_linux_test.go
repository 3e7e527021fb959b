//go:build linux

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPreallocate: the file takes its full size at once, and what is written over it
// is what reads back; a reservation the disk cannot hold fails naming the file.
func TestPreallocate(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "shard"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := preallocate(f, 3<<20); err != nil {
		t.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	// Where the filesystem has no fallocate the file stays empty until written.
	if st.Size() != 3<<20 && st.Size() != 0 {
		t.Fatalf("size %d after preallocating 3 MiB", st.Size())
	}
	want := bytes.Repeat([]byte("merged"), (3<<20)/6+1)[:3<<20]
	if _, err := f.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the preallocated file does not read back what was written")
	}
	if st.Size() == 0 {
		return // nothing more to check without fallocate
	}
	free := int64(fs.Bavail) * int64(fs.Bsize)
	g, err := os.Create(filepath.Join(dir, "huge"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	err = preallocate(g, free+1<<40)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("huge")) {
		t.Fatalf("preallocating more than the disk holds: %v", err)
	}
}
