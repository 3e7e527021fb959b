package hfmerge

import "runtime/debug"

const modulePath = "github.com/hfmerge/hfmerge"

// version is set at link time by builds that know their version but do not get it
// from the module system, as the container image's (scripts/image.sh, Dockerfile):
// -ldflags "-X github.com/hfmerge/hfmerge.version=v1.2.3". Nothing assigns it at run time.
var version string

// Version is the version of hfmerge this program was built with: the module version
// when it was installed with `go install …@version` or is a dependency of another
// module, else the VCS revision of a build from a checkout ("devel-<rev>[-dirty]").
// A version stamped at link time comes first.
func Version() string {
	if version != "" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if info.Main.Path != modulePath {
		for _, d := range info.Deps {
			if d.Path == modulePath {
				if d.Replace != nil && d.Replace.Version != "" {
					return d.Replace.Version
				}
				return d.Version
			}
		}
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	rev, dirty := "", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return "devel-" + rev
}
