package xet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Token is a CAS access token and the CAS it is valid for, as the Hub's
// xet-write-token endpoint returns them ({"accessToken","exp","casUrl"}, spec auth.md).
type Token struct {
	AccessToken string
	Expiry      time.Time
	CASURL      string
}

// TokenSource fetches a fresh token; the caller's Hub client implements it.
type TokenSource func(ctx context.Context) (Token, error)

// ClientOptions configure a Client. Zero values take the defaults in brackets.
type ClientOptions struct {
	HTTPClient *http.Client // its Transport and Timeout [a transport with a 2 min header timeout]
	Logger     *slog.Logger // every retry and wait, at Info [discard]
	UserAgent  string
	SessionID  string // sent as X-Xet-Session-Id when set, as huggingface.js does
	Retries    int    // per request [5]
	MinBackoff time.Duration
	MaxBackoff time.Duration // [1 s, 8 s], as the Hub client waits
	// MaxRetryAfter bounds a server-requested wait [5 min].
	MaxRetryAfter time.Duration
	// AttemptTimeout bounds one request, body and answer included [10 min: a 64 MiB
	// xorb at 1 Mbit/s].
	AttemptTimeout time.Duration
	// RefreshBefore renews the token this long before it expires [30 s, spec auth.md].
	RefreshBefore time.Duration
	// DedupPrefix is the global-dedup path prefix ["default-merkledb", the spec's; both
	// reference clients send "default"].
	DedupPrefix string
	Now         func() time.Time // [time.Now]
}

// Client talks to one CAS through tokens from a TokenSource. The token goes only to
// the CAS URL it came with, never into a log line or an error.
type Client struct {
	tokens TokenSource
	http   *http.Client
	o      ClientOptions
	log    *slog.Logger

	mu  sync.Mutex
	tok Token
}

// NewClient returns a client.
func NewClient(tokens TokenSource, o ClientOptions) *Client {
	if o.Retries == 0 {
		o.Retries = 5
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 8 * time.Second
	}
	if o.MaxRetryAfter == 0 {
		o.MaxRetryAfter = 5 * time.Minute
	}
	if o.AttemptTimeout == 0 {
		o.AttemptTimeout = 10 * time.Minute
	}
	if o.RefreshBefore == 0 {
		o.RefreshBefore = 30 * time.Second
	}
	if o.DedupPrefix == "" {
		o.DedupPrefix = "default-merkledb"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	hc := &http.Client{}
	if o.HTTPClient != nil {
		hc.Transport, hc.Timeout = o.HTTPClient.Transport, o.HTTPClient.Timeout
	} else {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// The CAS answers a xorb POST after verifying it; the body itself may take long.
		t.ResponseHeaderTimeout = 2 * time.Minute
		hc.Transport = t
	}
	// No redirect is followed: a redirect would carry the token elsewhere.
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Client{tokens: tokens, http: hc, o: o, log: log}
}

// StatusError is a CAS answer that is not a success, with the server's message.
type StatusError struct {
	Op      string // e.g. "POST /v1/xorbs/default/<hash>"
	Status  int
	Message string
}

func (e *StatusError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	return fmt.Sprintf("xet: %s: %d %s", e.Op, e.Status, msg)
}

// token returns a token valid for at least RefreshBefore, fetching one when needed.
func (c *Client) token(ctx context.Context, renew bool) (Token, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !renew && c.tok.AccessToken != "" && c.o.Now().Add(c.o.RefreshBefore).Before(c.tok.Expiry) {
		return c.tok, nil
	}
	t, err := c.tokens(ctx)
	if err != nil {
		return Token{}, fmt.Errorf("xet: getting a CAS token: %w", err)
	}
	u, err := url.Parse(strings.TrimRight(t.CASURL, "/"))
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return Token{}, fmt.Errorf("xet: the CAS URL %q of the token is not an http(s) URL", t.CASURL)
	}
	if t.AccessToken == "" {
		return Token{}, errors.New("xet: the token source returned an empty token")
	}
	t.CASURL = u.String()
	c.tok = t
	c.log.Debug("xet: CAS token", "cas", t.CASURL, "expires", t.Expiry)
	return t, nil
}

type call struct {
	method, path string
	body         []byte
	contentType  string
	ok           []int // statuses that end the call without error
	no429Retry   bool  // dedup queries: a rate-limited query is skipped, not waited on
}

// do runs a call with retries: network errors, 408, 429 and 5xx but 501 are retried
// with exponential backoff (or what Retry-After / RateLimit ask, bounded); 401 renews
// the token once; any other status outside c.ok fails at once with the server's message.
func (c *Client) do(ctx context.Context, k call) (int, []byte, error) {
	renewed := false
	for attempt := 0; ; attempt++ {
		tok, err := c.token(ctx, false)
		if err != nil {
			return 0, nil, err
		}
		op := k.method + " " + k.path
		actx, cancel := context.WithTimeout(ctx, c.o.AttemptTimeout)
		var reqBody io.Reader = http.NoBody // GET and HEAD: no body, and no chunked encoding
		if k.body != nil {
			reqBody = bytes.NewReader(k.body)
		}
		req, err := http.NewRequestWithContext(actx, k.method, tok.CASURL+k.path, reqBody)
		if err != nil {
			cancel()
			return 0, nil, fmt.Errorf("xet: %s: %w", op, err)
		}
		req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
		if k.contentType != "" {
			req.Header.Set("Content-Type", k.contentType)
		}
		if c.o.UserAgent != "" {
			req.Header.Set("User-Agent", c.o.UserAgent)
		}
		if c.o.SessionID != "" {
			req.Header.Set("X-Xet-Session-Id", c.o.SessionID)
		}
		resp, err := c.http.Do(req)
		var status int
		var body []byte
		var retryAfter time.Duration
		if err == nil {
			status = resp.StatusCode
			body, err = io.ReadAll(io.LimitReader(resp.Body, MaxShardBytes+1))
			resp.Body.Close()
			if err != nil {
				status = 0
			}
			if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
				retryAfter = parseRetryAfter(resp.Header)
			}
		}
		cancel()
		if ctx.Err() != nil {
			return 0, nil, fmt.Errorf("xet: %s: %w", op, ctx.Err())
		}
		if err == nil {
			for _, s := range k.ok {
				if status == s {
					return status, body, nil
				}
			}
			if status == http.StatusUnauthorized && !renewed {
				renewed = true
				if _, err := c.token(ctx, true); err != nil {
					return 0, nil, err
				}
				attempt--
				continue
			}
		}
		retryable := err != nil || status == http.StatusRequestTimeout ||
			(status == http.StatusTooManyRequests && !k.no429Retry) ||
			(status >= 500 && status != http.StatusNotImplemented)
		if !retryable || attempt >= c.o.Retries {
			if err != nil {
				return 0, nil, fmt.Errorf("xet: %s: %w", op, err)
			}
			return status, body, &StatusError{Op: op, Status: status, Message: serverMessage(body)}
		}
		wait := min(c.o.MinBackoff<<attempt, c.o.MaxBackoff)
		if retryAfter > 0 {
			wait = min(retryAfter, c.o.MaxRetryAfter)
		}
		reason := fmt.Sprint(status)
		if err != nil {
			reason = err.Error()
		}
		c.log.Info("xet: retrying", "op", op, "reason", reason, "attempt", attempt+1, "wait", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, nil, fmt.Errorf("xet: %s: %w", op, ctx.Err())
		case <-t.C:
		}
	}
}

// parseRetryAfter reads Retry-After in seconds, or the t= of a RateLimit header whose
// r=0 (the Hub's rate-limit headers), as the Hub client does.
func parseRetryAfter(h http.Header) time.Duration {
	if s := strings.TrimSpace(h.Get("Retry-After")); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n >= 0 {
			return time.Duration(n)*time.Second + 100*time.Millisecond
		}
	}
	if rl := h.Get("RateLimit"); strings.Contains(rl, "r=0") {
		for _, part := range strings.Split(rl, ";") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(part), "t="); ok {
				if n, err := strconv.Atoi(v); err == nil && n >= 0 {
					return time.Duration(n)*time.Second + 100*time.Millisecond
				}
			}
		}
	}
	return 0
}

// serverMessage is the error text of a CAS answer: a JSON error field or the body's
// first line, bounded.
func serverMessage(body []byte) string {
	var j struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &j) == nil {
		if j.Error != "" {
			return j.Error
		}
		if j.Message != "" {
			return j.Message
		}
	}
	s := strings.TrimSpace(string(body))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// UploadXorb posts a serialized xorb (POST /v1/xorbs/default/{hash}). inserted is false
// when the CAS already had it.
func (c *Client) UploadXorb(ctx context.Context, hash Hash, data []byte) (inserted bool, err error) {
	_, body, err := c.do(ctx, call{method: http.MethodPost, path: "/v1/xorbs/default/" + hash.String(),
		body: data, contentType: "application/octet-stream", ok: []int{http.StatusOK}})
	if err != nil {
		return false, err
	}
	var r struct {
		WasInserted bool `json:"was_inserted"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return false, fmt.Errorf("xet: POST /v1/xorbs/default/%s: answer is not JSON: %w", hash, err)
	}
	return r.WasInserted, nil
}

// XorbExists asks whether the CAS holds a xorb (HEAD /v1/xorbs/default/{hash}).
func (c *Client) XorbExists(ctx context.Context, hash Hash) (bool, error) {
	return c.exists(ctx, "/v1/xorbs/default/"+hash.String())
}

// FileExists asks whether the CAS can reconstruct a file (HEAD /v1/files/{file hash}).
func (c *Client) FileExists(ctx context.Context, hash Hash) (bool, error) {
	return c.exists(ctx, "/v1/files/"+hash.String())
}

func (c *Client) exists(ctx context.Context, path string) (bool, error) {
	status, _, err := c.do(ctx, call{method: http.MethodHead, path: path, ok: []int{http.StatusOK, http.StatusNotFound}})
	if err != nil {
		return false, err
	}
	return status == http.StatusOK, nil
}

// UploadShard posts a shard without footer (POST /v1/shards). existed is true when the
// CAS answers that it had it ({"result":0}).
func (c *Client) UploadShard(ctx context.Context, data []byte) (existed bool, err error) {
	_, body, err := c.do(ctx, call{method: http.MethodPost, path: "/v1/shards", body: data,
		contentType: "application/octet-stream", ok: []int{http.StatusOK}})
	if err != nil {
		return false, err
	}
	var r struct {
		Result int `json:"result"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return false, fmt.Errorf("xet: POST /v1/shards: answer is not JSON: %w", err)
	}
	return r.Result == 0, nil
}

// QueryChunk asks the global dedup index about a chunk
// (GET /v1/chunks/{prefix}/{hash}). It returns nil, nil when the CAS does not know it
// (404) or declines to answer now (429); otherwise the answer, a shard with a footer.
func (c *Client) QueryChunk(ctx context.Context, hash Hash) (*Shard, error) {
	path := "/v1/chunks/" + c.o.DedupPrefix + "/" + hash.String()
	status, body, err := c.do(ctx, call{method: http.MethodGet, path: path,
		ok: []int{http.StatusOK, http.StatusNotFound}, no429Retry: true})
	var se *StatusError
	if errors.As(err, &se) && se.Status == http.StatusTooManyRequests {
		c.log.Info("xet: global dedup query rate-limited; skipped", "chunk", hash.String())
		return nil, nil
	}
	if err != nil || status == http.StatusNotFound {
		return nil, err
	}
	s, err := ParseShard(body)
	if err != nil {
		return nil, fmt.Errorf("xet: GET %s: %w", path, err)
	}
	return s, nil
}
