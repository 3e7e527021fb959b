package hub

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"sync"
	"sync/atomic"
)

// OpenOptions tune a RemoteFile.
type OpenOptions struct {
	Chunk     int64 // bytes per ranged request; default 4 MiB
	ReadAhead int   // chunks fetched ahead of the furthest read; default 4
	Verify    bool  // check the sha256 of an LFS file as its chunks arrive in order
}

// RemoteFile is a file on the Hub as an io.ReaderAt of known size, read by ranged
// requests in chunks. Chunks are fetched in file order a few ahead of the furthest
// read, so a reader that moves forward (a merge reading a shard tensor by tensor) finds
// its bytes waiting; memory stays at a few chunks. With Verify, each chunk is hashed
// the first time it arrives, in order, and when the last one has, a sha256 that
// differs from the file's fails the read (ErrChecksum), and every later one.
type RemoteFile struct {
	c     *Client
	ctx   context.Context
	stop  context.CancelFunc
	info  *FileInfo // never changed: Size, Path, ETag and Repo are read from it
	loc   *location // where the bytes are; refreshed when storage URLs expire
	chunk int64
	ahead int64
	n     int64 // number of chunks

	mu       sync.Mutex
	chunks   map[int64]*chunk
	launched int64 // chunks [0, launched) have been fetched or are being fetched
	hashed   int64 // chunks [0, hashed) have been hashed
	h        hash.Hash
	err      error // sticky: a checksum mismatch
	furthest int64 // the furthest chunk read
	served   atomic.Int64
}

type chunk struct {
	done chan struct{}
	data []byte
	err  error
}

// Open returns a file for ranged reading. ctx bounds every request it makes; Close
// ends them.
func (c *Client) Open(ctx context.Context, f *FileInfo, o OpenOptions) *RemoteFile {
	if o.Chunk <= 0 {
		o.Chunk = 4 << 20
	}
	if o.ReadAhead <= 0 {
		o.ReadAhead = 4
	}
	ctx, stop := context.WithCancel(ctx)
	r := &RemoteFile{c: c, ctx: ctx, stop: stop, info: f, loc: &location{f: f}, chunk: o.Chunk, ahead: int64(o.ReadAhead),
		n: (f.Size + o.Chunk - 1) / o.Chunk, chunks: map[int64]*chunk{}}
	if o.Verify && f.LFS && len(f.ETag) == 64 {
		r.h = sha256.New()
	}
	return r
}

// Size is the file's size.
func (r *RemoteFile) Size() int64 { return r.info.Size }

// Served is the number of bytes received so far.
func (r *RemoteFile) Served() int64 { return r.served.Load() }

// Close stops requests in flight.
func (r *RemoteFile) Close() error {
	r.stop()
	return nil
}

// ReadAt reads len(p) bytes at off.
func (r *RemoteFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("hub: negative offset")
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= r.info.Size {
			return n, io.EOF
		}
		i := pos / r.chunk
		data, err := r.get(i)
		if err != nil {
			return n, err
		}
		n += copy(p[n:], data[pos-i*r.chunk:])
	}
	return n, nil
}

// get returns chunk i, launching it and those after it up to the read-ahead window.
func (r *RemoteFile) get(i int64) ([]byte, error) {
	r.mu.Lock()
	if r.err != nil {
		r.mu.Unlock()
		return nil, r.err
	}
	for r.launched <= min(i+r.ahead, r.n-1) {
		r.launch(r.launched, true)
		r.launched++
	}
	c, ok := r.chunks[i]
	if !ok {
		// Dropped after use, or failed: fetch it again. It joins the in-order hash only
		// if the hash has not passed it.
		c = r.launch(i, r.h != nil && i >= r.hashed)
	}
	r.mu.Unlock()
	<-c.done
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return nil, r.err
	}
	if c.err != nil {
		if r.chunks[i] == c {
			delete(r.chunks, i) // let a later read try again
		}
		return nil, c.err
	}
	r.furthest = max(r.furthest, i)
	r.evict()
	return c.data, nil
}

// launch starts fetching chunk i; the caller holds mu.
func (r *RemoteFile) launch(i int64, inOrder bool) *chunk {
	c := &chunk{done: make(chan struct{})}
	if inOrder {
		r.chunks[i] = c
	}
	off := i * r.chunk
	n := min(r.chunk, r.info.Size-off)
	go func() {
		data, err := r.c.readRange(r.ctx, r.loc, off, n)
		if err == nil {
			r.served.Add(int64(len(data)))
		} else {
			err = fmt.Errorf("reading %s at %d: %w", r.info.Path, off, err)
		}
		r.mu.Lock()
		c.data, c.err = data, err
		if inOrder && err == nil {
			r.hashReady()
		}
		r.mu.Unlock()
		close(c.done)
	}()
	return c
}

// hashReady hashes the chunks that arrived in order; the caller holds mu.
func (r *RemoteFile) hashReady() {
	if r.h == nil {
		return
	}
	for r.hashed < r.n {
		c, ok := r.chunks[r.hashed]
		if !ok || c.data == nil {
			return
		}
		r.h.Write(c.data)
		r.hashed++
	}
	if sum := hex.EncodeToString(r.h.Sum(nil)); sum != r.info.ETag {
		r.err = fmt.Errorf("%w: %s from %s has sha256 %s, the Hub says %s", ErrChecksum, r.info.Path, r.info.Repo, sum, r.info.ETag)
	}
	r.h = nil
}

// evict drops hashed chunks more than one behind the furthest read, so that
// readers a little behind it still find theirs; the caller holds mu.
func (r *RemoteFile) evict() {
	for j, c := range r.chunks {
		if j < r.furthest-1 && (r.h == nil || j < r.hashed) {
			select {
			case <-c.done:
				delete(r.chunks, j)
			default:
			}
		}
	}
}
