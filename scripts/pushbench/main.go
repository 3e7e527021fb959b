// Command pushbench measures `hfmerge push` against the network floor on a modelled
// link: it runs the fake Hub (hub/hubtest) with one shared download and one shared
// upload rate, seeds it with a generated Llama-shaped base, and times pushes of a LoRA
// merge with the base remote (default budget and a tenth of a shard) and with the base
// in the HF cache. For each it prints the floor, the wall time and its ratio to the
// floor, the bytes that crossed the link each way, the peak extra disk (work dir and
// HF_HOME, sampled every 10 ms; the cache's kept base is not counted) and the peak RSS
// of the hfmerge process.
//
// The floor is max(bytes that must come down / download rate, bytes that must go up /
// upload rate) plus the time to fetch the first changed shard: a changed base shard must
// be read whole before its sha256 is known, and a merged shard must be uploaded whole.
//
//	go run ./scripts/pushbench -bin ./hfmerge [flags]    (scripts/pushbench.sh builds it)
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hfmerge/hfmerge/hub/hubtest"
	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
)

const token = "hf_benchwritetoken"

var verbose *bool

func main() {
	bin := flag.String("bin", "", "the hfmerge binary")
	work := flag.String("work", "", "scratch directory (default: a temporary one, removed)")
	hidden := flag.Int("hidden", 1024, "hidden size")
	inter := flag.Int("intermediate", 2816, "MLP size")
	layers := flag.Int("layers", 8, "decoder layers")
	vocab := flag.Int("vocab", 32000, "vocabulary")
	shardMB := flag.Int64("shard-mb", 30, "largest shard in MB")
	rank := flag.Int("rank", 16, "LoRA rank")
	targets := flag.String("targets", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "LoRA targets")
	down := flag.Float64("down", 50, "download rate, MB/s")
	up := flag.Float64("up", 25, "upload rate, MB/s")
	verbose = flag.Bool("v", false, "print hfmerge's log of each run")
	runs := flag.String("runs", "remote,tenth,cached,xet", "which pushes to time: remote (default budget), tenth (a tenth of a shard), cached, xet (the Hub with Xet storage, the base uploaded through Xet)")
	flag.Parse()
	if *bin == "" {
		fail("-bin is required")
	}
	dir := *work
	if dir == "" {
		d, err := os.MkdirTemp("", "pushbench-")
		check(err)
		defer os.RemoveAll(d)
		dir = d
	}
	b := &bench{bin: *bin, dir: dir, down: *down * 1e6, up: *up * 1e6}
	b.generate(fixture.LlamaSpec{Hidden: *hidden, Intermediate: *inter, Layers: *layers, Vocab: *vocab, KV: *hidden / 4,
		DType: safetensors.BF16, Seed: 1, Lazy: true}, *shardMB*1e6, *rank, strings.Split(*targets, ","))
	fmt.Printf("machine: %s, %d cores; link: %.0f MB/s down, %.0f MB/s up\n", cpuName(), numCPU(), *down, *up)
	fmt.Printf("model: %d shards, %.1f MB (largest %.1f MB); %d changed by the adapter (%.1f MB), %.1f MB of changed tensors\n",
		len(b.shards), mb(b.total), mb(b.largest), b.changed, mb(b.changedBytes), mb(b.tensorBytes))
	fmt.Printf("%-28s %8s %8s %7s %10s %10s %10s %8s\n", "run", "floor s", "wall s", "ratio", "down MB", "up MB", "disk MB", "RSS MB")
	for _, r := range strings.Split(*runs, ",") {
		switch r {
		case "remote":
			b.run("base remote, default budget", nil, false)
		case "tenth":
			b.run("base remote, budget 1/10 shard", []string{"--disk-budget", fmt.Sprint(b.largest / 10)}, false)
		case "cached":
			b.run("base in the HF cache", nil, true)
		case "xet":
			b.runXet("Xet, base remote (in Xet)")
		default:
			fail("unknown run " + r)
		}
	}
}

type bench struct {
	bin, dir     string
	down, up     float64 // bytes per second
	files        map[string][]byte
	shards       map[string]int64
	total        int64
	largest      int64
	changed      int
	changedBytes int64
	firstChanged int64
	tensorBytes  int64 // of the tensors the adapter changes
	seq          int
}

// generate writes the base and the adapter and reads the base into memory for the Hub.
func (b *bench) generate(spec fixture.LlamaSpec, shardBytes int64, rank int, targets []string) {
	m := fixture.Llama(spec)
	m.SplitMax(shardBytes)
	a := fixture.NewAdapter(rank, float64(2*rank), targets...)
	r := fixture.NewRand(2)
	touched := map[string]bool{}
	for l := 0; l < spec.Layers; l++ {
		for _, t := range targets {
			part := "self_attn."
			if strings.Contains("gate_proj,up_proj,down_proj", t) {
				part = "mlp."
			}
			mod := fmt.Sprintf("model.layers.%d.%s%s", l, part, t)
			w := m.Tensor(mod + ".weight")
			touched[mod+".weight"] = true
			b.tensorBytes += w.Bytes()
			a.Tensors = append(a.Tensors,
				&fixture.Tensor{Name: fixture.Key(mod, "lora_A.weight"), DType: safetensors.F32, Shape: []int64{int64(rank), w.Shape[1]}, Std: 0.02, Seed: r.Uint64()},
				&fixture.Tensor{Name: fixture.Key(mod, "lora_B.weight"), DType: safetensors.F32, Shape: []int64{w.Shape[0], int64(rank)}, Std: 0.02, Seed: r.Uint64()})
		}
	}
	base := filepath.Join(b.dir, "base")
	check(m.Write(base))
	check(a.Write(filepath.Join(b.dir, "adapter")))
	for _, t := range a.Tensors { // a second adapter of the same shape, for the cached run
		t.Seed = r.Uint64()
	}
	check(a.Write(filepath.Join(b.dir, "adapter2")))
	b.files, b.shards = map[string][]byte{}, map[string]int64{}
	entries, err := os.ReadDir(base)
	check(err)
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(base, e.Name()))
		check(err)
		b.files[e.Name()] = data
	}
	for i, names := range m.Shards {
		name := fixture.ShardName(i, len(m.Shards))
		n := int64(len(b.files[name]))
		b.shards[name] = n
		b.total += n
		b.largest = max(b.largest, n)
		for _, t := range names {
			if touched[t] {
				b.changed++
				b.changedBytes += n
				if b.firstChanged == 0 {
					b.firstChanged = n
				}
				break
			}
		}
	}
}

// run times one push against a fresh fake Hub.
func (b *bench) run(name string, extra []string, cached bool) {
	b.seq++
	h := hubtest.New(hubtest.WithToken(token, "alice", hubtest.ScopeWrite), hubtest.WithLink(int64(b.down), int64(b.up)))
	hubLn, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	cdnLn, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		cdnLn, err = net.Listen("tcp", "127.0.0.1:0")
		check(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.Serve(ctx, hubLn, cdnLn); close(done) }()
	defer func() { stop(); <-done }()
	_, err = h.Seed("alice/base", b.files)
	check(err)
	home := filepath.Join(b.dir, fmt.Sprintf("home%d", b.seq))
	check(os.MkdirAll(home, 0o755))
	env := append(os.Environ(), "HF_ENDPOINT="+"http://"+hubLn.Addr().String(), "HF_TOKEN="+token, "HF_HUB_OFFLINE=",
		"HF_HOME="+filepath.Join(home, "hf"), "HF_HUB_CACHE="+filepath.Join(home, "cache"), "HOME="+home)
	adapter := filepath.Join(b.dir, "adapter")
	floorDown := float64(b.changedBytes) / b.down
	first := float64(b.firstChanged) / b.down
	if cached {
		// Fetch the base into the cache first, as a user who downloaded it would have.
		c := exec.Command(b.bin, "merge", "--base", "alice/base", "--adapter", adapter, "--keep-base", "--out", filepath.Join(home, "warm"), "--progress", "none")
		c.Env = env
		if out, err := c.CombinedOutput(); err != nil {
			fail(fmt.Sprintf("warming the cache: %v\n%s", err, out))
		}
		os.RemoveAll(filepath.Join(home, "warm"))
		adapter = filepath.Join(b.dir, "adapter2") // new merged bytes: nothing is on the Hub yet
		floorDown, first = 0, 0
	}
	h.ResetStats()
	floor := max(floorDown, float64(b.changedBytes)/b.up) + first
	args := append([]string{"push", "--base", "alice/base", "--adapter", adapter, "--repo", "alice/merged", "--progress", "plain"}, extra...)
	wall, peak, rss := measure(name, b.bin, args, env, filepath.Join(home, "hf"))
	st := h.Stats()
	fmt.Printf("%-28s %8.2f %8.2f %6.2fx %10.1f %10.1f %10.1f %8.1f\n", name, floor, wall, wall/floor,
		mb(st.BytesDown), mb(st.BytesUp), mb(peak), mb(rss))
}

// measure runs hfmerge with args, and returns its wall time, the most dir held (sampled
// every 10 ms) and its peak RSS.
func measure(name, bin string, args, env []string, dir string) (wall float64, peak, rss int64) {
	c := exec.Command(bin, args...)
	c.Env = env
	var stderr bytes.Buffer
	c.Stderr = &stderr
	start := time.Now()
	var disk, hwm atomic.Int64
	finished, sampling := make(chan struct{}), make(chan struct{})
	check(c.Start())
	go func() {
		defer close(sampling)
		for {
			disk.Store(max(disk.Load(), du(dir)))
			hwm.Store(max(hwm.Load(), vmHWM(c.Process.Pid)))
			select {
			case <-finished:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	err := c.Wait()
	wall = time.Since(start).Seconds()
	close(finished)
	if err != nil {
		fail(fmt.Sprintf("%s: %v\n%s", name, err, stderr.String()))
	}
	<-sampling
	if *verbose {
		fmt.Print(stderr.String())
	}
	return wall, disk.Load(), hwm.Load()
}

// vmHWM is a process's peak resident set size so far, from /proc. (The rusage of a
// child is no use here: Linux keeps ru_maxrss across exec, so a child forked from this
// process, which holds the fake Hub's data, starts with this process's size.)
func vmHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb * 1024
		}
	}
	return 0
}

func du(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

func mb(n int64) float64 { return float64(n) / 1e6 }

func cpuName() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func numCPU() int {
	n := 0
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "processor") {
			n++
		}
	}
	return n
}

func check(err error) {
	if err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "pushbench:", msg)
	os.Exit(1)
}
