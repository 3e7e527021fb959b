package hub_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/hub/hubtest"
)

const xetWriter = "hf_test_xet_write"

func xetClient(t *testing.T, opts ...hubtest.Option) (*hubtest.Hub, *hub.Client, hub.Repo) {
	t.Helper()
	h := hubtest.New(append([]hubtest.Option{hubtest.WithToken(xetWriter, "alice", hubtest.ScopeWrite)}, opts...)...).Start(t)
	c, err := hub.New(hub.Options{Endpoint: h.URL(), Token: xetWriter, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r := hub.Repo{Type: "model", ID: "alice/xet"}
	if _, _, err := c.CreateRepo(context.Background(), r, false); err != nil {
		t.Fatal(err)
	}
	return h, c, r
}

func TestXetWriteToken(t *testing.T) {
	ctx := context.Background()
	h, c, r := xetClient(t, hubtest.WithXet())
	for _, pr := range []bool{false, true} {
		tok, err := c.XetWriteToken(ctx, r, "", pr)
		if err != nil {
			t.Fatalf("pr %v: %v", pr, err)
		}
		if tok.CASURL != h.CASURL() || !strings.HasPrefix(tok.AccessToken, "xet_") || time.Until(tok.Expiry) < 30*time.Minute {
			t.Fatalf("pr %v: token %+v", pr, tok)
		}
		want := "/api/models/alice/xet/xet-write-token/main"
		if pr {
			want = "/api/models/alice/xet/xet-write-token/None?create_pr=1"
		}
		if !strings.HasSuffix(tok.RefreshURL, want) {
			t.Fatalf("refresh URL %s, want …%s", tok.RefreshURL, want)
		}
		again, err := c.RefreshXetToken(ctx, tok.RefreshURL)
		if err != nil || again.AccessToken == tok.AccessToken || again.CASURL != tok.CASURL {
			t.Fatalf("refresh: %+v, %v", again, err)
		}
	}
	if h.XetStats().TokensWrite != 4 {
		t.Fatalf("write tokens issued: %d, want 4", h.XetStats().TokensWrite)
	}
	if _, err := c.XetWriteToken(ctx, r, "nope", false); err == nil {
		t.Fatal("a token for a missing branch")
	}
	// The refresh URL gets the Hub token, so it must be on the Hub's host.
	if _, err := c.RefreshXetToken(ctx, "http://elsewhere.example/api/models/alice/xet/xet-write-token/main"); err == nil {
		t.Fatal("refreshed from another host")
	}
}

func TestXetWriteTokenNoXet(t *testing.T) {
	_, c, r := xetClient(t)
	_, err := c.XetWriteToken(context.Background(), r, "main", false)
	if !errors.Is(err, hub.ErrNoXet) {
		t.Fatalf("err %v, want ErrNoXet", err)
	}
}

func TestLFSBatchXet(t *testing.T) {
	ctx := context.Background()
	data := pattern(5000, 3)
	obj := []hub.LFSObject{{OID: sha(data), Size: int64(len(data))}}
	h, c, r := xetClient(t, hubtest.WithXet())
	acts, err := c.LFSBatchXet(ctx, r, "main", obj)
	if err != nil {
		t.Fatal(err)
	}
	a := acts[0]
	if a.Transfer != "xet" || a.Xet == nil || a.Xet.CASURL != h.CASURL() || a.Xet.AccessToken == "" ||
		a.Xet.SessionID == "" || !strings.HasSuffix(a.Xet.RefreshURL, "/xet-write-token/main") || a.Xet.Expiry.Before(time.Now()) {
		t.Fatalf("action %+v (xet %+v)", a, a.Xet)
	}
	// Not offered, not chosen.
	acts, err = c.LFSBatch(ctx, r, "main", obj)
	if err != nil || acts[0].Transfer != "basic" || acts[0].Xet != nil {
		t.Fatalf("LFSBatch on a Xet Hub: %+v, %v", acts, err)
	}
	// A Hub without Xet answers an offer with LFS.
	_, c2, r2 := xetClient(t)
	acts, err = c2.LFSBatchXet(ctx, r2, "main", obj)
	if err != nil || acts[0].Transfer != "basic" {
		t.Fatalf("LFSBatchXet without Xet: %+v, %v", acts, err)
	}
}
