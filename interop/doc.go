// Package interop checks hub/hubtest against a client we did not write: the official
// JavaScript client @huggingface/hub (version pinned in package.json), driven by
// hub.mjs. The tests carry the build tag "interop" so that a plain go test ./... does
// not need Node.js:
//
//	bash interop/setup.sh && go test -tags interop ./interop/...
//
// With the tag set, a missing node or npm package fails the tests (it does not skip).
package interop
