package hubtest

import (
	"crypto/rand"
	"slices"
	"sync"
	"time"
)

// xetConfig holds the Xet options; nil in config means the Hub has no Xet storage.
type xetConfig struct {
	tokenLifetime time.Duration
	zeroKey       bool
	keyExpiry     time.Duration
	narrowDedup   bool
}

func (c *config) xetCfg() *xetConfig {
	if c.xet == nil {
		c.xet = &xetConfig{tokenLifetime: time.Hour, keyExpiry: 7 * 24 * time.Hour}
	}
	return c.xet
}

// WithXet gives the Hub Xet storage: every repo reports xetEnabled, the token routes
// issue CAS tokens, the LFS batch answers "xet" to clients that offer it, and a CAS
// host (CASHandler, CASURL) takes xorbs and shards and serves reconstructions. Without
// it the Hub behaves as a Hub whose repos have no Xet storage.
func WithXet() Option { return func(c *config) { c.xetCfg() } }

// WithXetTokenLifetime sets how long CAS tokens are valid (default 1 h); it implies
// WithXet. huggingface.js refreshes a token that expires within 60 s, so a lifetime
// under a minute makes every CAS call fetch a new one.
func WithXetTokenLifetime(d time.Duration) Option {
	return func(c *config) { c.xetCfg().tokenLifetime = d }
}

// WithXetZeroDedupKey makes global-dedup answers carry the all-zero HMAC key, so their
// chunk hashes are the raw ones (the default is a random non-zero key); it implies
// WithXet.
func WithXetZeroDedupKey() Option { return func(c *config) { c.xetCfg().zeroKey = true } }

// WithXetDedupKeyExpiry sets the key expiry written into global-dedup answers,
// relative to the time of the answer (default 7 days; zero or negative gives answers
// that are already expired); it implies WithXet.
func WithXetDedupKeyExpiry(d time.Duration) Option {
	return func(c *config) { c.xetCfg().keyExpiry = d }
}

// WithXetNarrowDedup makes global-dedup answers list only the xorbs that hold the
// queried chunk, not the others uploaded in the same shard (the default, the "possibly
// more" of the spec), so that a client finds a run of shared bytes only by querying a
// chunk in it; it implies WithXet.
func WithXetNarrowDedup() Option { return func(c *config) { c.xetCfg().narrowDedup = true } }

// XetStats are the counters of the Xet CAS.
type XetStats struct {
	TokensRead, TokensWrite int   // CAS tokens issued by the Hub (token routes and LFS batch)
	XorbBytes               int64 // request body bytes received by xorb uploads, accepted or not
	XorbsAccepted           int   // new xorbs stored
	XorbsExisting           int   // uploads of a xorb already stored (was_inserted false)
	XorbsRejected           int
	ShardsAccepted          int
	ShardsRejected          int
	FilesRegistered         int   // files made known by accepted shards (new ones)
	DedupQueries            int   // global dedup queries
	DedupHits               int   // of which answered with a shard
	Reconstructions         int   // reconstruction requests (v1 and v2)
	TransferBytes           int64 // xorb bytes served by the signed transfer URLs
	AuthRejected            int   // CAS requests refused for a missing, unknown, expired or read-only token
	HubTokenRejected        int   // CAS requests that carried a Hub token instead of a CAS token
}

// XetCheck is one comparison the CAS made between a value a client sent and the value
// it recomputed from the bytes: What is "xorb" (URL hash against the chunks), "chunk"
// (a shard's CAS info against the stored xorb), "range" (a term's verification hash),
// "file" (a file hash against its reconstruction) or "sha256" (the metadata
// extension against the reassembled bytes). Object names the xorb or file.
type XetCheck struct {
	What, Object      string
	Claimed, Computed string
}

// XetFile describes a file the CAS stores.
type XetFile struct {
	Hash   string // file hash, string form
	SHA256 string
	Size   int64
	Terms  []XetTerm
	Chunks []string // the hashes of its chunks in order, as the CAS recomputed them
}

// XetTerm is one term of a file reconstruction.
type XetTerm struct {
	Xorb       string
	Start, End int // chunk range, end exclusive
	Bytes      int64
}

// xetToken is a CAS token the Hub issued.
// It is scoped to its repo (which files it may read); the ref is not enforced.
type xetToken struct {
	repo  repoKey
	write bool
	exp   time.Time
}

// xetXorb is a stored xorb.
type xetXorb struct {
	hash   xetHash
	data   []byte // as uploaded
	chunks []xetChunk
	raw    uint64
	group  []xetHash // the xorbs registered with it by one shard, itself included
}

type xetFile struct {
	hash   xetHash
	sha256 string
	size   int64
	terms  []shardTerm
	repos  map[repoKey]bool // repos whose write tokens registered it
}

// xetState is the CAS: tokens, xorbs, files, the dedup index. Its lock is taken
// after h.mu when both are needed, never before.
type xetState struct {
	mu      sync.Mutex
	hmacKey xetHash
	tokens  map[string]xetToken
	xorbs   map[xetHash]*xetXorb
	files   map[xetHash]*xetFile
	bySHA   map[string]xetHash    // sha256 -> file hash
	dedup   map[xetHash][]xetHash // eligible chunk -> xorbs holding it
	shards  map[string]bool       // sha256 of accepted shard bodies
	checks  []XetCheck
	stats   XetStats
	casURL  string
	urlLock sync.RWMutex
}

func newXetState(cfg *xetConfig) *xetState {
	x := &xetState{
		tokens: map[string]xetToken{},
		xorbs:  map[xetHash]*xetXorb{},
		files:  map[xetHash]*xetFile{},
		bySHA:  map[string]xetHash{},
		dedup:  map[xetHash][]xetHash{},
		shards: map[string]bool{},
	}
	if !cfg.zeroKey {
		for x.hmacKey.isZero() {
			rand.Read(x.hmacKey[:])
		}
	}
	return x
}

func (x *xetState) count(f func(s *XetStats)) {
	x.mu.Lock()
	defer x.mu.Unlock()
	f(&x.stats)
}

// XetStats returns a copy of the CAS counters (zero when the Hub has no Xet).
func (h *Hub) XetStats() XetStats {
	if h.xet == nil {
		return XetStats{}
	}
	h.xet.mu.Lock()
	defer h.xet.mu.Unlock()
	return h.xet.stats
}

// XetChecks returns every hash comparison the CAS made, in order.
func (h *Hub) XetChecks() []XetCheck {
	if h.xet == nil {
		return nil
	}
	h.xet.mu.Lock()
	defer h.xet.mu.Unlock()
	return slices.Clone(h.xet.checks)
}

// XetFileBySHA256 describes the file the CAS stores with that sha256.
func (h *Hub) XetFileBySHA256(sha string) (XetFile, bool) {
	if h.xet == nil {
		return XetFile{}, false
	}
	x := h.xet
	x.mu.Lock()
	defer x.mu.Unlock()
	fh, ok := x.bySHA[sha]
	if !ok {
		return XetFile{}, false
	}
	f := x.files[fh]
	out := XetFile{Hash: f.hash.String(), SHA256: f.sha256, Size: f.size}
	for _, t := range f.terms {
		out.Terms = append(out.Terms, XetTerm{Xorb: t.xorb.String(), Start: int(t.start), End: int(t.end), Bytes: int64(t.raw)})
		for _, c := range x.xorbs[t.xorb].chunks[t.start:t.end] {
			out.Chunks = append(out.Chunks, c.hash.String())
		}
	}
	return out, true
}

// XetXorbs returns the hashes of the stored xorbs, sorted.
func (h *Hub) XetXorbs() []string {
	if h.xet == nil {
		return nil
	}
	h.xet.mu.Lock()
	defer h.xet.mu.Unlock()
	var out []string
	for k := range h.xet.xorbs {
		out = append(out, k.String())
	}
	slices.Sort(out)
	return out
}

// SetCASURL tells the Hub where its CAS host is reachable (Start does it).
func (h *Hub) SetCASURL(u string) {
	if h.xet == nil {
		return
	}
	h.xet.urlLock.Lock()
	defer h.xet.urlLock.Unlock()
	h.xet.casURL = trimSlash(u)
}

// CASURL is the base URL of the Xet CAS host, "" without Xet.
func (h *Hub) CASURL() string {
	if h.xet == nil {
		return ""
	}
	h.xet.urlLock.RLock()
	defer h.xet.urlLock.RUnlock()
	return h.xet.casURL
}

func trimSlash(u string) string {
	for len(u) > 0 && u[len(u)-1] == '/' {
		u = u[:len(u)-1]
	}
	return u
}
