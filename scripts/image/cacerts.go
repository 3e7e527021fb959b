package main

import (
	"bytes"
	"encoding/pem"

	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// caBundle renders the Mozilla (NSS) roots of the pinned x509roots/fallback module as
// a PEM file, so that the image's trust store comes from go.sum, not from the build
// machine's /etc/ssl. Roots that carry a constraint a PEM file cannot express (a
// distrust-after date) are left out, as a trust store without that notion must; the
// count of each is returned for the build log.
func caBundle() (pemData []byte, kept, skipped int) {
	var b bytes.Buffer
	for r := range bundle.Roots() {
		if r.Constraint != nil {
			skipped++
			continue
		}
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: r.Certificate})
		kept++
	}
	return b.Bytes(), kept, skipped
}
