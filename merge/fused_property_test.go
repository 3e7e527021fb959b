package merge_test

// TestFusedKernels is the kernels' property test: on random shapes, ranks 1-256, odd row
// and column counts, NaN, infinities, subnormals, signed zeros and forced rounding ties,
// every kernel this CPU runs must give the Go kernel's bytes, and the Go kernel must give
// the correctly rounded exact value of every element, by the independent reference of
// reference_test.go.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// mergeWith merges the plan's single shard with the named kernel, by Write and by
// ReadAt in random pieces on a fresh shard, which must agree; it returns the file.
func mergeWith(t *testing.T, p *mergeplan.Plan, files map[string]io.ReaderAt, kernel string, jobs int, seed uint64) []byte {
	t.Helper()
	if len(p.Shards) != 1 {
		t.Fatalf("plan has %d shards, want 1", len(p.Shards))
	}
	s := &p.Shards[0]
	opts := merge.Options{Jobs: jobs, CacheBytes: 1 << 20, Kernel: kernel}
	sh, err := merge.New(s, files, opts)
	if err != nil {
		t.Fatalf("kernel %q: %v", kernel, err)
	}
	var whole bytes.Buffer
	if n, err := sh.Write(context.Background(), &whole, nil); err != nil || n != sh.Size() || n != s.Size() {
		t.Fatalf("kernel %q: wrote %d bytes of %d: %v", kernel, n, s.Size(), err)
	}
	sh2, err := merge.New(s, files, opts)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 3))
	pieces := make([]byte, sh2.Size())
	for off := int64(0); off < sh2.Size(); {
		k := min(int64(1+rng.IntN(4096)), sh2.Size()-off)
		if _, err := sh2.ReadAt(pieces[off:off+k], off); err != nil {
			t.Fatalf("kernel %q: ReadAt(%d, %d): %v", kernel, off, k, err)
		}
		off += k
	}
	if !bytes.Equal(pieces, whole.Bytes()) {
		t.Fatalf("kernel %q: ReadAt and Write disagree", kernel)
	}
	return whole.Bytes()
}

// tensorBytes returns a tensor's bytes and dtype in a safetensors file.
func tensorBytes(t *testing.T, file []byte, name string) ([]byte, safetensors.DType) {
	t.Helper()
	h, err := safetensors.ParseHeader(file, int64(len(file)))
	if err != nil {
		t.Fatalf("output does not parse: %v", err)
	}
	for _, ti := range h.Tensors {
		if ti.Name == name {
			return file[h.DataOffset+ti.Begin : h.DataOffset+ti.End], ti.DType
		}
	}
	t.Fatalf("output has no tensor %s", name)
	return nil, ""
}

// fusedStats counts what the trials checked.
type fusedStats struct {
	trials, elements, tieElements int
	ties, tiesAsm                 int // exact ties of the output; in the columns the fused assembly covers
	near, hidden                  int // within 16 float64 units of a tie; within half a unit, so that a float64 sum lands on it
	zeroDelta, negZero            int // exactly zero deltas; -0 weights among them
	nan, inf, subIn, nearMax      int // base elements
	subOut, zeroOut               int // results
	// flagged counts the elements every kernel must send to the exact path: out of the
	// normal range, or within |x|·2⁻⁵³ of a rounding boundary, inside any error bound.
	flagged int
}

// want returns the correctly rounded merged value of element i, and notes its class.
func (c *fusedCase) want(i int, st *fusedStats) (float64, dd) {
	w, d := c.W[i], c.D[i]
	_, emin := format(c.out)
	if _, eb := format(c.base); w != 0 && math.Abs(w) < math.Ldexp(1, eb) {
		st.subIn++
	}
	switch {
	case math.IsNaN(w):
		st.nan++
		st.flagged++
		return w, dd{w, 0}
	case math.IsInf(w, 0):
		st.inf++
		st.flagged++
		return w, dd{w, 0}
	case d.hi == 0 && d.lo == 0:
		// The weight's own value, sign of zero included.
		st.zeroDelta++
		if w == 0 && math.Signbit(w) {
			st.negZero++
		}
		if c.kinds[i] == "near max" {
			st.nearMax++
		}
		v := fixture.Round(c.out, w)
		if math.Abs(v) < math.Ldexp(1, emin) {
			st.flagged++
		}
		return v, dd{w, 0}
	}
	if c.kinds[i] == "near max" {
		st.nearMax++
	}
	x := dd{w, 0}.add(d)
	v := roundExact(c.out, x)
	switch a := math.Abs(x.hi); {
	case a == 0:
		st.zeroOut++
		st.flagged++
	case a < math.Ldexp(1, emin):
		st.subOut++
		st.flagged++
	}
	// Distance to the nearest midpoint of the output.
	if x.hi != 0 {
		u := ulp(c.out, x.hi)
		n := x.hi / u
		mid := (math.Floor(n) + 0.5) * u
		u64 := math.Nextafter(math.Abs(x.hi), math.Inf(1)) - math.Abs(x.hi)
		dist := math.Abs((x.hi - mid) + x.lo)
		switch {
		case x.hi == mid && x.lo == 0:
			st.ties++
			if j := i % c.cols; j < c.cols&^7 {
				st.tiesAsm++
			}
		case x.hi == mid:
			st.hidden++
			st.near++
		case dist <= 16*u64:
			st.near++
		}
		if dist <= math.Abs(x.hi)*0x1p-53 && math.Abs(x.hi) >= math.Ldexp(1, emin) {
			st.flagged++
		}
	}
	return v, x
}

// describe gives everything about element i that a failure report needs.
func (c *fusedCase) describe(i int, x dd) string {
	o, j := i/c.cols, i%c.cols
	where := "Go tail columns"
	if j < c.cols&^7 {
		where = "fused strip columns"
	}
	wb := le(fixture.Encode(c.base, []float64{c.W[i]}))
	return fmt.Sprintf("element %d (row %d, col %d; %s), W (%s) = %v [%s], delta = %v + %v, exact W+delta = %v + %v",
		i, o, j, where, c.kinds[i], c.W[i], wb, c.D[i].hi, c.D[i].lo, x.hi, x.lo)
}

// le prints little-endian bytes as one hexadecimal number.
func le(b []byte) string {
	var s strings.Builder
	for k := len(b) - 1; k >= 0; k-- {
		fmt.Fprintf(&s, "%02x", b[k])
	}
	return "0x" + s.String()
}

func TestFusedKernels(t *testing.T) {
	const trials = 52
	kernels := merge.Kernels()
	if !slices.Contains(kernels, merge.KernelGo) {
		t.Fatalf("kernels %v lack the Go reference", kernels)
	}
	t.Logf("kernels: %v", kernels)
	var st fusedStats
	for i := 0; i < trials; i++ {
		c := newFusedCase(i)
		m, a, popts := c.fixtures()
		p, files := plan(t, m, a, popts)
		if !p.OK() {
			t.Fatalf("%s: plan has problems: %v", c, p.Problems)
		}
		if len(p.Modules) != 1 || p.Modules[0].Scale != c.scale || p.Modules[0].Rank != c.rank {
			t.Fatalf("%s: plan modules %+v, want rank %d scale %g", c, p.Modules, c.rank, c.scale)
		}
		out := map[string][]byte{}
		for _, k := range kernels {
			out[k] = mergeWith(t, p, files, k, c.jobs, uint64(i))
		}
		ref := out[merge.KernelGo]
		got, dt := tensorBytes(t, ref, fusedWeight)
		if dt != c.out || len(got) != len(c.W)*size(c.out) {
			t.Fatalf("%s: output is %s, %d bytes", c, dt, len(got))
		}
		sz := size(c.out)

		// 2. The Go kernel against the reference.
		st.trials++
		before := st
		bad := 0
		for e := range c.W {
			st.elements++
			if c.mode.ties() {
				st.tieElements++
			}
			want, x := c.want(e, &st)
			g := got[e*sz : (e+1)*sz]
			wb := fixture.Encode(c.out, []float64{want})
			ok := bytes.Equal(g, wb)
			if math.IsNaN(want) {
				ok = math.IsNaN(fixture.Decode(c.out, g)[0])
			}
			if !ok {
				if bad++; bad <= 8 {
					t.Errorf("%s: kernel go: %s: got %v [%s], want %v [%s]",
						c, c.describe(e, x), fixture.Decode(c.out, g)[0], le(g), want, le(wb))
				}
			}
		}
		if bad > 8 {
			t.Errorf("%s: kernel go: %d elements differ from the correctly rounded value", c, bad)
		}
		if c.mode.ties() && len(c.W) >= 40 && st.ties == before.ties {
			t.Errorf("%s: no element landed on a rounding tie", c)
		}

		// 1. Every kernel against the Go kernel, byte for byte.
		for _, k := range kernels {
			if k == merge.KernelGo || bytes.Equal(out[k], ref) {
				continue
			}
			kb, _ := tensorBytes(t, out[k], fusedWeight)
			n := 0
			for e := range c.W {
				gb, rb := kb[e*sz:(e+1)*sz], got[e*sz:(e+1)*sz]
				if bytes.Equal(gb, rb) {
					continue
				}
				if n++; n <= 8 {
					_, x := c.want(e, &fusedStats{})
					t.Errorf("%s: kernel %s differs from go at %s: %s gives %v [%s], go %v [%s]",
						c, k, c.describe(e, x), k, fixture.Decode(c.out, gb)[0], le(gb), fixture.Decode(c.out, rb)[0], le(rb))
				}
			}
			if n == 0 {
				t.Errorf("%s: kernel %s: the file differs from go's outside %s", c, k, fusedWeight)
			} else if n > 8 {
				t.Errorf("%s: kernel %s: %d elements differ from go", c, k, n)
			}
		}

		// 3. The untouched tensor is the base's bytes.
		if c.out == c.base {
			ob, _ := tensorBytes(t, ref, fusedOther)
			if !bytes.Equal(ob, fixture.Encode(c.base, c.other)) {
				t.Errorf("%s: %s is untouched but its bytes changed", c, fusedOther)
			}
		}
	}
	t.Logf("%d trials, %d elements (%d in tie trials): %d exact ties (%d in fused strip columns), %d near ties (%d below half a float64 unit), "+
		"%d elements certain to take the exact path; base NaN %d, Inf %d, subnormal %d, near max %d; zero deltas %d (-0 weights %d); subnormal results %d, zero results %d",
		st.trials, st.elements, st.tieElements, st.ties, st.tiesAsm, st.near, st.hidden, st.flagged, st.nan, st.inf, st.subIn, st.nearMax,
		st.zeroDelta, st.negZero, st.subOut, st.zeroOut)
	// The test must keep testing what it is for.
	check := func(what string, n, least int) {
		if n < least {
			t.Errorf("only %d %s; the trials should give at least %d", n, what, least)
		}
	}
	check("exact ties", st.ties, st.tieElements/10)
	check("near ties", st.near, 100)
	check("near ties below half a float64 unit", st.hidden, 10)
	check("NaN weights", st.nan, 10)
	check("infinite weights", st.inf, 10)
	check("subnormal weights", st.subIn, 10)
	check("near-max weights", st.nearMax, 5)
	check("-0 weights with a zero delta", st.negZero, 5)
	check("subnormal results", st.subOut, 10)
	if slices.Contains(kernels, merge.KernelAVX2) {
		check("exact ties in fused strip columns", st.tiesAsm, 100)
	}
}

func size(dt safetensors.DType) int { return dt.Bits() / 8 }

// TestFusedKernelEnv: HFMERGE_KERNEL selects the kernel when Options.Kernel is empty,
// and every choice gives the same bytes.
func TestFusedKernelEnv(t *testing.T) {
	c := newFusedCase(27) // specials; 99 columns: fused strips and a Go tail
	m, a, popts := c.fixtures()
	p, files := plan(t, m, a, popts)
	t.Setenv("HFMERGE_KERNEL", "")
	auto := mergeWith(t, p, files, merge.KernelAuto, 2, 1)
	t.Setenv("HFMERGE_KERNEL", "go")
	env := mergeWith(t, p, files, merge.KernelAuto, 2, 1)
	explicit := mergeWith(t, p, files, merge.KernelGo, 2, 1)
	if !bytes.Equal(env, auto) || !bytes.Equal(env, explicit) {
		t.Errorf("%s: HFMERGE_KERNEL=go, the default kernel and Kernel go give different bytes", c)
	}
	// The variable is read: an unknown name is refused, and an explicit kernel wins.
	t.Setenv("HFMERGE_KERNEL", "no-such-kernel")
	if _, err := merge.New(&p.Shards[0], files, merge.Options{}); err == nil {
		t.Error("HFMERGE_KERNEL=no-such-kernel was accepted")
	}
	if _, err := merge.New(&p.Shards[0], files, merge.Options{Kernel: merge.KernelGo}); err != nil {
		t.Errorf("Kernel go with HFMERGE_KERNEL=no-such-kernel: %v", err)
	}
}
