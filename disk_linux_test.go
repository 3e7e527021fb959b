//go:build linux

package hfmerge

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPreallocate: the file takes its full size at once, and what is written over it
// is what reads back.
func TestPreallocate(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "shard"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := (disk{}).preallocate(f, 3<<20); err != nil {
		t.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil {
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
}

// TestPreallocateNoSpace: a reservation past the free space fails at once, naming the
// file, without asking the filesystem (which would take every free block before
// failing), and leaves the file empty. The free space is faked: no test fills the disk.
func TestPreallocateNoSpace(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "huge.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := disk{freeSpace: func(string) (int64, bool) { return 1 << 20, true }}
	err = d.preallocate(f, 2<<20)
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "huge.safetensors") {
		t.Fatalf("preallocating past the free space: %v", err)
	}
	if st, _ := f.Stat(); st.Size() != 0 {
		t.Errorf("the file has %d bytes after a failed reservation", st.Size())
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"20GB": 20e9, "500MiB": 500 << 20, "1.5G": 1.5e9, "0": 0, "4096": 4096, " 2 mb ": 2e6} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("%q: %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"NaN", "Inf", "1e30", "-1GB", "lots", ""} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("%q accepted as %d", in, got)
		}
	}
}
