package main

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

// reseed gives the environment a fresh fake Hub holding alice/base: the Hub keeps
// objects by content across repos, so each trial needs one that has seen no merge.
func (e *pushEnv) reseed(t *testing.T, opts ...hubtest.Option) {
	t.Helper()
	e.h = hubtest.New(append([]hubtest.Option{hubtest.WithToken(aliceWrite, "alice", hubtest.ScopeWrite)}, opts...)...).Start(t)
	files := map[string][]byte{}
	entries, _ := os.ReadDir(e.base)
	for _, en := range entries {
		files[en.Name()], _ = os.ReadFile(filepath.Join(e.base, en.Name()))
	}
	if _, err := e.h.Seed("alice/base", files); err != nil {
		t.Fatal(err)
	}
}

// slow makes every stage of a push take long enough to be interrupted in: base
// downloads, part uploads and the commit.
func (e *pushEnv) slow() {
	e.h.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, Delay: 40 * time.Millisecond, Times: -1})
	e.h.Fault(hubtest.Fault{Route: hubtest.RoutePartPut, Delay: 40 * time.Millisecond, Times: -1})
	e.h.Fault(hubtest.Fault{Route: hubtest.RouteCommit, Delay: 300 * time.Millisecond, Times: -1})
}

// leftovers lists what a run may leave behind and must not: merged shards in the work
// dir, journals, partial downloads, staging directories.
func leftovers(root string) []string {
	var out []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		n := d.Name()
		if strings.HasPrefix(n, "tmp-") || strings.HasPrefix(n, "journal-") || strings.HasSuffix(n, ".incomplete") || strings.HasPrefix(n, ".hfmerge-") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// TestPushKill kills `hfmerge push` with SIGKILL at ten points: on the first shard
// hashed, the first uploaded, during the commit, and at seven moments drawn at random
// over an uninterrupted run's length. Each rerun must end with exactly one commit whose
// shards are an uninterrupted run's bytes, send only objects the Hub lacked, and leave
// no temporary file behind.
func TestPushKill(t *testing.T) {
	if testing.Short() {
		t.Skip("kills ten pushes")
	}
	e := newPushEnv(t, smallSpec(), 4, hubtest.WithMultipartChunkSize(256<<10))
	opts := []hubtest.Option{hubtest.WithMultipartChunkSize(256 << 10)}
	// How long an uninterrupted push takes on this machine, to spread the kills over.
	e.reseed(t, opts...)
	e.slow()
	start := time.Now()
	if code, _, stderr := e.push(t, aliceWrite); code != 0 {
		t.Fatal(stderr)
	}
	full := time.Since(start)
	rng := rand.New(rand.NewPCG(42, 7))
	points := []string{"shard hashed", "shard uploaded", "commit"}
	for i := 0; i < 7; i++ {
		points = append(points, fmt.Sprintf("%dms", rng.IntN(int(full.Milliseconds()))))
	}
	for i, point := range points {
		t.Run(point, func(t *testing.T) {
			e.reseed(t, opts...)
			e.slow()
			repo := fmt.Sprintf("alice/kill%d", i)
			c := e.cmd(aliceWrite, "push", "--base", "alice/base", "--adapter", e.adapter, "--repo", repo, "--progress", "plain")
			stderr, _ := c.StderrPipe()
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			killed := make(chan struct{})
			kill := func() {
				select {
				case <-killed:
				default:
					c.Process.Signal(syscall.SIGKILL)
					close(killed)
				}
			}
			if d, err := time.ParseDuration(point); err == nil {
				time.AfterFunc(d, kill)
			} else if point == "commit" {
				go func() {
					for {
						for _, r := range e.h.RequestsFor(hubtest.RouteCommit) {
							if r.End.IsZero() {
								kill()
								return
							}
						}
						select {
						case <-killed:
							return
						case <-time.After(2 * time.Millisecond):
						}
					}
				}()
			}
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				if strings.Contains(sc.Text(), point) {
					kill()
				}
			}
			c.Wait()
			e.h.WaitIdle(context.Background())
			had := map[string]bool{}
			for _, oid := range e.h.Objects() {
				had[oid] = true
			}
			before := e.h.Stats().Commits[repo+"@main"]
			e.h.ResetStats()
			e.h.ClearFaults()
			code, stdout, errs := e.pushTo(t, repo)
			if code != 0 {
				t.Fatalf("rerun: exit %d\n%s\n%s", code, stdout, errs)
			}
			e.h.WaitIdle(context.Background())
			st := e.h.Stats()
			if n := before + st.Commits[repo+"@main"]; n != 1 {
				t.Errorf("%d commits in all (%d by the killed run), want exactly 1", n, before)
			}
			for oid, n := range st.ObjectUploads {
				if had[oid] && n > 0 {
					t.Errorf("the rerun sent %s again (%d bytes), which the Hub had", oid[:12], n)
				}
			}
			e.checkPublishedTo(t, repo, "main")
			if left := leftovers(e.home); len(left) != 0 {
				t.Errorf("left behind: %v", left)
			}
			t.Logf("killed at %s: the Hub had %d objects, the killed run made %d commit(s); the rerun sent %d bytes",
				point, len(had), before, st.UploadedBytes)
		})
	}
}
