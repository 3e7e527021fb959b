// Package interop checks hub/hubtest against a client we did not write: the official
// JavaScript client @huggingface/hub (version pinned in package.json), driven by
// hub.mjs. The tests carry the build tag "interop" so that a plain go test ./... does
// not need Node.js:
//
//	bash interop/setup.sh && go test -tags interop ./interop/...
//
// With the tag set, a missing node or npm package fails the tests (it does not skip).
//
// What @huggingface/hub 2.17.5 showed about the protocol (and the fake now does):
//
//   - Upload: preupload, then the LFS batch with transfers ["basic", "multipart",
//     "xet"] and hash_algo "sha_256". It uses Xet only if the answer's "transfer" is
//     "xet"; any other answer (the fake's "basic" or "multipart") makes it fall back to
//     plain LFS, with no Xet request at all (no xet-write-token call). So a non-Xet
//     repo needs nothing special: just never choose "xet".
//   - Multipart: it checks that the part count equals ceil(size/chunk_size), PUTs up to
//     5 parts at once without Authorization, requires an ETag on every part reply, and
//     POSTs the completion without Authorization (the completion URL must be signed).
//   - It does not skip unchanged files (older versions compared preupload oids): a
//     re-upload runs the batch again (stored objects get no actions, so no bytes move)
//     and commits the same tree again.
//   - modelInfo asks for /api/models/{repo}/revision/HEAD: "HEAD" must resolve to the
//     default branch.
//   - fileDownloadInfo (and so downloadFile) GETs the resolve URL with
//     "Range: bytes=0-0" and "Accept: application/vnd.xet-fileinfo+json, */*",
//     follows the 302, and reads ETag and Content-Range from the final (CDN) reply:
//     the CDN must send ETag and honour Range, and so must /resolve/ for regular
//     files. A JSON answer to that Accept is only for Xet files.
//   - fetch drops Authorization on the cross-origin redirect to the CDN (the CDN
//     counted no token in any test).
//   - downloadFileToCacheDir uses paths-info and names the snapshot after the file's
//     lastCommit, not the branch head, and writes no ref; snapshotDownload uses
//     /revision/{rev}, the tree at the commit, then paths-info per file, and writes
//     refs/<rev> without a newline. Symlinks are relative; scanCacheDir reports no
//     warnings on the result.
//   - It logs progress lines on stdout during downloads (hub.mjs prints its answer
//     last).
//
// With Xet on the fake (hubtest.WithXet; xet_test.go), the same client showed (details
// and sources in docs/xet-hub.md):
//
//   - It takes the CAS URL, token and expiry from the batch's upload action header and
//     calls href only to refresh, when the token expires within 60 s; a PR upload's
//     batch carries no ref.
//   - It queries global dedup with prefix "default" for the first chunk of each file,
//     and reads the answer's CAS info only up to the u64 at footer+24 (which the spec
//     calls reserved).
//   - Its shards carry a 200-byte footer; its xorbs are cut at 64 MiB serialized.
//   - Downloads: the file-info answer (200, application/vnd.xet-fileinfo+json) must
//     carry X-Xet-Hash, X-Linked-Size and both Link rels; it rewrites the v1
//     reconstruction link to v2 and fetches multi-range entries as one
//     multipart/byteranges request, without Authorization.
//   - For bytes it uploaded, the chunk, xorb, range, file and sha256 values the CAS
//     recomputes equal what it sent, and its own chunker (xetchunk-wasm) gives the
//     chunk and file hashes the CAS stores.
package interop
