package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/hub/hubtest"
	"github.com/hfmerge/hfmerge/upload"
)

// seedXet publishes the base directory as alice/xbase through hfmerge's own Xet
// client (the interop tests seed a base through the JavaScript client's), so that the
// CAS holds its chunks.
func (e *pushEnv) seedXet(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	c, err := hub.New(hub.Options{Endpoint: e.h.URL(), Token: aliceWrite})
	if err != nil {
		t.Fatal(err)
	}
	tg := &upload.Target{Client: c, Repo: hub.Repo{Type: "model", ID: "alice/xbase"}, Xet: upload.XetOn}
	if _, _, err := c.CreateRepo(ctx, tg.Repo, false); err != nil {
		t.Fatal(err)
	}
	x, err := tg.StartXet(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	cm := upload.Commit{Summary: "base", Marker: hub.CommitFile{Path: ".seed", Content: []byte("seed")}}
	entries, _ := os.ReadDir(e.base)
	for _, en := range entries {
		b, _ := os.ReadFile(filepath.Join(e.base, en.Name()))
		if !strings.HasSuffix(en.Name(), ".safetensors") {
			cm.Files = append(cm.Files, hub.CommitFile{Path: en.Name(), Content: b})
			continue
		}
		res, err := x.Upload(ctx, bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		cm.LFS = append(cm.LFS, hub.CommitLFS{Path: en.Name(), OID: res.SHA256, Size: res.Size})
	}
	if _, err := x.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := tg.Commit(ctx, cm); err != nil {
		t.Fatal(err)
	}
}

func (e *pushEnv) sameShards(t *testing.T, repo string) {
	t.Helper()
	for name, want := range e.shards {
		got, err := e.h.File(repo, "main", name)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s of %s differs from the local merge (%v)", name, repo, err)
		}
	}
}

func (e *pushEnv) shardBytes() int64 {
	var n int64
	for _, b := range e.shards {
		n += int64(len(b))
	}
	return n
}

// TestPushXet through the binary: plan --repo says what goes through Xet, push sends
// a fraction of the shard bytes in xorbs and says so, and the published shards are
// the local merge's; --xet off on the same Hub goes through LFS.
func TestPushXet(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2, hubtest.WithXet())
	e.seedXet(t)
	c := e.cmd(aliceWrite, "plan", "--base", "alice/xbase", "--adapter", e.adapter, "--repo", "alice/xbase")
	out, err := c.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "push to alice/xbase: the repo is on Xet storage") || !strings.Contains(string(out), "through Xet: about") {
		t.Fatalf("plan --repo: %v\n%s", err, out)
	}
	e.h.ResetStats()
	code, stdout, stderr := e.push(t, aliceWrite, "--base", "alice/xbase")
	if code != 0 {
		t.Fatal(stderr)
	}
	st := e.h.XetStats()
	if !strings.Contains(stdout, "through Xet: ") || st.XorbBytes == 0 || st.XorbBytes > e.shardBytes()*3/4 {
		t.Fatalf("stdout %q; CAS %+v; shard bytes %d", stdout, st, e.shardBytes())
	}
	if n := e.h.Stats().Requests[hubtest.RoutePartPut] + e.h.Stats().Requests[hubtest.RouteUploadPut]; n != 0 {
		t.Errorf("%d LFS uploads", n)
	}
	e.sameShards(t, "alice/merged")
	t.Logf("through Xet: %d xorb bytes for %d shard bytes", st.XorbBytes, e.shardBytes())

	e.h.ResetStats()
	if code, _, stderr := e.push(t, aliceWrite, "--base", "alice/xbase", "--repo", "alice/merged-lfs", "--xet", "off"); code != 0 {
		t.Fatal(stderr)
	}
	// The Hub has the shards already (the Xet push stored them): nothing at all moves.
	if st := e.h.XetStats(); st.XorbBytes != 0 || st.TokensWrite != 0 {
		t.Errorf("--xet off used the CAS: %+v", st)
	}
	if code, _, stderr := e.push(t, aliceWrite, "--xet", "maybe"); code == 0 || !strings.Contains(stderr, "--xet") {
		t.Errorf("--xet maybe: exit %d, %s", code, stderr)
	}
}

// TestPushXetOn: --xet on to a Hub without Xet fails before any shard moves, saying so;
// auto goes through LFS there.
func TestPushXetOn(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2)
	code, _, stderr := e.push(t, aliceWrite, "--xet", "on")
	if code == 0 || !strings.Contains(stderr, "--xet on, but the Hub offers no Xet storage") {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	if n := e.h.Stats().Requests[hubtest.RoutePartPut] + e.h.Stats().Requests[hubtest.RouteUploadPut]; n != 0 {
		t.Errorf("%d uploads before the refusal", n)
	}
	if code, _, stderr := e.push(t, aliceWrite); code != 0 {
		t.Fatal(stderr)
	}
	e.checkPublished(t, "main")
}

// TestPushXetKill: SIGKILL during a Xet push, then the same push again: exactly one
// commit, and nothing sent twice. Killed while the shard is posted (every xorb is in
// the CAS, no file exists yet), the rerun posts no xorb (its session finds each in the
// CAS) and one shard; killed while committing (the files exist), it posts nothing.
func TestPushXetKill(t *testing.T) {
	for _, c := range []struct {
		name   string
		at     hubtest.Route
		shards int // the rerun's
	}{{"at the shard", hubtest.RouteXetShard, 1}, {"at the commit", hubtest.RouteCommit, 0}} {
		t.Run(c.name, func(t *testing.T) {
			e := newPushEnv(t, smallSpec(), 2, hubtest.WithXet())
			e.seedXet(t)
			e.h.ResetStats()
			// The request is cut (and retried) until the kill.
			e.h.Fault(hubtest.Fault{Route: c.at, Drop: true, Times: -1})
			cmd := e.cmd(aliceWrite, "push", "--base", "alice/xbase", "--adapter", e.adapter, "--repo", "alice/merged", "--progress", "none")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(time.Minute)
			for len(e.h.RequestsFor(c.at)) == 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
			e.h.WaitIdle(context.Background())
			first := e.h.XetStats()
			if first.XorbsAccepted == 0 || first.ShardsAccepted != 1-c.shards {
				t.Fatalf("at the kill: %+v", first)
			}
			if n := e.h.Stats().Commits["alice/merged@main"]; n != 0 {
				t.Fatal("the killed run committed")
			}
			e.h.ClearFaults()
			e.h.ResetStats()
			if code, _, stderr := e.push(t, aliceWrite, "--base", "alice/xbase"); code != 0 {
				t.Fatal(stderr)
			}
			st := e.h.XetStats()
			if st.XorbBytes != 0 || st.XorbsAccepted+st.XorbsExisting != 0 || st.ShardsAccepted != c.shards {
				t.Errorf("the rerun sent again: %+v", st)
			}
			if n := e.h.Stats().Requests[hubtest.RoutePartPut] + e.h.Stats().Requests[hubtest.RouteUploadPut]; n != 0 {
				t.Errorf("%d LFS uploads", n)
			}
			if n := e.h.Stats().Commits["alice/merged@main"]; n != 1 {
				t.Errorf("%d commits", n)
			}
			e.sameShards(t, "alice/merged")
			t.Logf("killed run: %d xorbs, %d bytes; rerun: %+v", first.XorbsAccepted, first.XorbBytes, st)
		})
	}
}
