package upload_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/hub/hubtest"
	"github.com/hfmerge/hfmerge/upload"
)

const writeToken = "hf_upload_write"

func setup(t *testing.T) (*hubtest.Hub, *hub.Client, hub.Repo) {
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
	return h, c, r
}

func data(n int, seed byte) ([]byte, string) {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31) ^ seed ^ byte(i>>11)
	}
	s := sha256.Sum256(b)
	return b, hex.EncodeToString(s[:])
}

func TestObjectsAndCommit(t *testing.T) {
	h, c, r := setup(t)
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
		up, err := upload.Object(ctx, c, r, "main", x.oid, int64(len(x.b)), bytes.NewReader(x.b), o)
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
	if up, err := upload.Object(ctx, c, r, "main", bigOID, int64(len(big)), bytes.NewReader(big), o); err != nil || up {
		t.Errorf("second upload: uploaded %v, %v", up, err)
	}
	if h.Stats().UploadedBytes != before {
		t.Error("a stored object was sent again")
	}
	head, _ := h.Head("alice/merged", "main")
	marker := hub.CommitFile{Path: "hfmerge.json", Content: []byte(`{"run": 1}`)}
	req := hub.CommitRequest{Summary: "merge", ParentCommit: head,
		Files:    []hub.CommitFile{marker},
		LFSFiles: []hub.CommitLFS{{Path: "a.safetensors", OID: smallOID, Size: int64(len(small))}, {Path: "b.safetensors", OID: bigOID, Size: int64(len(big))}}}
	lost := h.Fault(hubtest.Fault{Route: hubtest.RouteCommit, ApplyThenLose: true, Status: 504})
	res, err := upload.Commit(ctx, c, r, "main", req, false, marker)
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
	h, c, r := setup(t)
	ctx := context.Background()
	head, _ := h.Head("alice/merged", "main")
	marker := hub.CommitFile{Path: "hfmerge.json", Content: []byte(`{"pr": true}`)}
	lost := h.Fault(hubtest.Fault{Route: hubtest.RouteCommit, ApplyThenLose: true})
	res, err := upload.Commit(ctx, c, r, "main", hub.CommitRequest{Summary: "pr", ParentCommit: head, Files: []hub.CommitFile{marker}}, true, marker)
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
	h, c, r := setup(t)
	big, oid := data(250_000, 3)
	h.Fault(hubtest.Fault{Route: hubtest.RoutePartPut, ExpiredURL: true})
	if _, err := upload.Object(context.Background(), c, r, "main", oid, int64(len(big)), bytes.NewReader(big), upload.Options{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := h.Object(oid); !bytes.Equal(got, big) {
		t.Error("object differs")
	}
}
