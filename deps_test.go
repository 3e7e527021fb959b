package hfmerge_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/hfmerge/hfmerge"

// allowed lists, for each package, the hfmerge packages it may depend on (directly or
// not): data moves manifest → plan → fetch → merge → upload → commit, and a later stage
// may use an earlier one's types, never the reverse. Packages not listed may not exist.
var allowed = map[string][]string{
	"safetensors":       {},
	"mergeplan":         {"safetensors"},
	"merge":             {"safetensors", "mergeplan"},
	"hub":               {},
	"hub/hubtest":       {},
	"cache":             {"hub"},
	"upload":            {"hub", "xet"},
	"xet":               {},
	"webhook":           {},
	"internal/fixture":  {"safetensors", "mergeplan"},
	"cmd/hfmerge":       {"*"},
	"cmd/hubfake":       {"hub/hubtest"},
	"interop":           {"*"},
	"scripts/genmodel":  {"internal/fixture", "safetensors", "mergeplan"},
	"scripts/pushbench": {"internal/fixture", "safetensors", "mergeplan", "hub/hubtest", "hub", "upload", "xet"},
}

// noNetwork are packages that must compute without any network code, so that plans and
// numbers are tested with no network at all.
var noNetwork = []string{"safetensors", "mergeplan", "merge"}

func goList(t *testing.T, args ...string) []string {
	t.Helper()
	out, err := exec.Command("go", append([]string{"list"}, args...)...).Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	return strings.Fields(string(out))
}

func TestImportDirection(t *testing.T) {
	for _, pkg := range goList(t, "./...") {
		rel := strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")
		if rel == "" {
			continue
		}
		ok, known := allowed[rel]
		if !known {
			t.Errorf("package %s is not in the import-direction table of deps_test.go", rel)
			continue
		}
		if strings.Contains(rel, "util") {
			t.Errorf("package %s: no util packages", rel)
		}
		for _, dep := range goList(t, "-deps", pkg) {
			if d, mine := strings.CutPrefix(dep, module+"/"); mine && d != rel {
				if !slices.Contains(ok, "*") && !slices.Contains(ok, d) {
					t.Errorf("%s depends on %s, which it may not", rel, d)
				}
			}
			if slices.Contains(noNetwork, rel) && (dep == "net/http" || dep == "net") {
				t.Errorf("%s depends on %s; it must not touch the network", rel, dep)
			}
		}
	}
}
