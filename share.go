package hfmerge

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/hfmerge/hfmerge/mergeplan"
)

// One push, many machines. `push --shards i/N` merges and uploads share i of N of the
// output shards and records what it uploaded on a scratch branch of the target repo;
// `commit` makes the one commit a single-machine push makes once every shard is
// recorded there, and deletes the branch. The partition (here), the share's push and
// its record (shareput.go) and the final commit (sharecommit.go) are split so that each
// decision is made once.

// Share is one worker's part of a push split across machines: share I of N, counted
// from 1 (a Kubernetes Indexed Job's JOB_COMPLETION_INDEX is 0-based: add one).
type Share struct{ I, N int }

// ParseShare reads "i/N" with 1 <= i <= N.
func ParseShare(s string) (Share, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Share{}, fmt.Errorf("%q is not i/N (for example 2/3: the second of three shares)", s)
	}
	i, err1 := strconv.Atoi(a)
	n, err2 := strconv.Atoi(b)
	switch {
	case err1 != nil || err2 != nil:
		return Share{}, fmt.Errorf("%q is not i/N with whole numbers", s)
	case n < 1 || n > maxShares:
		return Share{}, fmt.Errorf("%q: N must be from 1 to %d", s, maxShares)
	case i < 1 || i > n:
		return Share{}, fmt.Errorf("%q: i counts from 1 to N (%d); a 0-based index, such as JOB_COMPLETION_INDEX, needs one added", s, n)
	}
	return Share{I: i, N: n}, nil
}

// ParseShareIndex reads "k/N" with a 0-based k, 0 <= k < N, as a Kubernetes Indexed
// Job's JOB_COMPLETION_INDEX or an array job's index gives it: share k+1 of N.
func ParseShareIndex(s string) (Share, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Share{}, fmt.Errorf("%q is not k/N (for example $(JOB_COMPLETION_INDEX)/3, k counting from 0)", s)
	}
	k, err := strconv.Atoi(a)
	if err != nil {
		return Share{}, fmt.Errorf("%q is not k/N with whole numbers", s)
	}
	sh, err := ParseShare(strconv.Itoa(k+1) + "/" + b)
	if err != nil {
		return Share{}, fmt.Errorf("%q: k counts from 0 to N-1", s)
	}
	return sh, nil
}

// maxShares bounds N: more shares than that is a typo, and each share is a file on
// the scratch branch.
const maxShares = 10000

func (s Share) String() string { return fmt.Sprintf("%d/%d", s.I, s.N) }

// manifestPath is where the share's record lives on the scratch branch.
func (s Share) manifestPath() string { return fmt.Sprintf("%s/%d-of-%d.json", sharesDir, s.I, s.N) }

// pointerPath is where the share's commit names one of its shards, so that the Hub
// keeps the uploaded object referenced until the final commit does.
func (s Share) pointerPath(shard string) string {
	return fmt.Sprintf("%s/%d-of-%d/%s", sharesDir, s.I, s.N, shard)
}

const sharesDir = "shares"

// parseManifestPath reads "shares/<i>-of-<N>.json".
func parseManifestPath(p string) (Share, bool) {
	rest, ok := strings.CutPrefix(p, sharesDir+"/")
	if !ok {
		return Share{}, false
	}
	rest, ok = strings.CutSuffix(rest, ".json")
	if !ok {
		return Share{}, false
	}
	a, b, ok := strings.Cut(rest, "-of-")
	if !ok {
		return Share{}, false
	}
	s, err := ParseShare(a + "/" + b)
	return s, err == nil && s.manifestPath() == p
}

// ScratchBranch is the branch of the target repo where the shares of a run are
// recorded: "hfmerge/<run id>", the run id being the digest of the inputs and the
// target that also names the push's journal.
func ScratchBranch(run string) string { return "hfmerge/" + run }

// Partition splits a plan's shards into n shares balanced by bytes, the same on every
// machine since it depends on the plan alone: shards largest first (equal sizes in
// name order), each into the share holding the fewest bytes so far (the lowest
// numbered among equals). Every shard is in exactly one share; with more shares than
// shards some are empty. Share k (1-based) is element k-1; each lists indexes into
// p.Shards in plan order. Greedy largest-first is within 4/3 of the best possible
// largest share (Graham's LPT bound), and a share is never more than one shard above
// the mean.
func Partition(shards []mergeplan.Shard, n int) [][]int {
	if n < 1 {
		return nil
	}
	order := make([]int, len(shards))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		if c := cmp.Compare(shards[b].Size(), shards[a].Size()); c != 0 {
			return c
		}
		return cmp.Compare(shards[a].Name, shards[b].Name)
	})
	out := make([][]int, n)
	load := make([]int64, n)
	for _, i := range order {
		k := 0
		for j := 1; j < n; j++ {
			if load[j] < load[k] {
				k = j
			}
		}
		out[k] = append(out[k], i)
		load[k] += shards[i].Size()
	}
	for _, s := range out {
		slices.Sort(s)
	}
	return out
}

// shareOf returns the share's shards, in plan order.
func shareOf(p *mergeplan.Plan, s Share) []mergeplan.Shard {
	var out []mergeplan.Shard
	for _, i := range Partition(p.Shards, s.N)[s.I-1] {
		out = append(out, p.Shards[i])
	}
	return out
}

// shareManifest is what one share records on the scratch branch: the run, the
// share, and for each shard it uploaded what the final commit needs (name, sha256,
// size: the commit names an LFS object by them, whichever of LFS or Xet carried it)
// and the sha256 of the base file it was merged from, which hfmerge.json records.
type shareManifest struct {
	Tool     string        `json:"tool"`
	Run      string        `json:"run"`
	Inputs   string        `json:"inputs"`
	Target   string        `json:"target"`
	Share    string        `json:"share"`
	Transfer string        `json:"transfer"` // "lfs" or "xet": how the shards went up
	Shards   []sharedShard `json:"shards"`
}

type sharedShard struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	Base   string `json:"base_sha256,omitempty"`
}

// MissingSharesError is a commit refused because some shards are not recorded yet.
type MissingSharesError struct {
	Run     string
	Branch  string
	Missing []string           // shard names, in plan order
	Owners  map[Share][]string // for each N the shares were pushed with, the shares that hold them
}

func (e *MissingSharesError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "not every share of run %s is on the Hub yet (branch %s): %d shard(s) missing: %s",
		e.Run, e.Branch, len(e.Missing), strings.Join(e.Missing, ", "))
	shares := slices.SortedFunc(maps.Keys(e.Owners), func(a, b Share) int {
		return cmp.Or(cmp.Compare(a.N, b.N), cmp.Compare(a.I, b.I))
	})
	for _, s := range shares {
		fmt.Fprintf(&b, "; push --shards %s should upload %s", s, strings.Join(e.Owners[s], ", "))
	}
	b.WriteString("; nothing was committed")
	return b.String()
}

// ErrNoShares marks a commit of a run no share has recorded anything for.
var ErrNoShares = errors.New("no share of this run is on the Hub")
