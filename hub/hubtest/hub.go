package hubtest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Scope is what a token may do.
type Scope string

// Token scopes. A write token can also read.
const (
	ScopeRead  Scope = "read"
	ScopeWrite Scope = "write"
	// ScopeFineGrained is a fine-grained token: it may write where FineGrained grants
	// repo.write (globally, for the owner's user or org entity, or for the repo).
	ScopeFineGrained Scope = "fineGrained"
	// ScopeApp is an OAuth or app token acting as the user: whoami-v2 reports
	// auth.type "app_token_as_user" and no accessToken; it may write like the user.
	ScopeApp Scope = "app"
)

// Token is an access token the fake accepts as "Authorization: Bearer <Value>".
type Token struct {
	Value       string // the secret sent by clients
	Name        string // the token's display name, reported by whoami-v2
	User        string // the account it belongs to
	Scope       Scope
	FineGrained *FineGrained // the permissions of a ScopeFineGrained token
}

// FineGrained is what a fine-grained token may do, as whoami-v2 reports it under
// auth.accessToken.fineGrained.
type FineGrained struct {
	Global []string // permissions on no particular entity
	Scoped []Scoped
}

// Scoped is a fine-grained token's permissions on one entity.
type Scoped struct {
	EntityType  string   // "user", "org", or a repo kind: "model", "dataset", "space"
	Entity      string   // the user or org name, or the repo id
	Permissions []string // e.g. "repo.content.read", "repo.write"
}

// PermRepoWrite is the fine-grained permission to push to a repo (and create one).
const PermRepoWrite = "repo.write"

type config struct {
	lfsThreshold   int64
	maxRegularSize int64
	chunkSize      int64
	treePage       int
	treePageExpand int
	urlExpiry      time.Duration
	verifyAction   bool
	now            func() time.Time
	stateDir       string
	logf           func(format string, args ...any)
	tokens         []Token
	orgs           map[string][]string
	downRate       int64
	upRate         int64
	latency        time.Duration
	xet            *xetConfig // nil: no Xet storage
}

// Option configures a Hub.
type Option func(*config)

// WithLFSThreshold sets the size from which preupload answers "lfs" and Seed stores a
// file in LFS (default 10 MiB). Files matching the repo's .gitattributes LFS patterns
// (*.safetensors, ...) are LFS whatever their size, as on the Hub.
func WithLFSThreshold(n int64) Option { return func(c *config) { c.lfsThreshold = n } }

// WithMaxRegularSize sets the largest inline ("file") commit operation accepted
// (default 10 MiB, the Hub's rule for non-LFS files).
func WithMaxRegularSize(n int64) Option { return func(c *config) { c.maxRegularSize = n } }

// WithMultipartChunkSize sets the multipart chunk size; objects larger than it get a
// multipart upload when the client offers "multipart" (default 64 MiB).
func WithMultipartChunkSize(n int64) Option { return func(c *config) { c.chunkSize = n } }

// WithTreePageSize sets how many entries a tree page holds, without and with
// expand=true (defaults 1000 and 50, as on the Hub). Small values force pagination.
func WithTreePageSize(plain, expanded int) Option {
	return func(c *config) { c.treePage, c.treePageExpand = plain, expanded }
}

// WithURLExpiry sets the lifetime of signed CDN and upload URLs (default 1 h).
func WithURLExpiry(d time.Duration) Option { return func(c *config) { c.urlExpiry = d } }

// WithVerifyAction makes LFS batch answers carry (default) or omit a verify action.
func WithVerifyAction(on bool) Option { return func(c *config) { c.verifyAction = on } }

// WithClock replaces time.Now, for tests of expiry and dates.
func WithClock(now func() time.Time) Option { return func(c *config) { c.now = now } }

// WithToken registers an access token.
func WithToken(value, user string, scope Scope) Option {
	return func(c *config) {
		c.tokens = append(c.tokens, Token{Value: value, Name: "token-" + user, User: user, Scope: scope})
	}
}

// WithAppToken registers an OAuth/app token of user (whoami-v2: auth.type
// "app_token_as_user", no accessToken); it may write like the user.
func WithAppToken(value, user string) Option {
	return func(c *config) {
		c.tokens = append(c.tokens, Token{Value: value, Name: "app-" + user, User: user, Scope: ScopeApp})
	}
}

// WithFineGrainedToken registers a fine-grained token of user with the given
// permissions; writes are allowed where they grant repo.write.
func WithFineGrainedToken(value, user string, fg FineGrained) Option {
	return func(c *config) {
		c.tokens = append(c.tokens, Token{Value: value, Name: "fine-" + user, User: user, Scope: ScopeFineGrained, FineGrained: &fg})
	}
}

// WithOrg declares an organization and its members; members may write to its repos
// (with a write token) and read its private repos.
func WithOrg(org string, members ...string) Option {
	return func(c *config) { c.orgs[org] = append(c.orgs[org], members...) }
}

// WithStateDir makes the Hub load its repos, commits and objects from dir at New and
// save them there after every change, so state survives a restart (cmd/hubfake).
func WithStateDir(dir string) Option { return func(c *config) { c.stateDir = dir } }

// WithLogf logs one line per request through logf.
func WithLogf(logf func(format string, args ...any)) Option {
	return func(c *config) { c.logf = logf }
}

// Hub is a fake Hugging Face Hub: an API host (Handler) and a separate CDN/storage
// host (CDNHandler). Every method is safe for concurrent use.
type Hub struct {
	cfg config
	key []byte // signs CDN and upload URLs

	mu       sync.Mutex
	repos    map[repoKey]*repo
	objects  map[string][]byte // sha256 -> content: the LFS store
	uploads  map[string]*upload
	tokens   map[string]Token
	orgs     map[string]map[string]bool
	seq      int
	urlEpoch time.Time // signed URLs issued before this are expired (ExpireURLs)

	urlMu  sync.RWMutex
	hubURL string
	cdnURL string

	faults   faultSet
	stats    recorder
	down, up *bucket      // the modelled link (WithLink); nil: unlimited
	xet      *xetState    // nil without WithXet
	inflight atomic.Int64 // requests being handled (WaitIdle)

	srvMu   sync.Mutex
	servers []*httptest.Server
}

// New returns an empty Hub. It panics only if WithStateDir names unreadable state,
// since a test or hubfake cannot go on with half a state.
func New(opts ...Option) *Hub {
	cfg := config{
		lfsThreshold:   10 << 20,
		maxRegularSize: 10 << 20,
		chunkSize:      64 << 20,
		treePage:       1000,
		treePageExpand: 50,
		urlExpiry:      time.Hour,
		verifyAction:   true,
		now:            time.Now,
		orgs:           map[string][]string{},
	}
	for _, o := range opts {
		o(&cfg)
	}
	h := &Hub{
		cfg:     cfg,
		key:     make([]byte, 32),
		repos:   map[repoKey]*repo{},
		objects: map[string][]byte{},
		uploads: map[string]*upload{},
		tokens:  map[string]Token{},
		orgs:    map[string]map[string]bool{},
	}
	rand.Read(h.key)
	h.stats.init()
	h.down, h.up = newBucket(cfg.downRate), newBucket(cfg.upRate)
	if cfg.xet != nil {
		h.xet = newXetState(cfg.xet)
		if err := h.loadXet(); err != nil {
			panic(err)
		}
	}
	for _, t := range cfg.tokens {
		h.tokens[t.Value] = t
	}
	for org, members := range cfg.orgs {
		for _, m := range members {
			h.addOrgMemberLocked(org, m)
		}
	}
	if cfg.stateDir != "" {
		if err := h.load(); err != nil {
			panic(err)
		}
	}
	return h
}

// AddToken registers a token after New.
func (h *Hub) AddToken(t Token) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t.Name == "" {
		t.Name = "token-" + t.User
	}
	h.tokens[t.Value] = t
}

// AddOrgMember makes user a member of org (creating the org).
func (h *Hub) AddOrgMember(org, user string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.addOrgMemberLocked(org, user)
}

func (h *Hub) addOrgMemberLocked(org, user string) {
	if h.orgs[org] == nil {
		h.orgs[org] = map[string]bool{}
	}
	h.orgs[org][user] = true
}

// SetURLs tells the Hub the base URLs its two handlers are reachable at; it needs them
// to build redirects, signed URLs and Link headers. Start and Serve call it.
func (h *Hub) SetURLs(hubURL, cdnURL string) {
	h.urlMu.Lock()
	defer h.urlMu.Unlock()
	h.hubURL, h.cdnURL = strings.TrimSuffix(hubURL, "/"), strings.TrimSuffix(cdnURL, "/")
}

// URL is the base URL of the Hub API host (what clients take as HF_ENDPOINT).
func (h *Hub) URL() string {
	h.urlMu.RLock()
	defer h.urlMu.RUnlock()
	return h.hubURL
}

// CDNURL is the base URL of the CDN/storage host.
func (h *Hub) CDNURL() string {
	h.urlMu.RLock()
	defer h.urlMu.RUnlock()
	return h.cdnURL
}

// TB is the part of testing.TB that Start needs; it keeps package testing out of
// binaries that embed the fake.
type TB interface {
	Helper()
	Cleanup(func())
	Fatalf(format string, args ...any)
}

// Start serves the Hub on two local httptest servers and closes them when the test
// ends. The CDN listens on 127.0.0.2 when the system allows it, so that it is another
// host and not only another port: Go's http.Client (and others) keep Authorization on a
// redirect to the same host name whatever the port, which would hide a token leak.
func (h *Hub) Start(tb TB) *Hub {
	tb.Helper()
	hub := httptest.NewServer(h.Handler())
	cdn := httptest.NewUnstartedServer(h.CDNHandler())
	if ln, err := net.Listen("tcp", "127.0.0.2:0"); err == nil {
		cdn.Listener.Close()
		cdn.Listener = ln
	}
	cdn.Start()
	h.srvMu.Lock()
	h.servers = append(h.servers, hub, cdn)
	h.srvMu.Unlock()
	h.SetURLs(hub.URL, cdn.URL)
	h.startCAS()
	tb.Cleanup(h.Close)
	return h
}

// Close stops the servers Start started. Connections still open are cut.
func (h *Hub) Close() {
	h.srvMu.Lock()
	servers := h.servers
	h.servers = nil
	h.srvMu.Unlock()
	for _, s := range servers {
		s.CloseClientConnections()
		s.Close()
	}
}

// Serve runs the Hub on two listeners until ctx is done, then shuts down gracefully
// (for cmd/hubfake and other non-test users).
func (h *Hub) Serve(ctx context.Context, hubLn, cdnLn net.Listener) error {
	h.SetURLs("http://"+hubLn.Addr().String(), "http://"+cdnLn.Addr().String())
	hubSrv := &http.Server{Handler: h.Handler(), ReadHeaderTimeout: 30 * time.Second}
	cdnSrv := &http.Server{Handler: h.CDNHandler(), ReadHeaderTimeout: 30 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- hubSrv.Serve(hubLn) }()
	go func() { errc <- cdnSrv.Serve(cdnLn) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc: // a server stopped on its own: stop the other one too
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = errors.Join(err, hubSrv.Shutdown(sctx), cdnSrv.Shutdown(sctx))
	if err != nil {
		return fmt.Errorf("hubtest: serve: %w", err)
	}
	return nil
}

// ExpireURLs makes every signed CDN, upload and completion URL issued so far expired,
// as if its lifetime had passed.
func (h *Hub) ExpireURLs() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.urlEpoch = h.cfg.now()
}

// baseURL is the Hub URL to put into absolute links: the configured one, else the
// request's own host.
func (h *Hub) baseURL(r *http.Request) string {
	if u := h.URL(); u != "" {
		return u
	}
	return "http://" + r.Host
}
