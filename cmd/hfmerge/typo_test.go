package main

import (
	"os"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

// TestSourceTypo: a SRC that is neither a directory nor a Hub repo gets one message
// saying both, with exit status 2 however it is spelt; when its first segment is a
// local directory, the Hub is asked without the token.
func TestSourceTypo(t *testing.T) {
	h, _, adapter, _ := hubBase(t)
	t.Chdir(t.TempDir())
	if err := os.Mkdir("testdata", 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		spec string
		auth bool // the lookup may carry the token
	}{
		{"testdata/tiny-lama", false},
		{"./testdata/tiny-lama", false},
		{"testdata/tiny-lama/extra", false},
		{"nobody/tiny-lama", true},
		{"nobody/tiny lama", false},
	} {
		h.ResetStats()
		code, stdout, stderr := runBin(t, "plan", "--base", c.spec, "--adapter", adapter)
		want := "no local directory " + c.spec + ", and no"
		if code != 2 || !strings.Contains(stderr, want) || stdout != "" {
			t.Errorf("%s: exit %d, want 2 and %q:\n%s%s", c.spec, code, want, stdout, stderr)
		}
		for _, r := range h.Requests() {
			if r.Auth && !c.auth {
				t.Errorf("%s: %s %s carried the token", c.spec, r.Method, r.Path)
			}
		}
		if c.spec == "testdata/tiny-lama" && len(h.RequestsFor(hubtest.RouteInfo)) == 0 {
			t.Errorf("%s: the Hub was not asked", c.spec)
		}
	}
}
