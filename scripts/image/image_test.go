package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"path"
	"slices"
	"strings"
	"testing"
	"time"
)

var testSpec = imageSpec{
	Name: "hfmerge", Version: "v1.2.3+meta", Revision: "0123456789abcdef0123456789abcdef01234567",
	Source: "https://example.invalid/hfmerge", Arch: "amd64", Created: time.Unix(1700000000, 0),
}

func testImage(t *testing.T, binary []byte) []byte {
	t.Helper()
	certs, _, _ := caBundle()
	b, err := buildImage(testSpec, rootfs(binary, certs))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readTar returns a tar's headers in order and its files' contents.
func readTar(t *testing.T, data []byte) ([]*tar.Header, map[string][]byte) {
	t.Helper()
	var hs []*tar.Header
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return hs, files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
		files[h.Name] = b
	}
}

// checkHeaders asserts what makes a tar reproducible and extractable in order: names
// sorted, each entry's directory before it, the fixed mtime, no other times, no names
// of owners.
func checkHeaders(t *testing.T, what string, hs []*tar.Header) {
	t.Helper()
	seen := map[string]bool{}
	var names []string
	for _, h := range hs {
		name := strings.TrimSuffix(h.Name, "/")
		names = append(names, name)
		if d := path.Dir(name); d != "." && !seen[d] {
			t.Errorf("%s: %s comes before its directory %s", what, h.Name, d)
		}
		seen[name] = true
		if !h.ModTime.Equal(testSpec.Created) || !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() {
			t.Errorf("%s: %s has times %v %v %v, want only mtime %v", what, h.Name, h.ModTime, h.AccessTime, h.ChangeTime, testSpec.Created)
		}
		if h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: %s names owners %q:%q", what, h.Name, h.Uname, h.Gname)
		}
	}
	if !slices.IsSorted(names) {
		t.Errorf("%s: entries not sorted: %v", what, names)
	}
}

func TestImageReproducible(t *testing.T) {
	bin := []byte("\x7fELF not really a binary")
	a, b := testImage(t, bin), testImage(t, bin)
	if !bytes.Equal(a, b) {
		t.Fatal("two builds of the same inputs differ")
	}
	if c := testImage(t, []byte("\x7fELF another binary")); bytes.Equal(a, c) {
		t.Fatal("a different binary gave the same tarball")
	}
}

func TestImageLayout(t *testing.T) {
	bin := []byte("\x7fELF not really a binary")
	img := testImage(t, bin)
	hs, files := readTar(t, img)
	checkHeaders(t, "tarball", hs)
	for _, h := range hs {
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("tarball: %s owned by %d:%d", h.Name, h.Uid, h.Gid)
		}
	}
	c, err := verifyImage(img)
	if err != nil {
		t.Fatal(err)
	}
	if c.Ref != "hfmerge:v1.2.3-meta" {
		t.Errorf("ref %q, want the version made a valid tag", c.Ref)
	}
	var idx index
	if err := json.Unmarshal(files["index.json"], &idx); err != nil {
		t.Fatal(err)
	}
	if a := idx.Manifests[0].Annotations; a["org.opencontainers.image.ref.name"] != "hfmerge:v1.2.3-meta" ||
		a["io.containerd.image.name"] != "docker.io/library/hfmerge:v1.2.3-meta" {
		t.Errorf("index annotations %v", a)
	}
	if p := idx.Manifests[0].Platform; p == nil || p.Architecture != "amd64" || p.OS != "linux" {
		t.Errorf("index platform %+v", p)
	}
	cfg := c.Config
	if cfg.Config.User != "65532:65532" || !slices.Equal(cfg.Config.Entrypoint, []string{"/usr/local/bin/hfmerge"}) ||
		cfg.Architecture != "amd64" || cfg.OS != "linux" || cfg.Created != "2023-11-14T22:13:20Z" {
		t.Errorf("config %+v", cfg)
	}
	for k, v := range map[string]string{
		"org.opencontainers.image.version":  testSpec.Version,
		"org.opencontainers.image.revision": testSpec.Revision,
		"org.opencontainers.image.source":   testSpec.Source,
	} {
		if cfg.Config.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, cfg.Config.Labels[k], v)
		}
	}
	if !slices.Contains(cfg.Config.Env, "HF_HOME=/home/nonroot/.cache/huggingface") || !slices.Contains(cfg.Config.Env, "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt") {
		t.Errorf("env %v", cfg.Config.Env)
	}

	if len(c.Layers) != 1 {
		t.Fatalf("layers %v", c.Layers)
	}
	zr, err := gzip.NewReader(bytes.NewReader(files[c.Layers[0]]))
	if err != nil {
		t.Fatal(err)
	}
	if !zr.ModTime.IsZero() || zr.Name != "" {
		t.Errorf("gzip header has time %v, name %q", zr.ModTime, zr.Name)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	lhs, lfiles := readTar(t, raw)
	checkHeaders(t, "layer", lhs)
	byName := map[string]*tar.Header{}
	for _, h := range lhs {
		byName[h.Name] = h
	}
	for name, want := range map[string]struct {
		mode     int64
		uid, gid int
	}{
		"usr/local/bin/hfmerge":             {0o755, 0, 0},
		"etc/ssl/certs/ca-certificates.crt": {0o644, 0, 0},
		"home/nonroot/":                     {0o700, 65532, 65532},
		"home/nonroot/.cache/huggingface/":  {0o755, 65532, 65532},
		"tmp/":                              {0o1777, 0, 0},
	} {
		h := byName[name]
		if h == nil {
			t.Errorf("layer has no %s", name)
			continue
		}
		if h.Mode != want.mode || h.Uid != want.uid || h.Gid != want.gid {
			t.Errorf("layer %s: mode %o owner %d:%d, want %o %d:%d", name, h.Mode, h.Uid, h.Gid, want.mode, want.uid, want.gid)
		}
	}
	if !bytes.Equal(lfiles["usr/local/bin/hfmerge"], bin) {
		t.Error("the binary in the layer is not the one given")
	}
	if !strings.Contains(string(lfiles["etc/passwd"]), "nonroot:x:65532:65532:nonroot:/home/nonroot:") ||
		!strings.Contains(string(lfiles["etc/group"]), "nonroot:x:65532:") {
		t.Errorf("passwd %q group %q", lfiles["etc/passwd"], lfiles["etc/group"])
	}
}

// TestVerifyImageCatches shows the check used by scripts/image-check.sh fails on a
// tarball whose blob was altered, naming the blob.
func TestVerifyImageCatches(t *testing.T) {
	img := testImage(t, []byte("\x7fELF not really a binary"))
	if _, err := verifyImage(img); err != nil {
		t.Fatal(err)
	}
	// The config blob is JSON: alter it in place, under its old digest.
	bad := bytes.Replace(img, []byte(`"architecture":"amd64"`), []byte(`"architecture":"arm64"`), 1)
	if bytes.Equal(bad, img) {
		t.Fatal("test did not alter the config")
	}
	if _, err := verifyImage(bad); err == nil || !strings.Contains(err.Error(), "blob blobs/sha256/") {
		t.Errorf("altered config: err %v, want one naming the blob", err)
	}
}

func TestCABundle(t *testing.T) {
	data, kept, _ := caBundle()
	if kept < 100 {
		t.Fatalf("only %d roots", kept)
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			if len(bytes.TrimSpace(rest)) != 0 {
				t.Fatalf("trailing bytes after %d certificates", n)
			}
			break
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatalf("certificate %d: %v", n, err)
		}
		if !cert.IsCA {
			t.Errorf("certificate %d (%s) is not a CA", n, cert.Subject)
		}
		pool.AddCert(cert)
		n++
	}
	if n != kept {
		t.Errorf("%d certificates in the PEM, %d reported", n, kept)
	}
	if !pool.AppendCertsFromPEM(data) {
		t.Error("crypto/x509 reads no certificate from the bundle")
	}
}

func TestQualified(t *testing.T) {
	for in, want := range map[string]string{
		"hfmerge:v1":                "docker.io/library/hfmerge:v1",
		"me/hfmerge:v1":             "docker.io/me/hfmerge:v1",
		"ghcr.io/me/hfmerge:v1":     "ghcr.io/me/hfmerge:v1",
		"localhost:5000/hfmerge:v1": "localhost:5000/hfmerge:v1",
		"localhost/hfmerge:v1":      "localhost/hfmerge:v1",
	} {
		if got := qualified(in); got != want {
			t.Errorf("qualified(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTag(t *testing.T) {
	for in, want := range map[string]string{
		"v1.2.3":                   "v1.2.3",
		"devel-0123456789ab-dirty": "devel-0123456789ab-dirty",
		"v0.0.0-2026+incompatible": "v0.0.0-2026-incompatible",
		"-x":                       "v-x",
	} {
		if got := tag(in); got != want {
			t.Errorf("tag(%q) = %q, want %q", in, got, want)
		}
	}
}
