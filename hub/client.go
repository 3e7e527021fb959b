// Package hub is a client of the Hugging Face Hub's HTTP API: listings, file metadata,
// ranged downloads and a remote file as an io.ReaderAt, publishing (preupload, LFS
// batch, presigned PUTs, commits) and whoami.
//
// Retries happen at one level, here. Network errors, timeouts, 408, 429 and 5xx but
// 501 are tried again with exponential backoff (1, 2, 4, 8, 8 s), or as long as a
// RateLimit (r=0;t=N) or Retry-After header asks, plus a second; every other status
// fails at once with the Hub's message (a 403 storage quota, a 413). A request costs
// at most Options.Retries+1 attempts; a download or range read whose body drops
// midway resumes from where it stopped, and its budget starts over whenever bytes
// arrive. Every wait is a Warn line through Options.Logger saying what failed, which
// request, and how long until the next try.
//
// Every wait on the network is bounded: connecting (ConnectTimeout), sending,
// response headers (HeaderTimeout) and every read of a body (StallTimeout, no byte
// for that long). With the defaults a Hub that accepts connections and never answers
// fails after about 83 s, a refused connection after about 23 s, both with an error
// that names the host and wraps ErrUnreachable, so that a caller can fall back to the
// HF cache.
//
// The token goes to the endpoint's host only, never to the CDN or a presigned URL.
// It is redacted, with anything shaped like a Hugging Face token, from every error
// message and log line (Redact).
package hub

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Options configure a Client.
type Options struct {
	Endpoint   string       // "" → EndpointFromEnv()
	Token      string       // "" → anonymous
	UserAgent  string       // product token, e.g. "hfmerge/1.0"; "go/<version>" is appended
	HTTPClient *http.Client // its Transport is used; nil → defaults. Its Timeout is ignored: see below
	Logger     *slog.Logger // retry waits at Warn, details at Debug; nil → nothing
	Retries    int          // retries per request after the first attempt; 0 → 5, negative → none
	MinBackoff time.Duration
	MaxBackoff time.Duration // 0 → 1 s and 8 s, as huggingface_hub waits
	Offline    bool          // every request fails with ErrOffline

	// Time limits of one attempt, each retried as a network error. 0 → the default.
	ConnectTimeout time.Duration // DNS, TCP and TLS: 10 s
	HeaderTimeout  time.Duration // from the request sent to the response headers: 10 s (commits: 90 s)
	StallTimeout   time.Duration // no byte sent or received for this long: 10 s
}

// Default time limits: huggingface_hub waits 10 s for a HEAD and between bytes of a
// download (HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT).
const (
	DefaultConnectTimeout = 10 * time.Second
	DefaultHeaderTimeout  = 10 * time.Second
	DefaultStallTimeout   = 10 * time.Second
	// slowReplyTimeout is the header timeout of requests the Hub works on before it
	// answers: a commit (the Hub gives it 60 s and completes it even after that), a
	// multipart completion.
	slowReplyTimeout = 90 * time.Second
)

// Client talks to one Hub endpoint.
type Client struct {
	endpoint *url.URL
	token    string
	ua       string
	http     *http.Client
	log      *slog.Logger
	offline  bool
	retries  int
	minWait  time.Duration
	maxWait  time.Duration

	connectTimeout, headerTimeout, stallTimeout time.Duration
}

// New returns a client.
func New(o Options) (*Client, error) {
	if o.Endpoint == "" {
		o.Endpoint = EndpointFromEnv()
	}
	ep, err := url.Parse(strings.TrimRight(o.Endpoint, "/"))
	if err != nil || (ep.Scheme != "http" && ep.Scheme != "https") || ep.Host == "" {
		return nil, fmt.Errorf("hub: endpoint %q is not an http(s) URL", o.Endpoint)
	}
	switch {
	case o.Retries == 0:
		o.Retries = 5
	case o.Retries < 0:
		o.Retries = 0
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.MinBackoff, time.Second)
	def(&o.MaxBackoff, 8*time.Second)
	def(&o.ConnectTimeout, DefaultConnectTimeout)
	def(&o.HeaderTimeout, DefaultHeaderTimeout)
	def(&o.StallTimeout, DefaultStallTimeout)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	base := &http.Client{Transport: defaultTransport(o.ConnectTimeout)}
	if o.HTTPClient != nil && o.HTTPClient.Transport != nil {
		base.Transport = o.HTTPClient.Transport
	}
	// Redirects are followed by hand: Go's client keeps Authorization on a redirect to a
	// subdomain, and the CDN must never see the token.
	base.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	ua := "go/" + strings.TrimPrefix(runtime.Version(), "go")
	if o.UserAgent != "" {
		ua = o.UserAgent + "; " + ua
	}
	return &Client{endpoint: ep, token: strings.TrimSpace(o.Token), ua: ua, http: base, log: o.Logger,
		offline: o.Offline, retries: o.Retries, minWait: o.MinBackoff, maxWait: o.MaxBackoff,
		connectTimeout: o.ConnectTimeout, headerTimeout: o.HeaderTimeout, stallTimeout: o.StallTimeout}, nil
}

func defaultTransport(connect time.Duration) http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 16
	t.DialContext = (&net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = connect
	return t
}

// EndpointFromEnv is HF_ENDPOINT without a trailing slash, or https://huggingface.co.
func EndpointFromEnv() string {
	if e := os.Getenv("HF_ENDPOINT"); e != "" {
		return strings.TrimRight(e, "/")
	}
	return "https://huggingface.co"
}

// OfflineFromEnv reports HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to 1, ON, YES or
// TRUE.
func OfflineFromEnv() bool {
	for _, v := range []string{"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"} {
		switch strings.ToUpper(strings.TrimSpace(os.Getenv(v))) {
		case "1", "ON", "YES", "TRUE":
			return true
		}
	}
	return false
}

// TokenFromEnv finds a token as huggingface_hub does: HF_TOKEN, HUGGING_FACE_HUB_TOKEN,
// then the file HF_TOKEN_PATH (default $HF_HOME/token). source says where it came from.
func TokenFromEnv() (token, source string) {
	clean := func(s string) string { return strings.TrimSpace(strings.NewReplacer("\r", "", "\n", "").Replace(s)) }
	for _, v := range []string{"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"} {
		if t := clean(os.Getenv(v)); t != "" {
			return t, v
		}
	}
	path := os.Getenv("HF_TOKEN_PATH")
	if path == "" {
		home := os.Getenv("HF_HOME")
		if home == "" {
			if x := os.Getenv("XDG_CACHE_HOME"); x != "" {
				home = filepath.Join(x, "huggingface")
			} else if h, err := os.UserHomeDir(); err == nil {
				home = filepath.Join(h, ".cache", "huggingface")
			}
		}
		path = filepath.Join(home, "token")
	}
	if b, err := os.ReadFile(path); err == nil {
		if t := clean(string(b)); t != "" {
			return t, path
		}
	}
	return "", ""
}

// apiURL builds a URL on the endpoint from an already-escaped path.
func (c *Client) apiURL(escapedPath string, query url.Values) *url.URL {
	u := *c.endpoint
	u.RawPath = c.endpoint.EscapedPath() + escapedPath
	u.Path, _ = url.PathUnescape(u.RawPath)
	u.RawQuery = query.Encode()
	return &u
}

// sameHost reports whether u is on the endpoint's host, the only one that gets the token.
func (c *Client) sameHost(u *url.URL) bool {
	return strings.EqualFold(u.Scheme, c.endpoint.Scheme) && strings.EqualFold(u.Host, c.endpoint.Host)
}

// Anonymous returns a client of the same endpoint and settings without the token, for a
// lookup the user may not have meant as one (a path that could be a repo id).
func (c *Client) Anonymous() *Client {
	a := *c
	a.token = ""
	return &a
}
