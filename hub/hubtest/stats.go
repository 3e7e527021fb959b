package hubtest

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Request is one entry of the request log.
type Request struct {
	Seq      int    // 0-based, in arrival order
	Host     string // HostHub or HostCDN
	Method   string
	Path     string // URL path as sent (escaped)
	Query    string
	Range    string // the Range header, if any
	Route    Route
	Auth     bool // carried an Authorization header
	Start    time.Time
	End      time.Time // zero while the request is in flight
	Status   int       // 0 if the connection was cut before a status was sent
	BytesIn  int64     // request body bytes the fake read
	BytesOut int64     // response body bytes written
	Fault    bool      // a scripted fault was applied
}

// Stats are counters over everything served since New or ResetStats.
type Stats struct {
	Requests        map[Route]int    // requests per route
	BytesServed     map[string]int64 // response body bytes per host (HostHub, HostCDN)
	FileBytes       map[string]int64 // response body bytes per file, keyed by sha256 (LFS) or git sha1 (regular)
	CDNAuthRejected int              // CDN requests refused because they carried Authorization
	UploadedBytes   int64            // bytes received by upload and part PUTs
	// BytesDown and BytesUp are the bytes that crossed the user's link (WithLink says
	// which bodies do): CDN and resolve reply bodies; upload, part and commit request
	// bodies. They are counted with or without a modelled rate.
	BytesDown, BytesUp int64
	ObjectUploads      map[string]int64 // bytes received by upload and part PUTs, per sha256 oid
	Commits            map[string]int   // commits made through the API, per "repo@ref"
	FaultsFired        int
}

// recorder holds Stats and the request log under its own lock, so counting never
// waits for the repo lock.
type recorder struct {
	mu    sync.Mutex
	stats Stats
	log   []Request
}

func (rc *recorder) init() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.stats = Stats{
		Requests:      map[Route]int{},
		BytesServed:   map[string]int64{},
		FileBytes:     map[string]int64{},
		ObjectUploads: map[string]int64{},
		Commits:       map[string]int{},
	}
	rc.log = nil
}

func (rc *recorder) begin(host string, r *http.Request, route Route, now time.Time) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.stats.Requests[route]++
	rc.log = append(rc.log, Request{
		Seq: len(rc.log), Host: host, Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.RawQuery,
		Range: r.Header.Get("Range"), Route: route, Auth: r.Header.Get("Authorization") != "", Start: now,
	})
	return len(rc.log) - 1
}

func (rc *recorder) end(i int, status int, in, out int64, fault bool, now time.Time) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if i >= len(rc.log) { // ResetStats ran meanwhile
		return
	}
	e := &rc.log[i]
	e.End, e.Status, e.BytesIn, e.BytesOut, e.Fault = now, status, in, out, fault
}

func (rc *recorder) add(f func(s *Stats)) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	f(&rc.stats)
}

// Stats returns a copy of the counters.
func (h *Hub) Stats() Stats {
	rc := &h.stats
	rc.mu.Lock()
	defer rc.mu.Unlock()
	s := rc.stats
	s.Requests = maps.Clone(s.Requests)
	s.BytesServed = maps.Clone(s.BytesServed)
	s.FileBytes = maps.Clone(s.FileBytes)
	s.ObjectUploads = maps.Clone(s.ObjectUploads)
	s.Commits = maps.Clone(s.Commits)
	return s
}

// Requests returns a copy of the request log, in arrival order.
func (h *Hub) Requests() []Request {
	h.stats.mu.Lock()
	defer h.stats.mu.Unlock()
	return slices.Clone(h.stats.log)
}

// RequestsFor returns the logged requests of one route.
func (h *Hub) RequestsFor(route Route) []Request {
	var out []Request
	for _, r := range h.Requests() {
		if r.Route == route {
			out = append(out, r)
		}
	}
	return out
}

// WaitIdle waits until no request is being handled. The log entry of a request
// (End, Status, byte counts) is completed when its handler returns, which can be just
// after the client has read the reply; call WaitIdle before asserting on it.
func (h *Hub) WaitIdle(ctx context.Context) error {
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for h.inflight.Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("hubtest: wait idle: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// ResetStats zeroes the counters (the Xet ones too) and empties the request log and
// the Xet check log (repos and stored objects are kept).
func (h *Hub) ResetStats() {
	h.stats.init()
	h.resetXetStats()
}
