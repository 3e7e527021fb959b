package merge

import (
	"container/list"
	"sync"
)

// lru caches computed values by key, computing each at most once at a time: callers
// asking for a key being computed wait for it. Entries are evicted least recently used
// first once their total cost exceeds the capacity; a caller still holding an evicted
// value keeps it.
type lru[K comparable, V any] struct {
	mu       sync.Mutex
	capacity int64
	cost     int64
	order    *list.List // of *entry[K, V], most recent at the front
	entries  map[K]*list.Element
}

type entry[K comparable, V any] struct {
	key   K
	ready chan struct{}
	val   V
	err   error
	cost  int64
}

func newLRU[K comparable, V any](capacity int64) *lru[K, V] {
	return &lru[K, V]{capacity: capacity, order: list.New(), entries: map[K]*list.Element{}}
}

// get returns the value for key, computing it with fn if it is not cached. fn returns the
// value and its cost. Errors are not cached.
func (c *lru[K, V]) get(key K, fn func() (V, int64, error)) (V, error) {
	c.mu.Lock()
	if el, ok := c.entries[key]; ok {
		c.order.MoveToFront(el)
		e := el.Value.(*entry[K, V])
		c.mu.Unlock()
		<-e.ready
		return e.val, e.err
	}
	e := &entry[K, V]{key: key, ready: make(chan struct{})}
	el := c.order.PushFront(e)
	c.entries[key] = el
	c.mu.Unlock()

	e.val, e.cost, e.err = fn()
	close(e.ready)

	c.mu.Lock()
	defer c.mu.Unlock()
	if e.err != nil {
		if cur, ok := c.entries[key]; ok && cur == el {
			c.order.Remove(el)
			delete(c.entries, key)
		}
		return e.val, e.err
	}
	if cur, ok := c.entries[key]; ok && cur == el {
		c.cost += e.cost
	}
	for c.cost > c.capacity && c.order.Len() > 1 {
		back := c.order.Back()
		old := back.Value.(*entry[K, V])
		select {
		case <-old.ready:
		default:
			return e.val, e.err // the oldest is still being computed; evict later
		}
		c.order.Remove(back)
		delete(c.entries, old.key)
		c.cost -= old.cost
	}
	return e.val, e.err
}

// has reports whether key is cached or being computed.
func (c *lru[K, V]) has(key K) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.entries[key]
	return ok
}
