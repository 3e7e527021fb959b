// Package hubtest is a fake Hugging Face Hub for tests: the Hub API as an
// http.Handler plus a separate CDN/storage handler, with scripted faults and state a
// test can inspect. It follows the HTTP protocol as documented in
// shared/research/hub-protocol.md and as the official JavaScript client
// (@huggingface/hub) speaks it (see interop/), not any client of ours: it imports
// nothing but the standard library.
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
//     lastModified, usedStorage, xetEnabled=false; expand=... selects fields.
//   - GET .../tree/{rev}[/{path}]?recursive&expand: entries {type, oid, size, path,
//     lfs{oid, size, pointerSize}, lastCommit with expand}, paginated with an absolute
//     Link rel="next" (WithTreePageSize to force pages).
//   - POST .../paths-info/{rev}: JSON or form body, unknown paths left out.
//   - GET .../refs[?include_prs=1], GET .../commits/{rev} (paginated).
//   - POST .../preupload/{rev}: uploadMode, shouldIgnore, oid of existing files,
//     commitOid (the head of rev).
//   - POST /{repo}.git/info/lfs/objects/batch: upload (basic, multipart; objects
//     already stored come back without actions; a verify action unless
//     WithVerifyAction(false)) and download. Never "xet": offered xet is ignored, as a
//     non-Xet repo does, and clients fall back to LFS.
//   - POST /api/complete_multipart?...: the signed multipart completion URL; checks
//     part order, ETags, size and sha256.
//   - POST /{repo}.git/info/lfs/objects/verify.
//   - POST .../commit/{rev}[?create_pr=1]: NDJSON header/file/lfsFile/deletedFile/
//     deletedFolder; parentCommit mismatch → 412; an lfsFile never uploaded → 400;
//     .gitattributes updated for new LFS paths; PRs are refs/pr/N with
//     pullRequestUrl …/discussions/N; commits to refs/pr/N update the PR.
//   - Revisions: HEAD (= main), branch, tag, refs/heads/X, refs/tags/X, refs/pr/N (sent
//     percent-encoded, refs%2Fpr%2F1) or a full commit id.
//   - GET|HEAD /{repo}/resolve/{rev}/{path}: regular files 200 with ETag = git sha1,
//     Range support; LFS files 302 to a signed CDN URL with X-Linked-Etag (sha256),
//     X-Linked-Size, ETag; X-Repo-Commit everywhere (also on EntryNotFound).
//     /raw/ serves the git blob (the pointer of an LFS file).
//   - GET .../xet-{read,write}-token/{rev}: 404, the repo has no Xet storage.
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
// # What it does not implement
//
// Xet (CAS, xet tokens, X-Xet-Hash), git over HTTP, renamed-repo redirects, spaces
// runtime, discussions beyond the PR number, branch/tag creation over HTTP (use Seed
// with OnBranch/WithTag), abbreviated revisions in URLs, securityFileStatus,
// safetensors metadata in model info, rate limiting other than scripted faults, the
// 50 GB CDN limit, expiry of uploaded-but-uncommitted objects, gated-repo access
// requests, and fine-grained read permissions (a fine-grained token reads what its
// user may). Commit ids look like git ids but are not git
// objects. Pull requests need write access to the repo (the Hub lets any user open
// one). Everything is held in memory.
package hubtest
