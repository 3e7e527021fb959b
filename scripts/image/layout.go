package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Media types of the OCI image spec (image-spec v1.1: media-types.md).
const (
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayerGz  = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// imageSpec is what one image build needs besides the files.
type imageSpec struct {
	Name     string // repository part of the tag written into the tarball, e.g. "hfmerge"
	Version  string // hfmerge's version, also the tag
	Revision string // the commit
	Source   string // the repository URL
	Arch     string // GOARCH of the binary
	Created  time.Time
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type runConfig struct {
	User       string            `json:"User"`
	Env        []string          `json:"Env"`
	Entrypoint []string          `json:"Entrypoint"`
	WorkingDir string            `json:"WorkingDir"`
	Labels     map[string]string `json:"Labels"`
}

type imageConfig struct {
	Created      string    `json:"created"`
	Architecture string    `json:"architecture"`
	OS           string    `json:"os"`
	Config       runConfig `json:"config"`
	RootFS       struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
	History []struct {
		Created   string `json:"created"`
		CreatedBy string `json:"created_by"`
	} `json:"history"`
}

type manifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	Config        descriptor        `json:"config"`
	Layers        []descriptor      `json:"layers"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []descriptor `json:"manifests"`
}

// dockerManifest is one entry of the manifest.json of `docker save`'s format, which
// `docker load` (the classic image store), `crane push` and skopeo's docker-archive
// read; it points at the same blobs as index.json, so one tarball is both formats.
type dockerManifest struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func blobPath(digest string) string { return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:") }

var badTagChar = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// tag turns a version into a valid image tag ([A-Za-z0-9_][A-Za-z0-9_.-]{0,127}).
func tag(version string) string {
	t := badTagChar.ReplaceAllString(version, "-")
	if t == "" || t[0] == '.' || t[0] == '-' {
		t = "v" + t
	}
	if len(t) > 128 {
		t = t[:128]
	}
	return t
}

// qualified spells ref as docker normalizes a name before looking it up: a bare name
// is under docker.io/library/, a namespaced one under docker.io/, and one whose first
// component is a host (a dot, a port or localhost) stays as it is.
func qualified(ref string) string {
	first, _, namespaced := strings.Cut(ref, "/")
	switch {
	case namespaced && (strings.ContainsAny(first, ".:") || first == "localhost"):
		return ref
	case namespaced:
		return "docker.io/" + ref
	}
	return "docker.io/library/" + ref
}

// buildImage returns the image tarball: an OCI image layout (oci-layout, index.json,
// blobs/sha256/…) plus a docker-archive manifest.json over the same blobs.
func buildImage(spec imageSpec, files []entry) ([]byte, error) {
	mtime := spec.Created.UTC()
	layerTar, err := writeTar(files, mtime)
	if err != nil {
		return nil, err
	}
	layer, err := gzipBytes(layerTar)
	if err != nil {
		return nil, err
	}
	created := mtime.Format(time.RFC3339)
	labels := map[string]string{
		"org.opencontainers.image.created":  created,
		"org.opencontainers.image.revision": spec.Revision,
		"org.opencontainers.image.source":   spec.Source,
		"org.opencontainers.image.title":    "hfmerge",
		"org.opencontainers.image.version":  spec.Version,
	}
	var cfg imageConfig
	cfg.Created = created
	cfg.Architecture = spec.Arch
	cfg.OS = "linux"
	cfg.Config = runConfig{
		User:       fmt.Sprintf("%d:%d", uid, gid),
		Env:        env,
		Entrypoint: []string{binaryPath},
		WorkingDir: home,
		Labels:     labels,
	}
	cfg.RootFS.Type = "layers"
	cfg.RootFS.DiffIDs = []string{digestOf(layerTar)}
	cfg.History = append(cfg.History, struct {
		Created   string `json:"created"`
		CreatedBy string `json:"created_by"`
	}{created, "hfmerge scripts/image.sh " + spec.Version})
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	man := manifest{
		SchemaVersion: 2,
		MediaType:     mediaManifest,
		Config:        descriptor{MediaType: mediaConfig, Digest: digestOf(cfgJSON), Size: int64(len(cfgJSON))},
		Layers:        []descriptor{{MediaType: mediaLayerGz, Digest: digestOf(layer), Size: int64(len(layer))}},
		Annotations:   labels,
	}
	manJSON, err := json.Marshal(man)
	if err != nil {
		return nil, err
	}
	ref := spec.Name + ":" + tag(spec.Version)
	idx := index{
		SchemaVersion: 2,
		MediaType:     mediaIndex,
		Manifests: []descriptor{{
			MediaType: mediaManifest,
			Digest:    digestOf(manJSON),
			Size:      int64(len(manJSON)),
			Annotations: map[string]string{
				// podman and skopeo name the image from ref.name, docker's
				// containerd image store from io.containerd.image.name, which it
				// looks up only in the fully qualified form.
				"org.opencontainers.image.ref.name": ref,
				"io.containerd.image.name":          qualified(ref),
			},
			Platform: &platform{Architecture: spec.Arch, OS: "linux"},
		}},
	}
	idxJSON, err := json.Marshal(idx)
	if err != nil {
		return nil, err
	}
	dockerJSON, err := json.Marshal([]dockerManifest{{
		Config:   blobPath(digestOf(cfgJSON)),
		RepoTags: []string{ref},
		Layers:   []string{blobPath(digestOf(layer))},
	}})
	if err != nil {
		return nil, err
	}
	outer := []entry{
		{name: "blobs", dir: true, mode: 0o755},
		{name: "blobs/sha256", dir: true, mode: 0o755},
		{name: "oci-layout", mode: 0o644, data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{name: "index.json", mode: 0o644, data: idxJSON},
		{name: "manifest.json", mode: 0o644, data: dockerJSON},
	}
	for _, blob := range [][]byte{layer, cfgJSON, manJSON} {
		outer = append(outer, entry{name: blobPath(digestOf(blob)), mode: 0o644, data: blob})
	}
	sortEntries(outer)
	return writeTar(outer, mtime)
}
