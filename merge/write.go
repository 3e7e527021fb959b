package merge

import (
	"context"
	"io"
	"os"
)

// piece is a run of the output file: a computed row block, or a run of a copied tensor.
type piece struct {
	t      *tensor
	copy   bool
	r0, r1 int   // rows, for a computed block
	off, n int64 // offset within the tensor and length, for a copied run
	buf    []byte
	err    error
	done   chan struct{}
}

// WriteTo writes the whole merged shard to w; see Write.
func (s *Shard) WriteTo(w io.Writer) (int64, error) { return s.Write(context.Background(), w, nil) }

// Write writes the whole merged shard to w, in order, and stops between pieces when ctx
// is done. Blocks are computed by Jobs goroutines a few pieces ahead of the writer, each
// block by one goroutine, so that every core is busy while the writer writes. When w is
// a file and a copied tensor's source is one too, the kernel copies it
// (copy_file_range) without passing through this process. progress, if not nil, is told
// every byte written.
func (s *Shard) Write(ctx context.Context, w io.Writer, progress func(int64)) (int64, error) {
	if progress == nil {
		progress = func(int64) {}
	}
	var n int64
	k, err := w.Write(s.prefix)
	n += int64(k)
	progress(int64(k))
	if err != nil {
		return n, err
	}
	dst, _ := w.(*os.File)
	ahead := 2 * s.jobs
	queue := make(chan *piece, ahead) // in file order, for the writer
	work := make(chan *piece, ahead)  // for the workers
	stop := make(chan struct{})
	free := make(chan []byte, ahead+2)
	go s.schedule(queue, work, stop, dst != nil)
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
			return n, err
		}
		<-p.done
		if p.err != nil {
			return n, p.err
		}
		if p.copy && p.buf == nil {
			k, err := copyRange(dst, p.t, p.off, p.n)
			n += k
			progress(k)
			if err != nil {
				return n, err
			}
			continue
		}
		k, err := w.Write(p.buf)
		n += int64(k)
		progress(int64(k))
		select {
		case free <- p.buf[:cap(p.buf)]:
		default:
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// schedule sends the pieces in order: to the writer's queue first, which bounds how far
// ahead the workers run, then to the workers. Copied runs the kernel can copy need no
// worker.
func (s *Shard) schedule(queue, work chan<- *piece, stop <-chan struct{}, kernelCopy bool) {
	defer close(queue)
	defer close(work)
	send := func(p *piece) bool {
		p.done = make(chan struct{})
		select {
		case queue <- p:
		case <-stop:
			return false
		}
		if p.copy && kernelCopy && canCopyRange(p.t) {
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
	for i, t := range s.tensors {
		tlen := s.plan.Layout.Tensors[i].Len()
		if t.t.Copy() {
			chunk := int64(writeBuffer)
			if kernelCopy && canCopyRange(t) {
				chunk = tlen // the kernel copies it in one go
			}
			for off := int64(0); off < tlen; off += chunk {
				if !send(&piece{t: t, copy: true, off: off, n: min(chunk, tlen-off)}) {
					return
				}
			}
			continue
		}
		for b := 0; b < t.blocks(); b++ {
			r0, r1 := t.span(b)
			if !send(&piece{t: t, r0: r0, r1: r1}) {
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
		var need int
		if p.copy {
			need = int(p.n)
		} else {
			need = (p.r1 - p.r0) * p.t.cols * size(p.t.t.DType)
		}
		var buf []byte
		select {
		case buf = <-free:
		default:
		}
		if cap(buf) < need {
			buf = make([]byte, max(need, writeBuffer))
		}
		p.buf = buf[:need]
		if p.copy {
			p.err = readRef(p.t.in, p.t.t.Source, p.off, p.buf)
		} else {
			p.err = p.t.block(p.r0, p.r1, p.buf, acc)
		}
		close(p.done)
	}
}

// copyBuffered copies through this process's memory.
func copyBuffered(dst io.Writer, t *tensor, off, n int64) (int64, error) {
	buf := make([]byte, min(n, writeBuffer))
	var done int64
	for done < n {
		c := min(int64(len(buf)), n-done)
		if err := readRef(t.in, t.t.Source, off+done, buf[:c]); err != nil {
			return done, err
		}
		k, err := dst.Write(buf[:c])
		done += int64(k)
		if err != nil {
			return done, err
		}
	}
	return done, nil
}
