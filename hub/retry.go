package hub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// request is one logical HTTP request, sent once per attempt.
type request struct {
	method string
	url    *url.URL
	header http.Header
	body   func() (io.Reader, error) // a fresh body per attempt; nil for none
	size   int64                     // body length
	// headerTimeout overrides Options.HeaderTimeout for requests the server may
	// legitimately work on for long (a commit, a multipart completion).
	headerTimeout time.Duration
}

func (rq *request) String() string { return rq.method + " " + redact(rq.url) }

// newRequest builds a request; the token is added only for the endpoint's host.
func (c *Client) newRequest(method string, u *url.URL, body []byte) *request {
	rq := &request{method: method, url: u, header: http.Header{}}
	rq.header.Set("User-Agent", c.ua)
	if c.token != "" && c.sameHost(u) {
		rq.header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		rq.body = func() (io.Reader, error) { return strings.NewReader(string(body)), nil }
		rq.size = int64(len(body))
	}
	return rq
}

// TimeoutError is an attempt the server left without an answer for too long: no
// connection, no progress sending the request, no response headers, or no byte of the
// body. It is retried as a network error.
type TimeoutError struct {
	Host  string
	Phase string // "connection", "request progress", "response headers", "response bytes"
	After time.Duration
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("%s: no %s within %s", e.Host, e.Phase, roundDuration(e.After))
}

// Timeout marks it as a net.Error-style timeout.
func (e *TimeoutError) Timeout() bool { return true }

// watchdog cancels an attempt when its current phase lasts longer than its limit.
// Only time spent waiting on the network counts: the phases are armed while a read of
// the reply waits or while the transport sends, never while the caller works.
type watchdog struct {
	cancel context.CancelFunc
	host   string

	mu    sync.Mutex
	gen   int
	timer *time.Timer
	fired *TimeoutError
}

func (w *watchdog) arm(phase string, d time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fired != nil || d <= 0 {
		return
	}
	w.gen++
	if w.timer != nil {
		w.timer.Stop()
	}
	gen := w.gen
	w.timer = time.AfterFunc(d, func() {
		w.mu.Lock()
		if w.gen != gen || w.fired != nil {
			w.mu.Unlock()
			return
		}
		w.fired = &TimeoutError{Host: w.host, Phase: phase, After: d}
		w.mu.Unlock()
		w.cancel()
	})
}

func (w *watchdog) disarm() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gen++
	if w.timer != nil {
		w.timer.Stop()
	}
}

// explain replaces the cancellation the watchdog caused by what timed out.
func (w *watchdog) explain(err error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil && w.fired != nil {
		return w.fired
	}
	return err
}

// sendBody counts the time the transport spends sending between reads of the body.
type sendBody struct {
	r     io.Reader
	w     *watchdog
	stall time.Duration
}

func (b *sendBody) Read(p []byte) (int, error) {
	b.w.disarm() // producing the bytes is the caller's time
	n, err := b.r.Read(p)
	b.w.arm("request progress", b.stall)
	return n, err
}

// replyBody is a response body whose reads are bounded by the stall timeout; Close
// ends the attempt.
type replyBody struct {
	rc     io.ReadCloser
	w      *watchdog
	stall  time.Duration
	cancel context.CancelFunc
}

func (b *replyBody) Read(p []byte) (int, error) {
	b.w.arm("response bytes", b.stall)
	n, err := b.rc.Read(p)
	b.w.disarm()
	if err != nil && err != io.EOF {
		err = b.w.explain(err)
	}
	return n, err
}

func (b *replyBody) Close() error {
	b.w.disarm()
	err := b.rc.Close()
	b.cancel()
	return err
}

// send makes one attempt. The reply's body (any status) is wrapped so that its reads
// are bounded too; the caller closes it.
func (c *Client) send(ctx context.Context, rq *request) (*http.Response, error) {
	if c.offline {
		return nil, fmt.Errorf("%s: %w", rq, ErrOffline)
	}
	actx, cancel := context.WithCancel(ctx)
	w := &watchdog{cancel: cancel, host: rq.url.Host}
	headerTimeout := c.headerTimeout
	if rq.headerTimeout > headerTimeout {
		headerTimeout = rq.headerTimeout
	}
	actx = httptrace.WithClientTrace(actx, &httptrace.ClientTrace{
		GotConn:      func(httptrace.GotConnInfo) { w.arm("request progress", c.stallTimeout) },
		WroteRequest: func(httptrace.WroteRequestInfo) { w.arm("response headers", headerTimeout) },
	})
	var body io.Reader
	if rq.body != nil {
		r, err := rq.body()
		if err != nil {
			cancel()
			return nil, fmt.Errorf("%s: preparing the body: %w", rq, err)
		}
		body = &sendBody{r: r, w: w, stall: c.stallTimeout}
	}
	req, err := http.NewRequestWithContext(actx, rq.method, rq.url.String(), body)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%s: %w", rq, err)
	}
	req.Header = rq.header.Clone()
	if body != nil {
		req.ContentLength = rq.size
		if rq.size == 0 {
			req.Body = http.NoBody
		}
	}
	w.arm("connection", c.connectTimeout)
	resp, err := c.http.Do(req)
	w.disarm()
	if err != nil {
		cancel()
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %w", rq, ctx.Err())
		}
		return nil, fmt.Errorf("%s: %w", rq, w.explain(err))
	}
	resp.Body = &replyBody{rc: resp.Body, w: w, stall: c.stallTimeout, cancel: cancel}
	return resp, nil
}

// check returns resp when its status is one of ok; any other status becomes an
// *HTTPError and the body is closed.
func (c *Client) check(resp *http.Response, ok ...int) (*http.Response, error) {
	for _, s := range ok {
		if resp.StatusCode == s {
			return resp, nil
		}
	}
	defer resp.Body.Close()
	return nil, responseError(resp, c.token)
}

// do sends rq until it succeeds, fails for good or spends the retry budget. With a
// status in ok, consume reads the reply; its failures to read (a dropped or stalled
// body) are retried like failures to send. The body is closed on return.
func (c *Client) do(ctx context.Context, rq *request, ok []int, consume func(*http.Response) error) (*http.Response, error) {
	b := c.budget(rq)
	for {
		resp, err := c.send(ctx, rq)
		if err == nil {
			b.reached = true
			resp, err = c.check(resp, ok...)
			if err == nil {
				if consume != nil {
					err = consume(resp)
				}
				resp.Body.Close()
				if err == nil {
					return resp, nil
				}
				err = fmt.Errorf("%s: reading the reply: %w", rq, err)
			}
		}
		if err := b.failed(ctx, err, false); err != nil {
			return nil, err
		}
	}
}

// budget counts the failed attempts of one logical request. failures starts over
// whenever an attempt delivered bytes, as huggingface_hub's resumed downloads do, so a
// body that keeps dropping midway still gets through while a server that answers
// nothing costs Options.Retries+1 attempts in all.
type budget struct {
	c        *Client
	rq       *request
	start    time.Time
	failures int
	attempts int
	reached  bool // some attempt got an HTTP status
}

func (c *Client) budget(rq *request) *budget { return &budget{c: c, rq: rq, start: time.Now()} }

// failed takes a failed attempt's error. It returns nil after waiting when the request
// should be tried again, else the error to give up with.
func (b *budget) failed(ctx context.Context, err error, progress bool) error {
	b.attempts++
	if ctx.Err() != nil {
		return err
	}
	var he *HTTPError
	if errors.As(err, &he) {
		b.reached = true
	}
	if !retryable(err) {
		return err
	}
	if progress {
		b.failures = 0
	}
	b.failures++
	c := b.c
	if b.failures > c.retries {
		took := roundDuration(time.Since(b.start))
		if !b.reached {
			return fmt.Errorf("%w: %w (gave up after %d attempts in %s)", ErrUnreachable, err, b.attempts, took)
		}
		return fmt.Errorf("%w (gave up after %d attempts in %s)", err, b.attempts, took)
	}
	wait := backoff(c.minWait, c.maxWait, b.failures-1)
	msg := "request failed; retrying"
	what := []any{"error", err.Error()}
	if he != nil {
		what = []any{"status", he.Status}
		if he.Message != "" {
			what = append(what, "message", he.Message)
		}
		if he.wait > 0 {
			wait = min(he.wait, maxRateWait)
		}
		switch {
		case he.Status == http.StatusTooManyRequests:
			msg = "rate limited by the Hub; waiting"
		case he.wait > 0:
			msg = "the server asks to wait; waiting"
		}
	}
	c.logWarn(msg, append([]any{"wait", roundDuration(wait).String(), "request", b.rq.String(),
		"attempt", strconv.Itoa(b.failures) + "/" + strconv.Itoa(c.retries+1)}, what...)...)
	return sleep(ctx, wait)
}

// maxRateWait bounds what a rate-limit header can make a request wait (the Hub's
// windows are 5 minutes).
const maxRateWait = 10 * time.Minute

// retryable reports whether a failed attempt may pass on another: network errors,
// timeouts, a body cut short, and 408, 429 and 5xx but 501. Everything else (a 403
// quota, a 413, a bad certificate) fails at once.
func retryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrOffline) {
		return false
	}
	var he *HTTPError
	if errors.As(err, &he) {
		return he.Temporary()
	}
	var we *writeError
	if errors.As(err, &we) {
		return false
	}
	var te *TimeoutError
	var ne net.Error
	var de *net.DNSError
	var oe *net.OpError
	return errors.As(err, &te) || errors.As(err, &de) || errors.As(err, &oe) || errors.As(err, &ne) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) ||
		strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe") ||
		strings.Contains(err.Error(), "server closed")
}

// backoff waits min·2^attempt, at most max: 1, 2, 4, 8, 8 s by default, as
// huggingface_hub waits.
func backoff(min, max time.Duration, attempt int) time.Duration {
	d := time.Duration(math.Min(float64(min)*math.Pow(2, float64(attempt)), float64(max)))
	if d < min {
		d = min
	}
	return d
}

// rateLimitWait reads how long a 429 or 503 asks to wait: the t= of a RateLimit header
// whose r=0 (IETF draft "RateLimit header fields for HTTP", as the Hub sends it:
// `"api";r=0;t=55`), else Retry-After in seconds or as an HTTP date. A second is added,
// as huggingface_hub adds it, since t is whole seconds rounded down.
func rateLimitWait(h http.Header) (time.Duration, bool) {
	if rl := h.Get("RateLimit"); rl != "" {
		var r, t = -1, -1
		for _, part := range strings.Split(rl, ";") {
			k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				continue
			}
			switch k {
			case "r":
				r = n
			case "t":
				t = n
			}
		}
		if r == 0 && t >= 0 {
			return time.Duration(t)*time.Second + time.Second, true
		}
	}
	if s := strings.TrimSpace(h.Get("Retry-After")); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n >= 0 {
			return time.Duration(n)*time.Second + time.Second, true
		}
		if t, err := http.ParseTime(s); err == nil {
			return max(time.Until(t), 0) + time.Second, true
		}
	}
	return 0, false
}

// roundDuration keeps a duration readable in a log line: tenths of a second from a
// second up, milliseconds below.
func roundDuration(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}

// logWarn logs at Warn with every string value redacted of tokens and presigned URL
// signatures.
func (c *Client) logWarn(msg string, kv ...any) { c.logAt(c.log.Warn, msg, kv...) }

func (c *Client) logDebug(msg string, kv ...any) { c.logAt(c.log.Debug, msg, kv...) }

func (c *Client) logAt(f func(string, ...any), msg string, kv ...any) {
	out := make([]any, len(kv))
	for i, v := range kv {
		switch x := v.(type) {
		case string:
			v = Redact(redactString(x), c.token)
		case error:
			v = Redact(x.Error(), c.token)
		}
		out[i] = v
	}
	f(Redact(msg, c.token), out...)
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
