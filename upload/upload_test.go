package upload_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/hub/hubtest"
	"github.com/hfmerge/hfmerge/upload"
)

const writeToken = "hf_upload_write"

func setup(t *testing.T) (*hubtest.Hub, *upload.Target, hub.Repo) {
	t.Helper()
	h := hubtest.New(hubtest.WithToken(writeToken, "alice", hubtest.ScopeWrite), hubtest.WithMultipartChunkSize(100_000)).Start(t)
	c, err := hub.New(hub.Options{Endpoint: h.URL(), Token: writeToken, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r := hub.Repo{Type: "model", ID: "alice/merged"}
	if _, _, err := c.CreateRepo(context.Background(), r, false); err != nil {
		t.Fatal(err)
	}
	return h, &upload.Target{Client: c, Repo: r, Branch: "main"}, r
}

// object is data in memory as an upload.Object.
func object(b []byte) upload.Object { return upload.BytesObject(b) }

func data(n int, seed byte) ([]byte, string) {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31) ^ seed ^ byte(i>>11)
	}
	s := sha256.Sum256(b)
	return b, hex.EncodeToString(s[:])
}

func TestObjectsAndCommit(t *testing.T) {
	h, c, _ := setup(t)
	ctx := context.Background()
	small, smallOID := data(50_000, 1) // basic
	big, bigOID := data(350_001, 2)    // multipart: 4 parts
	h.Fault(hubtest.Fault{Route: hubtest.RouteBatch, Status: 429, RetryAfter: time.Second})
	h.Fault(hubtest.Fault{Route: hubtest.RouteBatch, Status: 503})
	put := h.Fault(hubtest.Fault{Route: hubtest.RouteUploadPut, Status: 500})
	parts := h.Fault(hubtest.Fault{Route: hubtest.RoutePartPut, Status: 500, Times: 2})
	var sent atomic.Int64
	o := upload.Options{Progress: func(d int64) { sent.Add(d) }}
	for _, x := range []struct {
		b   []byte
		oid string
	}{{small, smallOID}, {big, bigOID}} {
		up, err := c.Put(ctx, object(x.b), o)
		if err != nil || !up {
			t.Fatalf("upload %s: %v %v", x.oid, up, err)
		}
		if got, ok := h.Object(x.oid); !ok || !bytes.Equal(got, x.b) {
			t.Errorf("stored object %s differs", x.oid)
		}
	}
	if put.Fired() != 1 || parts.Fired() != 2 {
		t.Errorf("faults: put %d parts %d", put.Fired(), parts.Fired())
	}
	if got := sent.Load(); got != int64(len(small)+len(big)) {
		t.Errorf("progress counted %d bytes, sent %d (failed attempts must be taken back)", got, len(small)+len(big))
	}
	before := h.Stats().UploadedBytes
	if up, err := c.Put(ctx, object(big), o); err != nil || up {
		t.Errorf("second upload: uploaded %v, %v", up, err)
	}
	if h.Stats().UploadedBytes != before {
		t.Error("a stored object was sent again")
	}
	marker := hub.CommitFile{Path: "hfmerge.json", Content: []byte(`{"run": 1}`)}
	req := upload.Commit{Summary: "merge", Marker: marker,
		LFS: []hub.CommitLFS{{Path: "a.safetensors", OID: smallOID, Size: int64(len(small))}, {Path: "b.safetensors", OID: bigOID, Size: int64(len(big))}}}
	lost := h.Fault(hubtest.Fault{Route: hubtest.RouteCommit, ApplyThenLose: true, Status: 504})
	res, err := c.Commit(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if lost.Fired() != 1 || h.Stats().Commits["alice/merged@main"] != 1 {
		t.Errorf("commit reply lost %d time(s); %d commits made, want exactly 1", lost.Fired(), h.Stats().Commits["alice/merged@main"])
	}
	if now, _ := h.Head("alice/merged", "main"); res.OID != now {
		t.Errorf("commit %s, head %s", res.OID, now)
	}
	if got, _ := h.File("alice/merged", "main", "b.safetensors"); !bytes.Equal(got, big) {
		t.Error("committed file differs")
	}
}

func TestPullRequest(t *testing.T) {
	h, c, _ := setup(t)
	ctx := context.Background()
	head, _ := h.Head("alice/merged", "main")
	marker := hub.CommitFile{Path: "hfmerge.json", Content: []byte(`{"pr": true}`)}
	lost := h.Fault(hubtest.Fault{Route: hubtest.RouteCommit, ApplyThenLose: true})
	c.PR = true
	res, err := c.Commit(ctx, upload.Commit{Summary: "pr", Marker: marker})
	if err != nil {
		t.Fatal(err)
	}
	if lost.Fired() != 1 || !strings.Contains(res.PullRequestURL, "/discussions/1") || len(h.PullRequests("alice/merged")) != 1 {
		t.Errorf("PR %+v; PRs %v", res, h.PullRequests("alice/merged"))
	}
	if now, _ := h.Head("alice/merged", "main"); now != head {
		t.Error("the base branch moved")
	}
}

func TestExpiredURLs(t *testing.T) {
	h, c, _ := setup(t)
	big, oid := data(250_000, 3)
	h.Fault(hubtest.Fault{Route: hubtest.RoutePartPut, ExpiredURL: true})
	if _, err := c.Put(context.Background(), object(big), upload.Options{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := h.Object(oid); !bytes.Equal(got, big) {
		t.Error("object differs")
	}
}

// TestSplitCommit: a commit of more files than one commit may carry goes through a pull
// request of several commits, merged at the end: the branch changes once and holds
// every file. A run that fails midway is finished by the next one, in the same pull
// request.
func TestSplitCommit(t *testing.T) {
	h, c, _ := setup(t)
	ctx := context.Background()
	c.MaxFiles = 3
	var lfs []hub.CommitLFS
	for i := 0; i < 8; i++ {
		b, oid := data(1000+i, byte(i))
		if _, err := c.Put(ctx, object(b), upload.Options{}); err != nil {
			t.Fatal(err)
		}
		lfs = append(lfs, hub.CommitLFS{Path: fmt.Sprintf("model-%05d.safetensors", i), OID: oid, Size: int64(len(b))})
	}
	marker := hub.CommitFile{Path: "hfmerge.json", Content: []byte(`{"split": true}`)}
	req := upload.Commit{Summary: "a big model", LFS: lfs, Files: []hub.CommitFile{{Path: "config.json", Content: []byte(`{}`)}}, Marker: marker}
	before, _ := h.Head("alice/merged", "main")
	// The third commit fails: the first run stops with the pull request half filled.
	h.Fault(hubtest.Fault{Route: hubtest.RouteCommit, Skip: 2, Status: 500})
	if _, err := c.Commit(ctx, req); err == nil {
		t.Fatal("the commit succeeded through a failure")
	}
	if now, _ := h.Head("alice/merged", "main"); now != before {
		t.Fatal("the branch moved before the pull request was complete")
	}
	if n := len(h.PullRequests("alice/merged")); n != 1 {
		t.Fatalf("%d pull requests after the failed run", n)
	}
	h.ResetStats()
	res, err := c.Commit(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	st := h.Stats()
	if st.Commits["alice/merged@main"] != 1 || len(h.PullRequests("alice/merged")) != 0 {
		t.Errorf("commits %v, open pull requests %v: want one change of main and none open", st.Commits, h.PullRequests("alice/merged"))
	}
	if head, _ := h.Head("alice/merged", "main"); head != res.OID {
		t.Errorf("result %s, head %s", res.OID, head)
	}
	files, _ := h.Files("alice/merged", "main")
	have := map[string]bool{}
	for _, f := range files {
		have[f.Path] = true
	}
	for _, f := range append(lfs, hub.CommitLFS{Path: "config.json"}, hub.CommitLFS{Path: "hfmerge.json"}) {
		if !have[f.Path] {
			t.Errorf("main lacks %s", f.Path)
		}
	}
	// The rerun committed only what the pull request lacked: 8 files in parts of 3,
	// less the 4 the first run had committed (marker first, then a part of 3).
	if n := st.Commits["alice/merged@refs/pr/1"]; n != 2 {
		t.Errorf("the rerun made %d commits to the pull request, want 2", n)
	}
}
