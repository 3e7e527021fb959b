package hubtest

import (
	"net/http"
	"path"
	"slices"
	"sync"
	"time"
)

// Fault scripts a failure. A request matches when Route, Method and Path (each
// optional) all match; the first Skip matching requests pass, the next Times ones
// get the fault. Faults are tried in the order they were added; one request gets at
// most one fault.
type Fault struct {
	Route  Route  // a named route; "" matches every route
	Method string // "" matches every method
	Path   string // path.Match pattern on the escaped URL path; "" matches every path

	Skip  int // matching requests let through before the fault starts
	Times int // requests to fault: 0 means 1, negative means every matching request

	// Status answers the request with this status instead of handling it (a JSON error
	// on the Hub host, an S3-style XML error on the CDN host). With ApplyThenLose it is
	// the status of the reply that replaces the real one.
	Status int
	// Message replaces the scripted fault's error message of a Status fault (for a 403
	// "storage quota exceeded", or a message that echoes the token).
	Message string
	// RetryAfter adds Retry-After (whole seconds) and a RateLimit header with r=0, as
	// the Hub does on 429.
	RetryAfter time.Duration
	// RateLimit adds only the RateLimit header `"api";r=0;t=<whole seconds>` (and
	// RateLimit-Policy), without Retry-After.
	RateLimit time.Duration
	// Delay waits before the request is handled (or the fault answered).
	Delay time.Duration
	// Drop cuts the connection without a complete reply. With DropAfterBytes = 0 it is
	// closed at once, before any reply. Otherwise, on GET and HEAD the real reply starts
	// and the connection is closed after DropAfterBytes bytes of its body; on other
	// methods the fake reads DropAfterBytes bytes of the request body, then closes the
	// connection without handling the request.
	Drop           bool
	DropAfterBytes int64
	// SlowBody pauses this long before every SlowChunk bytes of the response body
	// (SlowChunk defaults to 4 KiB).
	SlowBody  time.Duration
	SlowChunk int
	// Hang holds the request without a reply until the client gives up (or the Hub
	// closes): a server that accepts connections and never answers.
	Hang bool
	// Stall sends the reply's headers and its first StallAfterBytes body bytes, then
	// nothing more until the client gives up: headers, then a stalled body.
	Stall           bool
	StallAfterBytes int64
	// ExpiredURL answers as storage does for an expired signed URL: 403 with an
	// S3-style AccessDenied "Request has expired" body.
	ExpiredURL bool
	// ApplyThenLose handles the request completely (a commit is made, a part is
	// stored) and then loses the reply: the client gets Status (e.g. 504) if set, else
	// the connection is closed with no reply at all.
	ApplyThenLose bool
}

// FaultHandle reports on a scripted fault.
type FaultHandle struct {
	set   *faultSet
	fault Fault
	seen  int // matching requests so far
	fired int
}

// Fired says how many requests the fault was applied to.
func (fh *FaultHandle) Fired() int {
	fh.set.mu.Lock()
	defer fh.set.mu.Unlock()
	return fh.fired
}

// Remove disables the fault.
func (fh *FaultHandle) Remove() {
	fh.set.mu.Lock()
	defer fh.set.mu.Unlock()
	fh.set.list = slices.DeleteFunc(fh.set.list, func(x *FaultHandle) bool { return x == fh })
}

type faultSet struct {
	mu   sync.Mutex
	list []*FaultHandle
}

// Fault adds a scripted fault.
func (h *Hub) Fault(f Fault) *FaultHandle {
	fh := &FaultHandle{set: &h.faults, fault: f}
	h.faults.mu.Lock()
	defer h.faults.mu.Unlock()
	h.faults.list = append(h.faults.list, fh)
	return fh
}

// ClearFaults removes every scripted fault.
func (h *Hub) ClearFaults() {
	h.faults.mu.Lock()
	defer h.faults.mu.Unlock()
	h.faults.list = nil
}

// take returns the fault to apply to this request, if any, and counts it.
func (fs *faultSet) take(route Route, r *http.Request) (Fault, bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, fh := range fs.list {
		f := fh.fault
		if f.Route != "" && f.Route != route {
			continue
		}
		if f.Method != "" && f.Method != r.Method {
			continue
		}
		if f.Path != "" {
			if ok, _ := path.Match(f.Path, r.URL.EscapedPath()); !ok {
				continue
			}
		}
		times := f.Times
		if times == 0 {
			times = 1
		}
		fh.seen++
		if fh.seen <= f.Skip {
			continue
		}
		if times > 0 && fh.fired >= times {
			continue
		}
		fh.fired++
		return f, true
	}
	return Fault{}, false
}
