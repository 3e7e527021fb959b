package hubtest

import (
	"context"
	"sync"
	"time"
)

// The modelled link: one download and one upload rate shared by every connection, as
// a user's uplink and downlink are, and a latency added to every request. Which bodies
// cross which link is decided in linkOf.

// WithLink makes every body that crosses the user's link share one download rate and
// one upload rate, in bytes per second (0 leaves that direction unlimited): CDN GET
// and resolve reply bodies and Xet transfers count as download; upload PUT bodies (basic
// and parts), commit request bodies and Xet xorbs and shards count as upload. Stats.BytesDown and BytesUp count them.
func WithLink(downBytesPerSecond, upBytesPerSecond int64) Option {
	return func(c *config) { c.downRate, c.upRate = downBytesPerSecond, upBytesPerSecond }
}

// WithLatency delays the handling of every request by d, as a round trip to a far
// server does.
func WithLatency(d time.Duration) Option { return func(c *config) { c.latency = d } }

// linkOf says whether the bodies of a route cross the download or the upload link.
func linkOf(route Route) (down, up bool) {
	switch route {
	case RouteCDNGet, RouteResolve, RouteRaw, RouteXetTransfer:
		return true, false
	case RouteUploadPut, RoutePartPut, RouteCommit, RouteXetXorb, RouteXetShard:
		return false, true
	}
	return false, false
}

// linkChunk is the most a body moves in one turn, so that connections sharing a link
// interleave finely.
const linkChunk = 32 << 10

// linkSlack is how much idle time a link may make up for.
const linkSlack = 20 * time.Millisecond

// bucket paces bytes to a rate for everyone who shares it: each turn reserves the
// time its bytes take after the turns reserved before it, and waits until then.
type bucket struct {
	rate float64 // bytes per second; 0: unlimited

	mu   sync.Mutex
	free time.Time // when the link has sent everything reserved so far
}

func newBucket(rate int64) *bucket {
	if rate <= 0 {
		return nil
	}
	return &bucket{rate: float64(rate)}
}

// wait returns when n more bytes may cross the link, or false when ctx ended first.
func (b *bucket) wait(ctx context.Context, n int) bool {
	if b == nil || n <= 0 {
		return true
	}
	b.mu.Lock()
	now := time.Now()
	// A link that was idle for a moment lets the sender catch up, as the buffers of a
	// real one do: without this, each connection would lose its own time between
	// chunks (reading the body, timer lateness), and one stream could never fill the
	// link. Over any stretch longer than linkSlack the rate still holds.
	if earliest := now.Add(-linkSlack); b.free.Before(earliest) {
		b.free = earliest
	}
	b.free = b.free.Add(time.Duration(float64(n) / b.rate * float64(time.Second)))
	d := b.free.Sub(now)
	b.mu.Unlock()
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
