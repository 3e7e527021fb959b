package hfmerge

import (
	"context"
	"errors"
	"fmt"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/upload"
)

// CardPolicy says what a push does with a model card already on the target branch.
type CardPolicy string

const (
	// CardKeep (the default) writes hfmerge's card only where the branch has no card,
	// or has the card hfmerge wrote last (the README.md whose git blob id the branch's
	// hfmerge.json records). A card written or edited by a person is kept.
	CardKeep CardPolicy = "keep"
	// CardReplace always writes hfmerge's card.
	CardReplace CardPolicy = "replace"
)

// keepHubCard says whether the target's model card at rev must be kept, and why.
func keepHubCard(ctx context.Context, t *upload.Target, rev string, policy CardPolicy) (bool, string, error) {
	if policy == CardReplace {
		return false, "", nil
	}
	entries, err := t.Client.Tree(ctx, t.Repo, rev, "", false)
	if errors.Is(err, hub.ErrRepoNotFound) || errors.Is(err, hub.ErrRevisionNotFound) {
		return false, "", nil
	}
	if err != nil {
		return false, "", fmt.Errorf("reading the model card of %s: %w", t.Repo, err)
	}
	var card *hub.Entry
	for i, e := range entries {
		if e.Path == "README.md" && e.Type == "file" {
			card = &entries[i]
		}
	}
	if card == nil {
		return false, "", nil
	}
	prov, err := hubProvenance(ctx, t, rev)
	if err != nil {
		return false, "", err
	}
	if prov != nil {
		if f, ok := prov.Files["README.md"]; ok && f.Git != "" && f.Git == card.OID {
			return false, "", nil // hfmerge's own card, unedited
		}
		return true, "the model card on the Hub was edited since hfmerge wrote it", nil
	}
	return true, "the repo has a model card hfmerge did not write", nil
}

// hubProvenance reads rev's hfmerge.json, or nil when it has none that parses.
func hubProvenance(ctx context.Context, t *upload.Target, rev string) (*Provenance, error) {
	info, err := t.Client.FileInfo(ctx, t.Repo, rev, ProvenanceFile)
	if errors.Is(err, hub.ErrEntryNotFound) || errors.Is(err, hub.ErrRepoNotFound) || errors.Is(err, hub.ErrRevisionNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if info.Size > 16<<20 {
		return nil, nil
	}
	b, err := t.Client.ReadRange(ctx, info, 0, info.Size)
	if err != nil {
		return nil, err
	}
	return readProvenance(b), nil
}
