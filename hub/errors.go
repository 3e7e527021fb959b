package hub

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Sentinel errors. Every *HTTPError unwraps to one of them when the Hub said which.
var (
	ErrRepoNotFound     = errors.New("hub: repository not found (or private, or the token may not read it)")
	ErrRevisionNotFound = errors.New("hub: revision not found")
	ErrEntryNotFound    = errors.New("hub: file not found")
	ErrGatedRepo        = errors.New("hub: gated repository: accept its conditions on the Hub first")
	ErrUnauthorized     = errors.New("hub: not authorized (no token, or an invalid one)")
	ErrForbidden        = errors.New("hub: forbidden (the token lacks a permission)")
	ErrOffline          = errors.New("hub: offline mode: no request may be made")
	ErrChecksum         = errors.New("hub: downloaded bytes do not match the file's sha256")
	ErrRange            = errors.New("hub: requested range not satisfiable")
	ErrBadPath          = errors.New("hub: unsafe path in a listing")
)

// HTTPError is a request the Hub (or the CDN) answered with an error status.
type HTTPError struct {
	Status    int
	Code      string // X-Error-Code
	Message   string // X-Error-Message, or the body's error
	RequestID string
	Method    string
	URL       string // with query values redacted
	sentinel  error
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

// Unwrap returns the sentinel the status and error code stand for, if any.
func (e *HTTPError) Unwrap() error { return e.sentinel }

// Temporary reports whether trying again later may succeed.
func (e *HTTPError) Temporary() bool {
	return e.Status == http.StatusRequestTimeout || e.Status == http.StatusTooManyRequests || e.Status >= 500
}

// errorBodyLimit caps how much of an error body is read.
const errorBodyLimit = 64 << 10

// responseError turns an error response into an *HTTPError, reading a bounded part of
// the body.
func responseError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, errorBodyLimit))
	e := &HTTPError{
		Status:    resp.StatusCode,
		Code:      resp.Header.Get("X-Error-Code"),
		Message:   resp.Header.Get("X-Error-Message"),
		RequestID: resp.Header.Get("X-Request-Id"),
		Method:    resp.Request.Method,
		URL:       redact(resp.Request.URL),
	}
	if e.Message == "" {
		var j struct {
			Error any `json:"error"`
		}
		if json.Unmarshal(body, &j) == nil && j.Error != nil {
			e.Message = fmt.Sprint(j.Error)
		} else if s := strings.TrimSpace(string(body)); s != "" && len(s) < 300 && !strings.HasPrefix(s, "<") {
			e.Message = s
		}
	}
	switch {
	case e.Code == "RepoNotFound":
		e.sentinel = ErrRepoNotFound
	case e.Code == "RevisionNotFound":
		e.sentinel = ErrRevisionNotFound
	case e.Code == "EntryNotFound":
		e.sentinel = ErrEntryNotFound
	case e.Code == "GatedRepo":
		e.sentinel = ErrGatedRepo
	case e.Status == http.StatusUnauthorized:
		e.sentinel = ErrUnauthorized
	case e.Status == http.StatusForbidden:
		e.sentinel = ErrForbidden
	case e.Status == http.StatusRequestedRangeNotSatisfiable:
		e.sentinel = ErrRange
	}
	return e
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
