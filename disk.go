package hfmerge

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/upload"
)

// disk is the filesystem merged files are written to. Its zero value asks the real
// one; tests set free to fake a small or full disk, so that no test fills the real one.
type disk struct {
	freeSpace func(dir string) (int64, bool)
}

// free is the space available to this user in the filesystem holding dir.
func (d disk) free(dir string) (int64, bool) {
	if d.freeSpace != nil {
		return d.freeSpace(dir)
	}
	return freeSpace(dir)
}

// ErrNoSpace marks a file the disk has no room for.
var ErrNoSpace = fmt.Errorf("no space left on the disk")

// preallocate reserves n bytes of disk for f before a shard is written into it, so
// that a full disk is an error at once rather than after most of a shard, and the
// filesystem allocates the shard in one go (on ext4 this takes a fifth off a merge's
// time). The free space is checked first: a reservation past it would make fallocate
// take every free block before it fails, and for that moment every other program
// writing to the disk would fail too. A failed reservation is given back.
func (d disk) preallocate(f *os.File, n int64) error {
	if n <= 0 {
		return nil
	}
	if free, ok := d.free(dirOf(f.Name())); ok && n > free {
		return fmt.Errorf("%s: no room for %s (%s free): %w", f.Name(), human(n), human(free), ErrNoSpace)
	}
	if err := fallocate(f, n); err != nil {
		f.Truncate(0)
		return fmt.Errorf("%s: no room for %s: %w (%w)", f.Name(), human(n), ErrNoSpace, err)
	}
	return nil
}

func dirOf(path string) string {
	if i := strings.LastIndexByte(path, os.PathSeparator); i > 0 {
		return path[:i]
	}
	return "."
}

// human prints a byte count with a decimal unit, as the Hub shows sizes (MB = 10⁶
// bytes throughout hfmerge).
func human(n int64) string {
	if n < 0 {
		return "-" + human(-n)
	}
	units := []string{"B", "kB", "MB", "GB", "TB", "PB"}
	f := float64(n)
	i := 0
	for f >= 1000 && i < len(units)-1 {
		f /= 1000
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return strings.TrimSuffix(fmt.Sprintf("%.1f", f), ".0") + " " + units[i]
}

// Human prints a byte count as hfmerge's messages do (decimal units: 1 MB = 10⁶ bytes).
func Human(n int64) string { return human(n) }

// smallFileID identifies a small file by sha256 and git blob id, so that an up-to-date
// check can compare it whether the Hub stored it inline or in LFS.
func smallFileID(b []byte) FileID {
	s := sha256.Sum256(b)
	return FileID{SHA256: hex.EncodeToString(s[:]), Size: int64(len(b)), Git: upload.GitBlobID(b)}
}

// ProblemsError is a plan that found problems with the inputs: nothing was written.
type ProblemsError struct{ Problems []mergeplan.Problem }

func (e *ProblemsError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cannot merge: %d problem(s):", len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  - " + p.String())
	}
	return b.String()
}

// ParseSize reads a size such as 5GB, 500MiB, 1.5G or a plain number of bytes.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	units := []struct {
		suffix string
		mult   float64
	}{{"TIB", 1 << 40}, {"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10}, {"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3},
		{"T", 1e12}, {"G", 1e9}, {"M", 1e6}, {"K", 1e3}, {"B", 1}}
	mult := 1.0
	for _, u := range units {
		if rest, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) || f*mult > 1e18 {
		return 0, errors.New("want a size such as 20GB, 500MiB or 0")
	}
	return int64(f * mult), nil
}
