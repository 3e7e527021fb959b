package merge

import (
	"slices"
	"sync"
)

// readAhead computes the blocks after those that readers going through the shard in
// order are at, so that every core works while they hash, upload or write what they
// have. Several readers may each go in order through their own part (the parts of a
// multipart upload); a read elsewhere starts no read-ahead until the next read shows
// that its reader goes on in order.
type readAhead struct {
	order []blockKey       // the computed blocks in file order
	pos   map[blockKey]int // their index in order
	depth int              // blocks computed ahead of a reader, within the block cache
	slots chan struct{}    // one per job: read-ahead computes a block per job at a time

	mu      sync.Mutex
	readers []reader // most recent last
}

// reader is where one reader is: the index of the block it read last, and whether it
// has gone on in order from there.
type reader struct {
	at      int
	inOrder bool
}

// maxReaders bounds the readers followed; the least recent goes first.
const maxReaders = 8

func newReadAhead(s *Shard, cacheBytes int64) *readAhead {
	ra := &readAhead{pos: map[blockKey]int{}, slots: make(chan struct{}, s.jobs)}
	var largest int64
	for i, t := range s.tensors {
		if t.t.Copy() {
			continue
		}
		for k := 0; k < t.blocks(); k++ {
			ra.pos[blockKey{i, k}] = len(ra.order)
			ra.order = append(ra.order, blockKey{i, k})
		}
		largest = max(largest, int64(t.blockRows*t.cols*size(t.t.DType)))
	}
	if largest > 0 {
		ra.depth = int(min(int64(2*s.jobs), cacheBytes/2/largest/maxReaders))
		ra.depth = max(ra.depth, 1)
	}
	return ra
}

// read notes that a reader is at block key and, when it reads in order (the block it
// read before, or the one before this; a first read of the shard's first block counts),
// has up to a goroutine per job compute the blocks ahead of the readers in order.
func (ra *readAhead) read(s *Shard, key blockKey) {
	i, ok := ra.pos[key]
	if !ok || ra.depth == 0 {
		return
	}
	ra.mu.Lock()
	k := slices.IndexFunc(ra.readers, func(r reader) bool { return r.at == i || r.at == i-1 })
	r := reader{at: i, inOrder: k >= 0 || i == 0}
	if k >= 0 {
		ra.readers = slices.Delete(ra.readers, k, k+1)
	} else if len(ra.readers) == maxReaders {
		ra.readers = ra.readers[1:]
	}
	ra.readers = append(ra.readers, r)
	ra.mu.Unlock()
	if !r.inOrder {
		return
	}
	for range cap(ra.slots) {
		select {
		case ra.slots <- struct{}{}:
			go ra.fetch(s)
		default:
			return // every job is computing ahead already
		}
	}
}

// fetch computes blocks ahead of the readers in order, the most recent first, until
// depth blocks ahead of each are cached.
func (ra *readAhead) fetch(s *Shard) {
	defer func() { <-ra.slots }()
	for {
		next, ok := ra.wanted(s)
		if !ok {
			return
		}
		_, err := s.blocks.get(next, func() ([]byte, int64, error) { return s.computeBlock(next, false) })
		if err != nil {
			return // not cached: the reader meets it when it gets there
		}
	}
}

// wanted is the first block within depth of a reader in order that is neither cached
// nor being computed.
func (ra *readAhead) wanted(s *Shard) (blockKey, bool) {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	for _, r := range slices.Backward(ra.readers) {
		if !r.inOrder {
			continue
		}
		for _, k := range ra.order[r.at+1 : min(r.at+1+ra.depth, len(ra.order))] {
			if !s.blocks.has(k) {
				return k, true
			}
		}
	}
	return blockKey{}, false
}
