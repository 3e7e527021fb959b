package hubtest

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Route names an endpoint of the fake; faults and counters are keyed by it.
type Route string

// Routes of the Hub host.
const (
	RouteWhoami     Route = "whoami"       // GET /api/whoami-v2
	RouteCreateRepo Route = "create-repo"  // POST /api/repos/create
	RouteInfo       Route = "info"         // GET /api/{kind}s/{repo}[/revision/{rev}]
	RouteTree       Route = "tree"         // GET /api/{kind}s/{repo}/tree/{rev}[/{path}]
	RoutePathsInfo  Route = "paths-info"   // POST /api/{kind}s/{repo}/paths-info/{rev}
	RouteRefs       Route = "refs"         // GET /api/{kind}s/{repo}/refs
	RouteCommits    Route = "commits"      // GET /api/{kind}s/{repo}/commits/{rev}
	RoutePreupload  Route = "preupload"    // POST /api/{kind}s/{repo}/preupload/{rev}
	RouteCommit     Route = "commit"       // POST /api/{kind}s/{repo}/commit/{rev}
	RouteXetToken   Route = "xet-token"    // GET /api/{kind}s/{repo}/xet-{read|write}-token/{rev}
	RouteBranch     Route = "branch"       // POST (create) or DELETE /api/{kind}s/{repo}/branch/{branch}
	RouteBatch      Route = "lfs-batch"    // POST /{repo}.git/info/lfs/objects/batch
	RouteVerify     Route = "lfs-verify"   // POST /{repo}.git/info/lfs/objects/verify
	RouteComplete   Route = "lfs-complete" // POST /api/complete_multipart?... (signed)
	RouteResolve    Route = "resolve"      // GET|HEAD /{repo}/resolve/{rev}/{path}
	RouteRaw        Route = "raw"          // GET|HEAD /{repo}/raw/{rev}/{path}
)

// Routes of the CDN/storage host; every URL there is signed.
const (
	RouteCDNGet    Route = "cdn-get"    // GET|HEAD /lfs/{oid}
	RouteUploadPut Route = "upload-put" // PUT /upload/{id} (basic transfer)
	RoutePartPut   Route = "part-put"   // PUT /upload/{id}/{part} (multipart transfer)
)

// RouteUnknown is any request that matches no endpoint.
const RouteUnknown Route = "unknown"

// Hosts, as Request.Host reports them.
const (
	HostHub = "hub"
	HostCDN = "cdn"
)

// call is one routed request: what the path said, and where to answer.
type call struct {
	w      http.ResponseWriter
	r      *http.Request
	mw     *meteredWriter // nil when the reply is recorded instead of sent
	route  Route
	repo   repoKey
	rev    string
	path   string // file or directory path inside the repo
	id     string // upload id or oid
	part   int
	method []string // allowed methods
}

// setFileKey names the file whose bytes the reply carries, for Stats.FileBytes.
func (c *call) setFileKey(k string) {
	if c.mw != nil {
		c.mw.fileKey = k
	}
}

// segments splits the escaped URL path and unescapes each segment, so that an
// encoded slash (refs%2Fpr%2F1) stays inside its segment.
func segments(r *http.Request) []string {
	raw := strings.Trim(r.URL.EscapedPath(), "/")
	if raw == "" {
		return nil
	}
	parts := strings.Split(raw, "/")
	for i, p := range parts {
		if u, err := url.PathUnescape(p); err == nil {
			parts[i] = u
		}
	}
	return parts
}

// kindOf maps the plural used in URLs to a repo kind, "" if it is none.
func kindOf(plural string) string {
	switch plural {
	case "models":
		return KindModel
	case "datasets":
		return KindDataset
	case "spaces":
		return KindSpace
	}
	return ""
}

// routeHub classifies a request to the Hub host.
func routeHub(r *http.Request) *call {
	s := segments(r)
	c := &call{route: RouteUnknown}
	get, post := []string{http.MethodGet}, []string{http.MethodPost}
	switch {
	case len(s) == 2 && s[0] == "api" && s[1] == "whoami-v2":
		c.route, c.method = RouteWhoami, get
		return c
	case len(s) == 3 && s[0] == "api" && s[1] == "repos" && s[2] == "create":
		c.route, c.method = RouteCreateRepo, post
		return c
	case len(s) == 2 && s[0] == "api" && s[1] == "complete_multipart":
		c.route, c.method = RouteComplete, post
		return c
	case len(s) >= 4 && s[0] == "api" && kindOf(s[1]) != "":
		c.repo = repoKey{kindOf(s[1]), s[2] + "/" + s[3]}
		rest := s[4:]
		switch {
		case len(rest) == 0:
			c.route, c.method = RouteInfo, get
		case len(rest) == 2 && rest[0] == "revision":
			c.route, c.method, c.rev = RouteInfo, get, rest[1]
		case len(rest) >= 2 && rest[0] == "tree":
			c.route, c.method, c.rev, c.path = RouteTree, get, rest[1], strings.Join(rest[2:], "/")
		case len(rest) == 2 && rest[0] == "paths-info":
			c.route, c.method, c.rev = RoutePathsInfo, post, rest[1]
		case len(rest) == 1 && rest[0] == "refs":
			c.route, c.method = RouteRefs, get
		case len(rest) == 2 && rest[0] == "commits":
			c.route, c.method, c.rev = RouteCommits, get, rest[1]
		case len(rest) == 2 && rest[0] == "preupload":
			c.route, c.method, c.rev = RoutePreupload, post, rest[1]
		case len(rest) == 2 && rest[0] == "commit":
			c.route, c.method, c.rev = RouteCommit, post, rest[1]
		case len(rest) == 2 && rest[0] == "branch":
			c.route, c.method, c.rev = RouteBranch, []string{http.MethodPost, http.MethodDelete}, rest[1]
		case len(rest) == 2 && (rest[0] == "xet-read-token" || rest[0] == "xet-write-token"):
			c.route, c.method, c.rev = RouteXetToken, get, rest[1]
		default:
			if n, ok := isMergePR(rest); ok {
				c.route, c.method, c.id = RouteMergePR, post, n
			}
		}
		return c
	}
	kind := KindModel
	if len(s) > 0 && (s[0] == "datasets" || s[0] == "spaces") {
		kind, s = kindOf(s[0]), s[1:]
	}
	if len(s) == 6 && strings.HasSuffix(s[1], ".git") && s[2] == "info" && s[3] == "lfs" && s[4] == "objects" {
		c.repo = repoKey{kind, s[0] + "/" + strings.TrimSuffix(s[1], ".git")}
		switch s[5] {
		case "batch":
			c.route, c.method = RouteBatch, post
		case "verify":
			c.route, c.method = RouteVerify, post
		}
		return c
	}
	if len(s) >= 5 && (s[2] == "resolve" || s[2] == "raw") {
		c.repo = repoKey{kind, s[0] + "/" + s[1]}
		c.route, c.method = RouteResolve, []string{http.MethodGet, http.MethodHead}
		if s[2] == "raw" {
			c.route = RouteRaw
		}
		c.rev, c.path = s[3], strings.Join(s[4:], "/")
	}
	return c
}

// routeCDN classifies a request to the CDN/storage host.
func routeCDN(r *http.Request) *call {
	s := segments(r)
	c := &call{route: RouteUnknown}
	switch {
	case len(s) == 2 && s[0] == "lfs":
		c.route, c.method, c.id = RouteCDNGet, []string{http.MethodGet, http.MethodHead}, s[1]
	case len(s) == 2 && s[0] == "upload":
		c.route, c.method, c.id = RouteUploadPut, []string{http.MethodPut}, s[1]
	case len(s) == 3 && s[0] == "upload":
		n, err := strconv.Atoi(s[2])
		if err == nil && n > 0 {
			c.route, c.method, c.id, c.part = RoutePartPut, []string{http.MethodPut}, s[1], n
		}
	}
	return c
}
