package merge

import (
	"slices"
	"sync"
)

// readAhead computes the blocks after the one a sequential reader of the shard is at,
// so that every core works while the reader hashes, uploads or writes what it has.
// Reads at other places (the parts of a multipart upload, re-sent pieces) start no
// read-ahead until they go on in order.
type readAhead struct {
	order []blockKey       // the computed blocks in file order
	pos   map[blockKey]int // their index in order
	depth int              // blocks computed ahead, within half the block cache
	slots chan struct{}    // one per job: read-ahead computes a block per job at a time

	mu   sync.Mutex
	last int // the index of the block read last; -1 before the first
}

func newReadAhead(s *Shard, cacheBytes int64) *readAhead {
	ra := &readAhead{pos: map[blockKey]int{}, slots: make(chan struct{}, s.jobs), last: -1}
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
		ra.depth = int(min(int64(2*s.jobs), cacheBytes/2/largest))
	}
	return ra
}

// read notes that the reader is at block key and, when it reads in order, has up to a
// goroutine per job compute the blocks ahead of it.
func (ra *readAhead) read(s *Shard, key blockKey) {
	i, ok := ra.pos[key]
	if !ok || ra.depth == 0 {
		return
	}
	ra.mu.Lock()
	sequential := i == ra.last || i == ra.last+1
	ra.last = i
	ra.mu.Unlock()
	if !sequential {
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

// fetch computes blocks ahead of the reader until depth of them are cached.
func (ra *readAhead) fetch(s *Shard) {
	defer func() { <-ra.slots }()
	for {
		ra.mu.Lock()
		ahead := ra.order[ra.last+1 : min(ra.last+1+ra.depth, len(ra.order))]
		ra.mu.Unlock()
		i := slices.IndexFunc(ahead, func(k blockKey) bool { return !s.blocks.has(k) })
		if i < 0 {
			return
		}
		next := ahead[i]
		_, err := s.blocks.get(next, func() ([]byte, int64, error) { return s.computeBlock(next, false) })
		if err != nil {
			return // not cached: the reader meets it when it gets there
		}
	}
}
