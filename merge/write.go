package merge

import (
	"context"
	"io"
	"os"
	"sync"
	"sync/atomic"
)

// copyChunk is the run of a copied tensor one piece holds, so that the writer turns
// to computed blocks in between.
const copyChunk = 8 << 20

// piece is a run of the output file: a computed row block, or a run of a copied tensor.
type piece struct {
	t      *tensor
	copy   bool
	r0, r1 int   // rows, for a computed block
	off    int64 // offset within the tensor, for a copied run
	at, n  int64 // offset within the shard, and length
	buf    []byte
	err    error
	done   chan struct{}
}

// WriteTo writes the whole merged shard to w; see Write.
func (s *Shard) WriteTo(w io.Writer) (int64, error) { return s.Write(context.Background(), w, nil) }

// Write writes the whole merged shard to w, in order, and stops between pieces when ctx
// is done. Blocks are computed by Jobs goroutines a few pieces ahead of the writer,
// each block by one goroutine, so that every core is busy while the writer writes.
// When w is a file, the writer writes each block at its offset, and another goroutine
// copies the tensors that do not change meanwhile, in the kernel (copy_file_range)
// where the input is a file too, without passing them through this process. (Only
// these two write: more writers of one file wait for each other in the kernel, at a
// cost in CPU time that the cores computing would rather have.) progress, if not nil,
// is told every byte written, from one goroutine at a time.
func (s *Shard) Write(ctx context.Context, w io.Writer, progress func(int64)) (int64, error) {
	if progress == nil {
		progress = func(int64) {}
	}
	var mu sync.Mutex // progress is called from the writer and the copier
	report := func(n int64) {
		mu.Lock()
		progress(n)
		mu.Unlock()
	}
	f, _ := w.(*os.File)
	base := int64(-1)
	if f != nil {
		if pos, err := f.Seek(0, io.SeekCurrent); err == nil {
			base = pos
		}
	}
	if base < 0 {
		f = nil // a pipe or a terminal
	}
	n, err := w.Write(s.prefix)
	report(int64(n))
	if err != nil {
		return int64(n), err
	}
	written := int64(n)
	// Copied runs go to a goroutine of their own, so that the writer writes the blocks
	// the workers compute meanwhile; both write at offsets.
	copies := make(chan *piece, 256)
	var copied atomic.Int64
	var copyErr error
	copyDone := make(chan struct{})
	go func() {
		defer close(copyDone)
		for p := range copies {
			if copyErr == nil {
				if copyErr = ctx.Err(); copyErr == nil {
					copyErr = copyAt(f, base+p.at, p.t, p.off, p.n)
				}
			}
			if copyErr == nil {
				copied.Add(p.n)
				report(p.n)
			}
		}
	}()
	finishCopies := sync.OnceValue(func() error {
		close(copies)
		<-copyDone
		return copyErr
	})
	defer finishCopies()
	ahead := 4 * s.jobs
	// Computed blocks wait in memory for the writer: slots bounds how many. Copied runs
	// hold no memory, and must not keep the workers from the blocks behind them.
	slots := make(chan struct{}, ahead)
	queue := make(chan *piece, 256) // in file order, for the writer
	work := make(chan *piece, ahead)
	stop := make(chan struct{})
	free := make(chan []byte, ahead+2)
	go s.schedule(queue, work, slots, stop, f != nil)
	for range s.jobs {
		go s.worker(work, free)
	}
	defer func() {
		// Stop scheduling, and let the workers finish what they hold, so that no
		// goroutine outlives Write.
		close(stop)
		for p := range queue {
			<-p.done
		}
	}()
	for p := range queue {
		if err := ctx.Err(); err != nil {
			return written, err
		}
		<-p.done
		if p.err != nil {
			return written, p.err
		}
		if p.buf == nil { // a copied run the kernel copies
			copies <- p
			continue
		}
		var n int
		var err error
		if f != nil {
			n, err = f.WriteAt(p.buf, base+p.at)
		} else {
			n, err = w.Write(p.buf)
		}
		written += int64(n)
		report(int64(n))
		select {
		case free <- p.buf[:cap(p.buf)]:
		default:
		}
		<-slots
		if err != nil {
			return written, err
		}
	}
	err = finishCopies()
	written += copied.Load()
	if err != nil {
		return written, err
	}
	if f != nil {
		// Writing at offsets leaves the file's own offset behind.
		if _, err := f.Seek(base+written, io.SeekStart); err != nil {
			return written, err
		}
	}
	return written, nil
}

// schedule sends the pieces in order: to the writer's queue first, then to the
// workers. A piece a worker fills takes one of the slots, which the writer gives back,
// so that the workers run only so far ahead of it. Copied runs the kernel copies
// (toFile) need no worker and no slot.
func (s *Shard) schedule(queue, work chan<- *piece, slots chan<- struct{}, stop <-chan struct{}, toFile bool) {
	defer close(queue)
	defer close(work)
	send := func(p *piece) bool {
		p.done = make(chan struct{})
		kernel := p.copy && toFile
		if !kernel {
			select {
			case slots <- struct{}{}:
			case <-stop:
				return false
			}
		}
		select {
		case queue <- p:
		case <-stop:
			return false
		}
		if kernel {
			close(p.done)
			return true
		}
		select {
		case work <- p:
			return true
		case <-stop:
			close(p.done)
			return false
		}
	}
	for _, t := range s.tensors {
		tlen := t.size
		if t.t.Copy() {
			for off := int64(0); off < tlen; off += copyChunk {
				if !send(&piece{t: t, copy: true, off: off, at: t.off + off, n: min(copyChunk, tlen-off)}) {
					return
				}
			}
			continue
		}
		rowBytes := int64(t.cols * size(t.t.DType))
		for b := 0; b < t.blocks(); b++ {
			r0, r1 := t.span(b)
			if !send(&piece{t: t, r0: r0, r1: r1, at: t.off + int64(r0)*rowBytes, n: int64(r1-r0) * rowBytes}) {
				return
			}
		}
	}
}

// worker computes pieces, reusing buffers the writer gives back.
func (s *Shard) worker(work <-chan *piece, free chan []byte) {
	acc := s.pool.Get().(*scratch)
	defer s.pool.Put(acc)
	for p := range work {
		var buf []byte
		select {
		case buf = <-free:
		default:
		}
		buf = grow(buf, int(max(p.n, writeBuffer)))[:p.n]
		if p.copy {
			p.err = readRef(p.t.in, p.t.t.Source, p.off, buf)
		} else {
			p.err = p.t.block(p.r0, p.r1, buf, acc)
		}
		p.buf = buf
		close(p.done)
	}
}

// copyBuffered copies n bytes of t's source from off within the tensor to dst at at.
func copyBuffered(dst *os.File, at int64, t *tensor, off, n int64) error {
	buf := make([]byte, min(n, writeBuffer))
	for done := int64(0); done < n; {
		c := min(int64(len(buf)), n-done)
		if err := readRef(t.in, t.t.Source, off+done, buf[:c]); err != nil {
			return err
		}
		if _, err := dst.WriteAt(buf[:c], at+done); err != nil {
			return err
		}
		done += c
	}
	return nil
}
