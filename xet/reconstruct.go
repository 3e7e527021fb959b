package xet

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
)

// ReconTerm is one term of a file's reconstruction as the CAS answers it: the chunks
// [Start, End) of a xorb, Bytes long once unpacked. In order, the terms make the file.
type ReconTerm struct {
	Xorb       Hash
	Start, End uint32
	Bytes      uint64
}

// Reconstruction asks the CAS which xorb chunks make a file
// (GET /v1/reconstructions/{file hash}; spec api.md "Get File Reconstruction"). It
// reads the terms only: where their bytes are fetched from is not used. A read token
// suffices.
func (c *Client) Reconstruction(ctx context.Context, file Hash) ([]ReconTerm, error) {
	path := "/v1/reconstructions/" + file.String()
	_, body, err := c.do(ctx, call{method: http.MethodGet, path: path, ok: []int{http.StatusOK}})
	if err != nil {
		return nil, err
	}
	var raw struct {
		Offset int64 `json:"offset_into_first_range"`
		Terms  []struct {
			Hash           string `json:"hash"`
			UnpackedLength uint64 `json:"unpacked_length"`
			Range          struct {
				Start uint32 `json:"start"`
				End   uint32 `json:"end"`
			} `json:"range"`
		} `json:"terms"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, fmt.Errorf("xet: GET %s: answer is not a reconstruction: %w", path, err)
	}
	if raw.Offset != 0 {
		return nil, fmt.Errorf("xet: GET %s: the whole file's reconstruction starts %d bytes into its first term", path, raw.Offset)
	}
	out := make([]ReconTerm, 0, len(raw.Terms))
	for i, t := range raw.Terms {
		h, err := ParseHash(t.Hash)
		if err != nil {
			return nil, fmt.Errorf("xet: GET %s: term %d: %w", path, i, err)
		}
		if t.Range.End <= t.Range.Start {
			return nil, fmt.Errorf("xet: GET %s: term %d has the empty chunk range [%d, %d)", path, i, t.Range.Start, t.Range.End)
		}
		out = append(out, ReconTerm{Xorb: h, Start: t.Range.Start, End: t.Range.End, Bytes: t.UnpackedLength})
	}
	return out, nil
}

// DedupEligible reports whether the global dedup index tracks a chunk of this hash
// wherever it appears (besides the first chunk of each file, which it always tracks).
func (h Hash) DedupEligible() bool { return globalDedupEligible(h) }
