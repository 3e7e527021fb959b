package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
)

// checked is what verifyImage learnt of a well-formed image tarball.
type checked struct {
	Ref    string      // the docker-archive RepoTags entry
	Layers []string    // the layer blobs' paths in the tarball, bottom first
	Config imageConfig // the image config
}

// verifyImage checks an image tarball the way a loader would: every blob's name is its
// sha256, index.json → manifest → config and layers are present with the sizes and
// digests they are referred to by, each layer decompresses to the diff_id the config
// names, and manifest.json points at the same config and layers.
func verifyImage(tarball []byte) (checked, error) {
	var c checked
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(tarball))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return c, fmt.Errorf("reading the image tarball: %w", err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return c, fmt.Errorf("reading %s: %w", h.Name, err)
		}
		files[h.Name] = data
	}
	var layout struct {
		ImageLayoutVersion string `json:"imageLayoutVersion"`
	}
	if err := json.Unmarshal(files["oci-layout"], &layout); err != nil || layout.ImageLayoutVersion != "1.0.0" {
		return c, fmt.Errorf("oci-layout: want imageLayoutVersion 1.0.0, have %q (%v)", files["oci-layout"], err)
	}
	for name, data := range files {
		if len(name) > len("blobs/sha256/") && name[:len("blobs/sha256/")] == "blobs/sha256/" && blobPath(digestOf(data)) != name {
			return c, fmt.Errorf("blob %s: content has digest %s", name, digestOf(data))
		}
	}
	blob := func(what string, d descriptor, mediaType string) ([]byte, error) {
		data, ok := files[blobPath(d.Digest)]
		switch {
		case !ok:
			return nil, fmt.Errorf("%s: blob %s missing", what, d.Digest)
		case int64(len(data)) != d.Size:
			return nil, fmt.Errorf("%s: blob %s has %d bytes, descriptor says %d", what, d.Digest, len(data), d.Size)
		case d.MediaType != mediaType:
			return nil, fmt.Errorf("%s: media type %q, want %q", what, d.MediaType, mediaType)
		}
		return data, nil
	}
	var idx index
	if err := json.Unmarshal(files["index.json"], &idx); err != nil {
		return c, fmt.Errorf("index.json: %w", err)
	}
	if idx.SchemaVersion != 2 || len(idx.Manifests) != 1 {
		return c, fmt.Errorf("index.json: want schemaVersion 2 and one manifest, have %d and %d", idx.SchemaVersion, len(idx.Manifests))
	}
	manJSON, err := blob("index.json manifest", idx.Manifests[0], mediaManifest)
	if err != nil {
		return c, err
	}
	var man manifest
	if err := json.Unmarshal(manJSON, &man); err != nil {
		return c, fmt.Errorf("manifest %s: %w", idx.Manifests[0].Digest, err)
	}
	cfgJSON, err := blob("manifest config", man.Config, mediaConfig)
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(cfgJSON, &c.Config); err != nil {
		return c, fmt.Errorf("config %s: %w", man.Config.Digest, err)
	}
	if len(c.Config.RootFS.DiffIDs) != len(man.Layers) {
		return c, fmt.Errorf("config names %d diff_ids for %d layers", len(c.Config.RootFS.DiffIDs), len(man.Layers))
	}
	for i, l := range man.Layers {
		data, err := blob(fmt.Sprintf("layer %d", i), l, mediaLayerGz)
		if err != nil {
			return c, err
		}
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return c, fmt.Errorf("layer %s: %w", l.Digest, err)
		}
		raw, err := io.ReadAll(zr)
		if err != nil {
			return c, fmt.Errorf("layer %s: %w", l.Digest, err)
		}
		if d := digestOf(raw); d != c.Config.RootFS.DiffIDs[i] {
			return c, fmt.Errorf("layer %s decompresses to %s, config's diff_id is %s", l.Digest, d, c.Config.RootFS.DiffIDs[i])
		}
		c.Layers = append(c.Layers, blobPath(l.Digest))
	}
	var dm []dockerManifest
	if err := json.Unmarshal(files["manifest.json"], &dm); err != nil {
		return c, fmt.Errorf("manifest.json: %w", err)
	}
	if len(dm) != 1 || dm[0].Config != blobPath(man.Config.Digest) || !slices.Equal(dm[0].Layers, c.Layers) || len(dm[0].RepoTags) != 1 {
		return c, fmt.Errorf("manifest.json %s does not match index.json's manifest", files["manifest.json"])
	}
	c.Ref = dm[0].RepoTags[0]
	return c, nil
}
