package upload_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/hub/hubtest"
	"github.com/hfmerge/hfmerge/upload"
)

func xetSetup(t *testing.T, opts ...hubtest.Option) (*hubtest.Hub, *upload.Target) {
	t.Helper()
	h := hubtest.New(append([]hubtest.Option{hubtest.WithToken(writeToken, "alice", hubtest.ScopeWrite)}, opts...)...).Start(t)
	c, err := hub.New(hub.Options{Endpoint: h.URL(), Token: writeToken, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r := hub.Repo{Type: "model", ID: "alice/merged"}
	if _, _, err := c.CreateRepo(context.Background(), r, false); err != nil {
		t.Fatal(err)
	}
	return h, &upload.Target{Client: c, Repo: r}
}

func TestStartXet(t *testing.T) {
	ctx := context.Background()
	_, plain := xetSetup(t)
	_, withXet := xetSetup(t, hubtest.WithXet())
	for _, c := range []struct {
		t    *upload.Target
		mode upload.XetMode
		env  string
		xet  bool
		err  error
	}{
		{plain, upload.XetAuto, "", false, nil},
		{plain, upload.XetOff, "", false, nil},
		{plain, upload.XetOn, "", false, upload.ErrNoXet},
		{withXet, upload.XetAuto, "", true, nil},
		{withXet, upload.XetAuto, "1", false, nil},
		{withXet, upload.XetOn, "1", true, nil},
		{withXet, upload.XetOff, "", false, nil},
	} {
		t.Setenv("HF_HUB_DISABLE_XET", c.env)
		c.t.Xet = c.mode
		x, err := c.t.StartXet(ctx, nil)
		if !errors.Is(err, c.err) || (x != nil) != c.xet {
			t.Errorf("mode %v env %q xet hub %v: %v, %v", c.mode, c.env, c.t == withXet, x != nil, err)
		}
	}
	if _, err := upload.ParseXetMode("maybe"); err == nil {
		t.Error("ParseXetMode took maybe")
	}
}

// TestXetSessionAndPut: files uploaded through a Xet session exist after Flush and are
// committed by sha256; Put on a Hub that chooses xet in the batch sends through the CAS.
func TestXetSessionAndPut(t *testing.T) {
	ctx := context.Background()
	h, tg := xetSetup(t, hubtest.WithXet())
	x, err := tg.StartXet(ctx, nil)
	if err != nil || x == nil {
		t.Fatal(x, err)
	}
	a, _ := data(3_000_000, 1)
	res, err := x.Upload(ctx, bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	obj := object(a)
	if res.SHA256 != obj.OID || res.Size != int64(len(a)) {
		t.Fatalf("result %+v, want sha256 %s", res, obj.OID)
	}
	if miss, _ := tg.Missing(ctx, []hub.LFSObject{{OID: obj.OID, Size: obj.Size}}); !miss[obj.OID] {
		t.Fatal("the file exists before Flush")
	}
	sum, err := x.Flush(ctx)
	if err != nil || sum.Files != 1 || sum.XorbBytes == 0 || h.XetStats().XorbBytes != sum.XorbBytes {
		t.Fatalf("flush %+v, %v; CAS %+v", sum, err, h.XetStats())
	}
	if miss, _ := tg.Missing(ctx, []hub.LFSObject{{OID: obj.OID, Size: obj.Size}}); miss[obj.OID] {
		t.Fatal("the file is missing after Flush")
	}

	b, _ := data(200_000, 2)
	before := h.XetStats()
	put, err := tg.Put(ctx, object(b), upload.Options{})
	if err != nil || !put {
		t.Fatal(put, err)
	}
	after := h.XetStats()
	if after.FilesRegistered != before.FilesRegistered+1 || after.XorbBytes == before.XorbBytes || h.Stats().Requests[hubtest.RouteUploadPut] != 0 {
		t.Fatalf("Put did not go through the CAS: %+v, %v", after, h.Stats().Requests)
	}
	if _, err := tg.Commit(ctx, upload.Commit{Summary: "x", Marker: hub.CommitFile{Path: "m.json", Content: []byte("{}")},
		LFS: []hub.CommitLFS{{Path: "a.bin", OID: obj.OID, Size: obj.Size}, {Path: "b.bin", OID: object(b).OID, Size: int64(len(b))}}}); err != nil {
		t.Fatal(err)
	}
	got, err := h.File("alice/merged", "main", "a.bin")
	if err != nil || !bytes.Equal(got, a) {
		t.Fatalf("committed a.bin: %d bytes, %v", len(got), err)
	}
}
