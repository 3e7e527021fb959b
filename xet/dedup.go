package xet

import (
	"context"
)

// xorbRef is a xorb chunks can be referenced in: one this session builds, or one a
// dedup answer listed.
type xorbRef struct {
	hash   Hash
	own    bool
	chunks []Hash   // own: raw hashes; listed: as the answer stores them
	sizes  []uint32 // listed only
	src    *answer  // listed only
	starts []int    // own: chunks that start a file
}

type loc struct{ x, i int }

// answer groups the dedup answers that share an HMAC key.
type answer struct {
	key    Hash
	expiry uint64 // unix seconds; 0: none given
	index  map[Hash]loc
}

// maybeQuery asks the global dedup index about an eligible chunk the session cannot
// already reference. A failed query costs only dedup, so it is logged, not returned.
func (s *Session) maybeQuery(ctx context.Context, h Hash, first bool) error {
	if !(first || globalDedupEligible(h)) {
		return nil
	}
	return s.query(ctx, h)
}

// query asks about a chunk once, unless the session can already reference it.
func (s *Session) query(ctx context.Context, h Hash) error {
	if s.o.NoGlobalDedup || s.queried[h] {
		return nil
	}
	if _, ok := s.lookup(h); ok {
		return nil
	}
	s.queried[h] = true
	ans, err := s.c.QueryChunk(ctx, h)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		s.log.Warn("xet: global dedup query failed; uploading without it", "chunk", h.String(), "err", err)
		return nil
	}
	if ans != nil {
		s.addAnswer(h, ans)
	}
	return nil
}

func (s *Session) addAnswer(queried Hash, sh *Shard) {
	var key Hash
	var expiry uint64
	if sh.Footer != nil {
		key, expiry = sh.Footer.HMACKey, sh.Footer.KeyExpiry
	}
	if s.expired(expiry) {
		s.log.Info("xet: global dedup answer already expired; ignored", "chunk", queried.String(), "expiry", expiry)
		return
	}
	var a *answer
	for _, have := range s.answers {
		if have.key == key {
			a = have
		}
	}
	if a == nil {
		a = &answer{key: key, expiry: expiry, index: map[Hash]loc{}}
		s.answers = append(s.answers, a)
	} else if expiry == 0 || (a.expiry != 0 && expiry > a.expiry) {
		a.expiry = expiry
	}
	added := 0
	for _, x := range sh.Xorbs {
		if _, known := s.byHash[x.Hash]; known {
			continue
		}
		ref := &xorbRef{hash: x.Hash, src: a, chunks: make([]Hash, len(x.Chunks)), sizes: make([]uint32, len(x.Chunks))}
		for j, c := range x.Chunks {
			ref.chunks[j], ref.sizes[j] = c.Hash, c.Size
		}
		s.byHash[x.Hash] = len(s.xorbs)
		s.xorbs = append(s.xorbs, ref)
		for j, c := range x.Chunks {
			if _, dup := a.index[c.Hash]; !dup {
				a.index[c.Hash] = loc{len(s.xorbs) - 1, j}
			}
		}
		added += len(x.Chunks)
	}
	s.log.Debug("xet: global dedup answer", "chunk", queried.String(), "xorbs", len(sh.Xorbs), "chunks", added, "keyed", !key.IsZero())
}

// expired: an answer past its key expiry must not be deduplicated against (spec
// shard.md). 0 means the answer gave no expiry.
func (s *Session) expired(expiry uint64) bool {
	return expiry != 0 && uint64(s.o.Now().Unix()) >= expiry
}

// listed is how an answer stores a raw chunk hash: HMAC'd with its key, or raw when
// the key is all zero (xet-core #838).
func (a *answer) listed(h Hash) Hash {
	if a.key.IsZero() {
		return h
	}
	return HMAC(h, a.key)
}

func (s *Session) lookup(h Hash) (loc, bool) {
	if l, ok := s.own[h]; ok {
		return l, true
	}
	for _, a := range s.answers {
		if s.expired(a.expiry) {
			continue
		}
		if l, ok := a.index[a.listed(h)]; ok {
			return l, true
		}
	}
	return loc{}, false
}

// at reports whether chunk i of xorb x is the chunk (h, size).
func (s *Session) at(x, i int, h Hash, size int) bool {
	r := s.xorbs[x]
	if i >= len(r.chunks) {
		return false
	}
	if r.own {
		return r.chunks[i] == h
	}
	return !s.expired(r.src.expiry) && int(r.sizes[i]) == size && r.chunks[i] == r.src.listed(h)
}

type run struct {
	x, start, end int
}

// match finds how many chunks from the front of the window can be referenced: a run
// that continues chunk after chunk within a xorb, or from the last chunk of one xorb
// to the first of another (where a stored file crossed xorbs).
func (s *Session) match(f *fileState) (int, []run) {
	w := f.window
	l, ok := s.lookup(w[0].hash)
	if !ok || !s.at(l.x, l.i, w[0].hash, len(w[0].data)) {
		return 0, nil
	}
	runs := []run{{l.x, l.i, l.i + 1}}
	n := 1
	for n < len(w) {
		cur := &runs[len(runs)-1]
		c := w[n]
		if s.at(cur.x, cur.end, c.hash, len(c.data)) {
			cur.end++
			n++
			continue
		}
		if cur.end == len(s.xorbs[cur.x].chunks) {
			if l, ok := s.lookup(c.hash); ok && l.i == 0 && s.at(l.x, 0, c.hash, len(c.data)) {
				runs = append(runs, run{l.x, 0, 1})
				n++
				continue
			}
		}
		break
	}
	return n, runs
}

// decide settles chunks at the front of the window once more than Lookahead bytes
// wait behind them (or all of them at the end of the file): referenced when a long
// enough run matches, else packed into the open xorb.
func (s *Session) decide(ctx context.Context, f *fileState, final bool) error {
	for len(f.window) > 0 && (final || f.winBytes > s.o.Lookahead) {
		n, runs := s.match(f)
		whole := final && n == len(f.window) && f.next == 0
		// A run that carries on the file's last term is the tail of a long run cut
		// by the window's end, not a fragment.
		last := len(f.terms) - 1
		continues := n > 0 && last >= 0 && f.terms[last].x == runs[0].x && f.terms[last].end == runs[0].start
		if n > 0 && (n >= s.o.MinRun || whole || continues) {
			for _, r := range runs {
				var bytes uint64
				for k := 0; k < r.end-r.start; k++ {
					bytes += uint64(len(f.window[k].data))
				}
				s.addTerm(f, r.x, r.start, r.end, bytes)
				f.dedupBytes += int64(bytes)
				s.dedupBytes += int64(bytes)
				s.pop(f, r.end-r.start)
			}
			continue
		}
		if err := s.addNew(ctx, f, f.window[0]); err != nil {
			return err
		}
		s.pop(f, 1)
	}
	return nil
}

// ring holds the window's chunk bytes first in, first out, so that chunks waiting for
// a decision make no garbage. It is sized for the lookahead plus the chunk that
// overflows it and the gap a wrap leaves; should it ever be full, put falls back to
// the heap.
type ring struct {
	buf        []byte
	head, tail int // live bytes are [head, tail), or [head, end) and [0, tail) when wrapped
	wrapped    bool
	live       int
}

func (r *ring) put(data []byte) ([]byte, int) {
	n := len(data)
	var at int
	switch {
	case !r.wrapped && len(r.buf)-r.tail >= n:
		at = r.tail
	case !r.wrapped && r.head > n:
		at, r.wrapped = 0, true
	case r.wrapped && r.head-r.tail > n:
		at = r.tail
	default:
		return append([]byte(nil), data...), -1
	}
	r.tail = at + n
	r.live++
	return append(r.buf[at:at:at+n], data...), at
}

// release frees the oldest chunk put, which put placed at off (-1: on the heap).
func (r *ring) release(off, n int) {
	if off < 0 {
		return
	}
	r.live--
	if off < r.head {
		r.wrapped = false // the reader reached the wrapped part
	}
	r.head = off + n
	if r.live == 0 {
		r.head, r.tail, r.wrapped = 0, 0, false
	}
}

// Hint asks the global dedup index about a chunk the caller knows the CAS holds (the
// first chunk of a file the upload to come shares bytes with, such as the base of a
// merged model), so that its answer covers the chunks the session's own eligible
// queries would miss: a small file has few eligible chunks, and its first chunk is
// often the one that changed. Hints count as queries: asked once, kept in arrival
// order, so a rerun given the same hints decides the same.
func (s *Session) Hint(ctx context.Context, h Hash) error {
	if s.err != nil {
		return s.err
	}
	return s.query(ctx, h)
}
