package hub

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Sentinel errors. Every *HTTPError unwraps to one of them when the Hub said which.
var (
	ErrRepoNotFound     = errors.New("hub: repository not found (or private, or the token may not read it)")
	ErrRevisionNotFound = errors.New("hub: revision not found")
	ErrEntryNotFound    = errors.New("hub: file not found")
	ErrGatedRepo        = errors.New("hub: gated repository: accept its conditions on the Hub first")
	ErrUnauthorized     = errors.New("hub: not authorized (no token, or an invalid one)")
	ErrForbidden        = errors.New("hub: forbidden (the token lacks a permission)")
	// ErrURLExpired is storage refusing a presigned URL whose lifetime has passed (S3's
	// 403 AccessDenied "Request has expired"): ask the Hub for a fresh one. It is also
	// an ErrForbidden.
	ErrURLExpired = errors.New("hub: the presigned storage URL has expired")
	// ErrUnreachable wraps the last error of a request that never got an HTTP answer
	// in any of its attempts (refused, reset, timed out, name not resolved): the Hub
	// (or its CDN) could not be reached, and a caller may fall back to the HF cache.
	ErrUnreachable = errors.New("hub: the server could not be reached")
	ErrOffline     = errors.New("hub: offline mode: no request may be made")
	ErrChecksum    = errors.New("hub: downloaded bytes do not match the file's sha256")
	ErrRange       = errors.New("hub: requested range not satisfiable")
	ErrBadPath     = errors.New("hub: unsafe path in a listing")
)

// HTTPError is a request the Hub (or the CDN) answered with an error status.
type HTTPError struct {
	Status    int
	Code      string // X-Error-Code, or the S3 error code
	Message   string // X-Error-Message, the body's error, or the S3 message; tokens redacted
	RequestID string
	Method    string
	URL       string // with query values redacted
	sentinels []error
	wait      time.Duration // what RateLimit or Retry-After asked for; 0 if nothing
}

func (e *HTTPError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %d", e.Method, e.URL, e.Status)
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.RequestID != "" {
		b.WriteString(" (request id " + e.RequestID + ")")
	}
	return b.String()
}

// Unwrap returns the sentinels the status and error code stand for, if any.
func (e *HTTPError) Unwrap() []error { return e.sentinels }

// Temporary reports whether trying again later may succeed: 408, 429 and 5xx but 501,
// as huggingface_hub retries. Every other status is the Hub's final word.
func (e *HTTPError) Temporary() bool {
	return e.Status == http.StatusRequestTimeout || e.Status == http.StatusTooManyRequests ||
		(e.Status >= 500 && e.Status != http.StatusNotImplemented)
}

// errorBodyLimit caps how much of an error body is read.
const errorBodyLimit = 64 << 10

// responseError turns an error response into an *HTTPError, reading a bounded part of
// the body. The client's token, and anything shaped like a token, is redacted from the
// message: servers echo requests back.
func responseError(resp *http.Response, token string) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, errorBodyLimit))
	e := &HTTPError{
		Status:    resp.StatusCode,
		Code:      resp.Header.Get("X-Error-Code"),
		Message:   resp.Header.Get("X-Error-Message"),
		RequestID: resp.Header.Get("X-Request-Id"),
		Method:    resp.Request.Method,
		URL:       redact(resp.Request.URL),
	}
	if d, ok := rateLimitWait(resp.Header); ok {
		e.wait = d
	}
	if e.Message == "" {
		var j struct {
			Error any `json:"error"`
		}
		var s3 struct {
			Code    string `xml:"Code"`
			Message string `xml:"Message"`
		}
		trimmed := strings.TrimSpace(string(body))
		switch {
		case json.Unmarshal(body, &j) == nil && j.Error != nil:
			e.Message = fmt.Sprint(j.Error)
		case strings.HasPrefix(trimmed, "<") && xml.Unmarshal(body, &s3) == nil && (s3.Code != "" || s3.Message != ""):
			if e.Code == "" {
				e.Code = s3.Code
			}
			e.Message = s3.Message
		case trimmed != "" && len(trimmed) < 300 && !strings.HasPrefix(trimmed, "<"):
			e.Message = trimmed
		}
	}
	e.Message = Redact(e.Message, token)
	switch {
	case e.Code == "RepoNotFound":
		e.sentinels = []error{ErrRepoNotFound}
	case e.Code == "RevisionNotFound":
		e.sentinels = []error{ErrRevisionNotFound}
	case e.Code == "EntryNotFound":
		e.sentinels = []error{ErrEntryNotFound}
	case e.Code == "GatedRepo":
		e.sentinels = []error{ErrGatedRepo}
	case e.Status == http.StatusUnauthorized:
		e.sentinels = []error{ErrUnauthorized}
	case e.Status == http.StatusForbidden && e.Code == "AccessDenied" && strings.Contains(e.Message, "expired"):
		e.sentinels = []error{ErrURLExpired, ErrForbidden}
	case e.Status == http.StatusForbidden:
		e.sentinels = []error{ErrForbidden}
	case e.Status == http.StatusRequestedRangeNotSatisfiable:
		e.sentinels = []error{ErrRange}
	}
	return e
}

// tokenShape matches Hugging Face user access tokens ("hf_" and 34 letters, the shape
// secret scanners such as gitleaks look for) and organization API tokens ("api_org_"),
// leniently: any 20 or more letters and digits.
var tokenShape = regexp.MustCompile(`\b(?:hf|api_org)_[A-Za-z0-9]{20,}`)

// Redact removes token, and anything shaped like a Hugging Face token, from s. The
// CLI applies it to its final error line; every HTTPError message and log line of the
// client already went through it.
func Redact(s, token string) string {
	if token != "" {
		s = strings.ReplaceAll(s, token, "[REDACTED]")
	}
	return tokenShape.ReplaceAllString(s, "[REDACTED]")
}

// keptQuery are query parameters that carry nothing secret.
var keptQuery = map[string]bool{"recursive": true, "expand": true, "cursor": true, "limit": true, "create_pr": true, "blobs": true}

// redact renders a URL with every query value blanked except harmless ones, so that
// presigned signatures never reach a message or a log line.
func redact(u *url.URL) string {
	if u == nil {
		return ""
	}
	c := *u
	c.User = nil
	q := c.Query()
	for k := range q {
		if !keptQuery[k] {
			q.Set(k, "REDACTED")
		}
	}
	c.RawQuery = q.Encode()
	return c.String()
}

// redactString redacts a string that holds a URL, and leaves anything else alone.
func redactString(s string) string {
	if u, err := url.Parse(s); err == nil && u.Scheme != "" && u.RawQuery != "" {
		return redact(u)
	}
	return s
}
