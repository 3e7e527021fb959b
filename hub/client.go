// Package hub is a client of the Hugging Face Hub's HTTP API: listings, file metadata,
// ranged downloads and a remote file as an io.ReaderAt, built on
// hashicorp/go-retryablehttp. Requests that fail in a way that may pass (network
// errors, 408, 429, 5xx) are retried with exponential backoff that honours Retry-After
// and the context. The token goes to the endpoint's host only, never to the CDN or a
// presigned URL, and never into a log line or an error message.
package hub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-retryablehttp"
)

// Options configure a Client.
type Options struct {
	Endpoint   string       // "" → EndpointFromEnv()
	Token      string       // "" → anonymous
	UserAgent  string       // product token, e.g. "hfmerge/1.0"; "go/<version>" is appended
	HTTPClient *http.Client // its Transport and Timeout are used; nil → defaults
	Logger     *slog.Logger // retries at Debug; nil → nothing
	Retries    int          // retries per request; 0 → 5
	MinBackoff time.Duration
	MaxBackoff time.Duration // 0 → 1 s and 8 s, as huggingface_hub waits
	Offline    bool          // every request fails with ErrOffline
}

// Client talks to one Hub endpoint.
type Client struct {
	endpoint *url.URL
	token    string
	ua       string
	rc       *retryablehttp.Client
	log      *slog.Logger
	offline  bool
	retries  int
	minWait  time.Duration
	maxWait  time.Duration
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
	if o.Retries == 0 {
		o.Retries = 5
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 8 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	base := &http.Client{Transport: defaultTransport()}
	if o.HTTPClient != nil {
		base.Transport = o.HTTPClient.Transport
		base.Timeout = o.HTTPClient.Timeout
	}
	// Redirects are followed by hand: Go's client keeps Authorization on a redirect to a
	// subdomain, and the CDN must never see the token.
	base.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	ua := "go/" + strings.TrimPrefix(runtime.Version(), "go")
	if o.UserAgent != "" {
		ua = o.UserAgent + "; " + ua
	}
	c := &Client{endpoint: ep, token: strings.TrimSpace(o.Token), ua: ua, log: o.Logger, offline: o.Offline,
		retries: o.Retries, minWait: o.MinBackoff, maxWait: o.MaxBackoff}
	c.rc = &retryablehttp.Client{
		HTTPClient:   base,
		Logger:       logAdapter{o.Logger},
		RetryWaitMin: o.MinBackoff,
		RetryWaitMax: o.MaxBackoff,
		RetryMax:     o.Retries,
		CheckRetry:   retryPolicy,
		Backoff:      backoff,
		ErrorHandler: retryablehttp.PassthroughErrorHandler,
	}
	return c, nil
}

func defaultTransport() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 16
	t.ResponseHeaderTimeout = 60 * time.Second
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

// retryPolicy retries network errors, 408, 429 and 5xx (not 501), and stops when the
// context is done.
func retryPolicy(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if err == nil && resp.StatusCode == http.StatusRequestTimeout {
		return true, nil
	}
	return retryablehttp.DefaultRetryPolicy(ctx, resp, err)
}

// backoff waits min·2^attempt up to max, or what Retry-After (or a RateLimit header
// with r=0) asks for on 429 and 503, plus a second as huggingface_hub adds.
func backoff(min, max time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		if d, ok := retryAfter(resp.Header); ok {
			return d
		}
	}
	d := time.Duration(math.Min(float64(min)*math.Pow(2, float64(attempt)), float64(max)))
	if d < min {
		d = min
	}
	return d
}

// retryAfter reads Retry-After in seconds, or the t= of a RateLimit header whose r=0.
func retryAfter(h http.Header) (time.Duration, bool) {
	if s := h.Get("Retry-After"); s != "" {
		if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && n >= 0 {
			return time.Duration(n)*time.Second + time.Second/10, true
		}
	}
	if rl := h.Get("RateLimit"); rl != "" && strings.Contains(rl, "r=0") {
		for _, part := range strings.Split(rl, ";") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(part), "t="); ok {
				if n, err := strconv.Atoi(v); err == nil && n >= 0 {
					return time.Duration(n)*time.Second + time.Second/10, true
				}
			}
		}
	}
	return 0, false
}

// logAdapter sends retryablehttp's messages to slog at Debug, with URLs redacted. The
// default logger would print to stderr, into a progress bar.
type logAdapter struct{ l *slog.Logger }

func (a logAdapter) clean(kv []any) []any {
	out := make([]any, len(kv))
	for i, v := range kv {
		if s, ok := v.(string); ok {
			v = redactString(s)
		}
		out[i] = v
	}
	return out
}

func (a logAdapter) Error(msg string, kv ...any) { a.l.Debug(msg, a.clean(kv)...) }
func (a logAdapter) Info(msg string, kv ...any)  { a.l.Debug(msg, a.clean(kv)...) }
func (a logAdapter) Debug(msg string, kv ...any) { a.l.Debug(msg, a.clean(kv)...) }
func (a logAdapter) Warn(msg string, kv ...any)  { a.l.Debug(msg, a.clean(kv)...) }

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

// request builds a request; the token is added only for the endpoint's host.
func (c *Client) request(ctx context.Context, method string, u *url.URL, body any) (*retryablehttp.Request, error) {
	if c.offline {
		return nil, fmt.Errorf("%s %s: %w", method, redact(u), ErrOffline)
	}
	req, err := retryablehttp.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", c.ua)
	if c.token != "" && c.sameHost(u) {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// do sends a request with retries and returns the response when its status is one of
// ok; any other status becomes an *HTTPError.
func (c *Client) do(req *retryablehttp.Request, ok ...int) (*http.Response, error) {
	resp, err := c.rc.Do(req)
	if err != nil {
		if resp != nil {
			resp.Body.Close()
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("%s %s: %w", req.Method, redact(req.URL), err)
	}
	for _, s := range ok {
		if resp.StatusCode == s {
			return resp, nil
		}
	}
	defer resp.Body.Close()
	return nil, responseError(resp)
}

// temporary reports whether an error from reading a body may pass on a retry.
func temporary(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var he *HTTPError
	if errors.As(err, &he) {
		return he.Temporary()
	}
	var ne net.Error
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.As(err, &ne) ||
		strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe")
}

// sleep waits d unless ctx ends first.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
