// Package hubtest is a fake Hugging Face Hub for tests: the Hub API as an
// http.Handler plus a separate CDN/storage handler, with scripted faults and state a
// test can inspect. It follows the HTTP protocol as documented in
// shared/research/hub-protocol.md and as the official JavaScript client
// (@huggingface/hub) speaks it (see interop/), not any client of ours: it imports
// nothing of hfmerge, only the standard library and, for Xet, a BLAKE3 and an LZ4
// module; its Xet hashing and parsing are its own, written from the spec, so that a
// mistake in hfmerge's Xet client cannot be mirrored by the referee it is tested
// against.
//
//	hub := hubtest.New(hubtest.WithToken("hf_w", "alice", hubtest.ScopeWrite),
//		hubtest.WithLFSThreshold(1024)).Start(t)
//	sha, _ := hub.Seed("alice/base", map[string][]byte{"config.json": cfg, "model.safetensors": st})
//	hub.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, Drop: true, DropAfterBytes: 100})
//	// point the client at hub.URL() (HF_ENDPOINT) ...
//	hub.Stats().CDNAuthRejected // 0 unless the client leaked its token
//
// # What it implements
//
// Hub host (Handler, URL):
//   - GET /api/whoami-v2: name, orgs (roleInOrg), and auth in the Hub's shapes:
//     {type: "access_token", accessToken: {displayName, role}} with role "read",
//     "write" or "fineGrained" (then fineGrained {canReadGatedRepos, global, scoped:
//     [{entity: {_id, type, name}, permissions}]}); {type: "app_token_as_user"} with no
//     accessToken for app/OAuth tokens (WithAppToken, WithFineGrainedToken); 401
//     without a valid token.
//   - POST /api/repos/create: name[/organization], type, private or visibility,
//     files; 409 with "url" if it exists. New repos get an "initial commit" holding the
//     default .gitattributes (*.safetensors, *.bin, ... are LFS), as on the Hub.
//   - GET /api/{models,datasets,spaces}/{repo}[/revision/{rev}]: id, sha, siblings
//     (size, blobId, lfs{size, sha256, pointerSize} with blobs=true), private, gated,
//     lastModified, usedStorage, xetEnabled (true with WithXet); expand=... selects
//     fields.
//   - GET .../tree/{rev}[/{path}]?recursive&expand: entries {type, oid, size, path,
//     lfs{oid, size, pointerSize}, xetHash for content the CAS stores, lastCommit
//     with expand}, paginated with an absolute
//     Link rel="next" (WithTreePageSize to force pages).
//   - POST .../paths-info/{rev}: JSON or form body, unknown paths left out.
//   - GET .../refs[?include_prs=1], GET .../commits/{rev} (paginated).
//   - POST .../preupload/{rev}: uploadMode, shouldIgnore, oid of existing files,
//     commitOid (the head of rev).
//   - POST /{repo}.git/info/lfs/objects/batch: upload (basic, multipart; objects
//     already stored come back without actions; a verify action unless
//     WithVerifyAction(false)) and download. Without WithXet, offered "xet" is
//     ignored, as a non-Xet repo does, and clients fall back to LFS; with it, "xet" is
//     chosen when offered (see Xet below).
//   - POST /api/complete_multipart?...: the signed multipart completion URL; checks
//     part order, ETags, size and sha256.
//   - POST /{repo}.git/info/lfs/objects/verify.
//   - POST .../commit/{rev}[?create_pr=1]: NDJSON header/file/lfsFile/deletedFile/
//     deletedFolder; parentCommit mismatch → 412; an lfsFile never uploaded → 400;
//     .gitattributes updated for new LFS paths; PRs are refs/pr/N with
//     pullRequestUrl …/discussions/N; commits to refs/pr/N update the PR.
//   - POST .../discussions/{n}/merge: merges pull request n into main as one commit
//     with its files, when main has not moved since it was opened (409 otherwise); the
//     pull request then leaves the refs listing.
//   - Revisions: HEAD (= main), branch, tag, refs/heads/X, refs/tags/X, refs/pr/N (sent
//     percent-encoded, refs%2Fpr%2F1) or a full commit id.
//   - GET|HEAD /{repo}/resolve/{rev}/{path}: regular files 200 with ETag = git sha1,
//     Range support; LFS files 302 to a signed CDN URL with X-Linked-Etag (sha256),
//     X-Linked-Size, ETag; X-Repo-Commit everywhere (also on EntryNotFound).
//     /raw/ serves the git blob (the pointer of an LFS file).
//   - GET .../xet-{read,write}-token/{rev}[?create_pr=1]: 404 without WithXet (see
//     Xet below).
//
// Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound,
// GatedRepo), X-Error-Message and {"error": msg}. A missing repo and a private repo
// the caller may not read look alike: 401 without a valid token, 404 with one. An
// unknown token is 401 "Invalid credentials in Authorization header". Writing needs a
// write token of the owner or of a member of the owning org (WithOrg): 401 without a
// token, 403 otherwise; an app token writes like its user, a fine-grained token where it
// has repo.write (globally, on the owner's user or org entity, or on the repo), on repo
// create, preupload, LFS batch, verify and commit alike. Gated repos show metadata but refuse contents (401/403
// GatedRepo) to anyone but members and users granted access (GrantAccess).
//
// CDN host (CDNHandler, CDNURL): GET|HEAD /lfs/{sha256} with Range (bytes=a-b, a-,
// -n; 206, or 416 with "bytes */size"; several ranges get 200 in full), ETag
// "<sha256>"; PUT /upload/{id} (basic, body checked against sha256 and size) and PUT
// /upload/{id}/{n} (parts, ETag = quoted md5). Every URL is signed (HMAC) and expires
// (WithURLExpiry, ExpireURLs): 403 AccessDenied "Request has expired" as S3 says it.
// Any request with an Authorization header is refused (403) and counted
// (Stats.CDNAuthRejected). Start puts the CDN on 127.0.0.2 when it can, so it is a
// different host for clients, not just a different port.
//
// Faults (Hub.Fault): a status N times with the fake's or a given message (5xx, a 403
// "storage quota exceeded", 429 with Retry-After and RateLimit, or RateLimit alone), a
// delay, a slow body, a request held without a reply (Hang), headers and N bytes then
// a stalled body (Stall), a connection cut after N response bytes (or N request bytes
// for uploads), an expired signed URL, or a request applied and its reply lost
// (ApplyThenLose: status, or connection closed). FaultHandle.Fired says it happened.
//
// A modelled link (WithLink, WithLatency): one download rate shared by every CDN and
// resolve reply body, one upload rate shared by every upload PUT (basic and parts) and
// commit request body, and a latency added to each request. Stats.BytesDown and BytesUp
// count the bytes that crossed it.
//
// The official JavaScript client runs against the fake in interop/ (build tag
// "interop"); what it taught is written down there.
//
// State: Stats (requests per route, bytes per host and per file, CDN Authorization
// refusals, uploaded bytes per object, commits per repo@ref, faults fired), the
// ordered request log with start and end times (Requests), File/Files/History/Head/
// PullRequests/Object/Objects/PendingUploads. WaitIdle waits for in-flight requests
// before a test reads the log. WithStateDir persists repos and objects on disk.
//
// When serving Handler and CDNHandler yourself, call SetURLs: redirects, signed URLs
// and Link headers are absolute.
//
// # Xet (WithXet)
//
// Hub host: GET .../xet-{read,write}-token/{rev} answers {accessToken, exp, casUrl}
// (and the same in X-Xet-Access-Token, X-Xet-Token-Expiration, X-Xet-Cas-Url); read
// needs access to the contents, write a write token of a member; create_pr=1 accepts
// rev "None" (huggingface_hub's spelling of the default branch). Tokens expire
// (WithXetTokenLifetime) and are scoped to the repo. The LFS batch, offered "xet",
// answers transfer "xet" with, per object to upload, header {X-Xet-Cas-Url,
// X-Xet-Access-Token, X-Xet-Token-Expiration, X-Xet-Session-Id} and href = the
// write-token URL of the batch's ref (the refresh URL). /resolve/ of a file the CAS
// stores adds X-Xet-Hash, X-Xet-Refresh-Route and Link rel="xet-auth" and
// rel="xet-reconstruction-info" (the v1 URL, as the Hub does); with Accept:
// application/vnd.xet-fileinfo+json it answers 200 with that type and {hash,
// refreshUrl, reconstructionUrl, etag, size} instead of the redirect.
//
// CAS host (CASHandler, CASURL; Start puts it on 127.0.0.3 when it can), Bearer CAS
// token on every route except transfers:
//   - POST /v1/xorbs/default/{hash}: parses the chunks, decompresses each (none, LZ4
//     frame, BG4+LZ4), recomputes the chunk hashes and the xorb hash; 400 naming the
//     chunk or both hashes on a mismatch or malformed body; {"was_inserted"}. HEAD
//     says whether it is stored.
//   - POST /v1/shards (with or without the footer): every CAS-info xorb must be stored
//     with those chunks; every term must reference a stored xorb and an existing chunk
//     range, with the right size and verification hash; the file hash and the sha256
//     metadata extension (required) must match the reassembled bytes; 400 with the
//     reason otherwise; {"result": 1, or 0 for a shard seen before}. Accepted files are
//     stored as LFS objects too: committable by sha256 in an lfsFile line, served by
//     the CDN path, answered "already stored" by the batch.
//   - GET /v1/chunks/{default-merkledb|default}/{hash}: for a chunk in the global dedup
//     index (the first chunk of each file, hash % 1024 == 0, or flagged eligible), a
//     shard with no files and the xorbs holding it plus those uploaded in the same
//     shard (WithXetNarrowDedup: only the former), chunk hashes keyed with a random
//     HMAC key (WithXetZeroDedupKey: the zero key, raw hashes), key expiry now+7 days
//     (WithXetDedupKeyExpiry); 404 otherwise.
//     Global: any token may dedup against any repo's chunks.
//   - GET /v1/reconstructions/{file} and /v2/...: terms cut to the chunks the Range
//     (bytes=a-b, inclusive) touches, offset_into_first_range; v1 fetch_info with one
//     signed URL per range, v2 xorbs with one signed URL per xorb for all its ranges;
//     416 past the end; 404 unless the token's repo uploaded the file or has it in a
//     commit.
//   - GET /xorb/default/{hash}?X-Xet-Signed-Range=...: signed, expiring (WithURLExpiry,
//     ExpireURLs), no Authorization; the Range must be one signed range (206) or all
//     of them (206 multipart/byteranges); any other is 403.
//
// XetStats counts tokens issued, xorb bytes received, xorbs and shards accepted and
// rejected, files registered, dedup queries and hits, reconstructions, transfer bytes
// and refused tokens (HubTokenRejected: a Hub token sent to the CAS). XetChecks lists
// every comparison of a value a client sent with the one the CAS recomputed;
// XetFileBySHA256 and XetXorbs show what is stored. Faults and the request log cover
// the CAS routes (RouteXet*) like the others. WithStateDir keeps xorbs and shards
// (xet/ in the state dir) and replays them at New; CAS tokens are not kept.
//
// # What it does not implement
//
// Xet's /v2/shards, batch reconstruction, file-chunk-hashes, HEAD /v1/files, and
// buckets; git over HTTP, renamed-repo redirects, spaces
// runtime, discussions beyond the PR number, branch/tag creation over HTTP (use Seed
// with OnBranch/WithTag), abbreviated revisions in URLs, securityFileStatus,
// safetensors metadata in model info, rate limiting other than scripted faults, the
// 50 GB CDN limit, expiry of uploaded-but-uncommitted objects, gated-repo access
// requests, and fine-grained read permissions (a fine-grained token reads what its
// user may). Commit ids look like git ids but are not git
// objects. Pull requests need write access to the repo (the Hub lets any user open
// one). Everything is held in memory.
package hubtest
