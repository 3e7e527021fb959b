package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/hub/hubtest"
	"github.com/hfmerge/hfmerge/upload"
)

// runXet times a push to a Hub with Xet storage whose base was uploaded through Xet
// (by hfmerge's own Xet client, over loopback, before the clock starts). The floor is
// what must cross the link: the changed shards' bytes down (the merge reads them) and
// the changed tensors' bytes up (everything else is in the CAS already), at once.
func (b *bench) runXet(name string) {
	b.seq++
	h := hubtest.New(hubtest.WithToken(token, "alice", hubtest.ScopeWrite), hubtest.WithXet(), hubtest.WithLink(int64(b.down), int64(b.up)))
	lns := make([]net.Listener, 3)
	for i := range lns {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:0", i+1))
		if err != nil {
			ln, err = net.Listen("tcp", "127.0.0.1:0")
			check(err)
		}
		lns[i] = ln
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { h.Serve(ctx, lns[0], lns[1]); done <- struct{}{} }()
	go func() { h.ServeCAS(ctx, lns[2]); done <- struct{}{} }()
	defer func() { stop(); <-done; <-done }()
	for h.CASURL() == "" || h.URL() == "" {
		time.Sleep(time.Millisecond)
	}
	b.seedXet(h) // over the link too, but before the clock starts
	home := filepath.Join(b.dir, fmt.Sprintf("home%d", b.seq))
	check(os.MkdirAll(home, 0o755))
	env := append(os.Environ(), "HF_ENDPOINT="+h.URL(), "HF_TOKEN="+token, "HF_HUB_OFFLINE=", "HF_HUB_DISABLE_XET=",
		"HF_HOME="+filepath.Join(home, "hf"), "HF_HUB_CACHE="+filepath.Join(home, "cache"), "HOME="+home)
	h.ResetStats()
	floor := max(float64(b.changedBytes)/b.down, float64(b.tensorBytes)/b.up)
	args := []string{"push", "--base", "alice/base", "--adapter", filepath.Join(b.dir, "adapter"), "--repo", "alice/merged",
		"--progress", "plain", "--xet", "on"}
	wall, peak, rss := measure(name, b.bin, args, env, filepath.Join(home, "hf"))
	st, xs := h.Stats(), h.XetStats()
	fmt.Printf("%-28s %8.2f %8.2f %6.2fx %10.1f %10.1f %10.1f %8.1f\n", name, floor, wall, wall/floor, mb(st.BytesDown), mb(st.BytesUp),
		mb(peak), mb(rss))
	fmt.Printf("  through Xet: %.1f MB of xorbs sent for %.1f MB of changed tensors (%.2fx), %.1f MB of shards (what LFS sends)\n",
		mb(xs.XorbBytes), mb(b.tensorBytes), float64(xs.XorbBytes)/float64(b.tensorBytes), mb(b.total))
}

// seedXet publishes the base as alice/base through a Xet session.
func (b *bench) seedXet(h *hubtest.Hub) {
	ctx := context.Background()
	c, err := hub.New(hub.Options{Endpoint: h.URL(), Token: token})
	check(err)
	t := &upload.Target{Client: c, Repo: hub.Repo{Type: "model", ID: "alice/base"}, Xet: upload.XetOn}
	_, _, err = c.CreateRepo(ctx, t.Repo, false)
	check(err)
	x, err := t.StartXet(ctx, nil)
	check(err)
	cm := upload.Commit{Summary: "base", Marker: hub.CommitFile{Path: ".seed", Content: []byte("seed")}}
	for name, data := range b.files {
		if !strings.HasSuffix(name, ".safetensors") {
			cm.Files = append(cm.Files, hub.CommitFile{Path: name, Content: data})
			continue
		}
		res, err := x.Upload(ctx, bytes.NewReader(data))
		check(err)
		cm.LFS = append(cm.LFS, hub.CommitLFS{Path: name, OID: res.SHA256, Size: res.Size})
	}
	_, err = x.Flush(ctx)
	check(err)
	_, err = t.Commit(ctx, cm)
	check(err)
}
