package main

import (
	"fmt"
	"path"
	"slices"
	"strings"
)

// The image's filesystem and run-time settings, in one place: the layer, the image
// config, the check in scripts/image-check.sh (through -check) and the Dockerfile test
// all read these.
const (
	binaryPath = "/usr/local/bin/hfmerge"
	uid        = 65532 // distroless's "nonroot", so both images run as the same user
	gid        = 65532
	userName   = "nonroot"
	home       = "/home/nonroot"
	hfHome     = home + "/.cache/huggingface"
	certFile   = "/etc/ssl/certs/ca-certificates.crt"
)

// env is the image's environment: HF_HOME (and so hfmerge's default work dir) under
// the non-root user's home, which the layer makes that user's; SSL_CERT_FILE names the
// bundle explicitly although Go looks there anyway, so that other tools in a derived
// image find it too.
var env = []string{
	"PATH=" + path.Dir(binaryPath),
	"HOME=" + home,
	"HF_HOME=" + hfHome,
	"SSL_CERT_FILE=" + certFile,
}

// entry is one file or directory of the layer. Owner and mode are fixed here, never
// taken from the build machine.
type entry struct {
	name string // relative, no leading or trailing slash
	dir  bool
	mode int64
	uid  int
	gid  int
	data []byte
}

// rootfs lists the image's filesystem: the binary, the CA bundle, passwd and group
// naming the non-root user, its home, and a world-writable /tmp.
func rootfs(binary, certs []byte) []entry {
	dirs := map[string]entry{}
	var files []entry
	addDir := func(e entry) { dirs[e.name] = e }
	addFile := func(name string, mode int64, data []byte) {
		files = append(files, entry{name: strings.TrimPrefix(name, "/"), mode: mode, data: data})
	}
	addFile(binaryPath, 0o755, binary)
	addFile(certFile, 0o644, certs)
	addFile("/etc/passwd", 0o644, fmt.Appendf(nil,
		"root:x:0:0:root:/root:/sbin/nologin\n%s:x:%d:%d:%s:%s:/sbin/nologin\n", userName, uid, gid, userName, home))
	addFile("/etc/group", 0o644, fmt.Appendf(nil, "root:x:0:\n%s:x:%d:\n", userName, gid))
	// Every parent directory of a file, root-owned, so that extracting the layer
	// creates none with the extractor's defaults.
	for _, f := range files {
		for d := path.Dir(f.name); d != "."; d = path.Dir(d) {
			addDir(entry{name: d, dir: true, mode: 0o755})
		}
	}
	addDir(entry{name: "root", dir: true, mode: 0o700})
	addDir(entry{name: "home", dir: true, mode: 0o755})
	// HF_HOME exists, the user's: a named volume mounted there starts with this
	// ownership (docker and podman copy it into an empty volume), where a missing
	// mount point would be made root's and refuse the user.
	for d := hfHome; d != path.Dir(home); d = path.Dir(d) {
		mode := int64(0o755)
		if d == home {
			mode = 0o700
		}
		addDir(entry{name: strings.TrimPrefix(d, "/"), dir: true, mode: mode, uid: uid, gid: gid})
	}
	addDir(entry{name: "tmp", dir: true, mode: 0o1777})
	all := files
	for _, d := range dirs {
		all = append(all, d)
	}
	sortEntries(all)
	return all
}

// sortEntries orders entries by name. A parent's name is a prefix of its children's,
// so it sorts before them and extraction never meets a file before its directory.
func sortEntries(es []entry) {
	slices.SortFunc(es, func(a, b entry) int { return strings.Compare(a.name, b.name) })
}
