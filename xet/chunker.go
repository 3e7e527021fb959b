package xet

import (
	"errors"
	"fmt"
	"io"
)

// Chunk sizes (xet-core xorb_object/constants.rs; spec chunking.md): a 64 KiB target,
// chunks of at least target/8 and at most target*2 bytes. Only a file's last chunk may
// be shorter than MinChunk.
const (
	TargetChunk = 64 << 10
	MinChunk    = TargetChunk / 8
	MaxChunk    = TargetChunk * 2

	// gearMask is (target-1) shifted to the top bits: a boundary falls where the gear
	// hash has its top 16 bits clear (xet-core Chunker::new).
	gearMask = uint64(TargetChunk-1) << 48
	// gearWindow: a gear hash depends only on the last 64 bytes it has seen.
	gearWindow = 64
)

// Chunker finds content-defined chunk boundaries with the gear rolling hash
// h = (h << 1) + gearTable[b]. A boundary falls after a byte where h & gearMask == 0
// once the chunk holds MinChunk bytes, or at MaxChunk bytes. The hash restarts at 0 at
// every boundary. The first MinChunk-64-1 bytes of a chunk are skipped unhashed: the
// hash at any allowed boundary depends only on the last 64 bytes, so skipping them
// changes no boundary (xet-core Chunker::next_boundary).
//
// The zero Chunker is ready to use. Boundaries do not depend on how the input is split
// into calls of Next.
type Chunker struct {
	h uint64
	n int // bytes of the open chunk seen by earlier calls
}

// Next consumes data, the bytes that follow what earlier calls saw. It returns the
// number of leading bytes of data that complete the open chunk, or -1 when all of data
// belongs to the still-open chunk. After a boundary the bytes beyond it are not
// consumed: pass them again.
func (c *Chunker) Next(data []byte) int {
	i := 0
	if c.n+gearWindow < MinChunk {
		i = min(MinChunk-c.n-gearWindow-1, len(data))
	}
	end := min(len(data), MaxChunk-c.n)
	h := c.h
	for ; i < end; i++ {
		h = h<<1 + gearTable[data[i]]
		if h&gearMask == 0 && c.n+i+1 >= MinChunk {
			c.h, c.n = 0, 0
			return i + 1
		}
	}
	if c.n+end == MaxChunk {
		c.h, c.n = 0, 0
		return end
	}
	c.h = h
	c.n += len(data)
	return -1
}

// ChunkReader cuts a stream into chunks with a Chunker, reading in blocks of any size.
type ChunkReader struct {
	r       io.Reader
	buf     []byte
	start   int // first byte of the open chunk
	scanned int // bytes up to here were given to the Chunker
	end     int // bytes up to here were read
	c       Chunker
	eof     bool
	err     error
}

// chunkReadBuffer is the read buffer: a few maximum chunks, so most reads are large.
const chunkReadBuffer = 8 * MaxChunk

// NewChunkReader returns a ChunkReader on r.
func NewChunkReader(r io.Reader) *ChunkReader {
	return &ChunkReader{r: r, buf: make([]byte, chunkReadBuffer)}
}

// Next returns the next chunk. The slice is valid until the next call. At the end of
// the stream it returns io.EOF. A read error is returned as it came, after the whole
// chunks read before it and instead of the truncated chunk it interrupted.
func (cr *ChunkReader) Next() ([]byte, error) {
	for {
		if cr.scanned < cr.end {
			if k := cr.c.Next(cr.buf[cr.scanned:cr.end]); k >= 0 {
				return cr.cut(cr.scanned + k), nil
			}
			cr.scanned = cr.end
		}
		if cr.eof {
			if cr.err != nil {
				return nil, cr.err // never a truncated last chunk
			}
			if cr.start < cr.end {
				cr.c = Chunker{}
				return cr.cut(cr.end), nil
			}
			return nil, io.EOF
		}
		cr.fill()
	}
}

func (cr *ChunkReader) cut(at int) []byte {
	b := cr.buf[cr.start:at]
	cr.start, cr.scanned = at, at
	return b
}

// fill reads more input, first moving the open chunk to the front of the buffer when
// the buffer is full. An open chunk is never longer than MaxChunk, so there is room.
func (cr *ChunkReader) fill() {
	if cr.end == len(cr.buf) {
		n := copy(cr.buf, cr.buf[cr.start:cr.end])
		cr.scanned -= cr.start
		cr.start, cr.end = 0, n
	}
	n, err := cr.r.Read(cr.buf[cr.end:])
	if n < 0 || n > len(cr.buf)-cr.end {
		err, n = fmt.Errorf("xet: reader returned %d bytes for a %d-byte buffer", n, len(cr.buf)-cr.end), 0
	}
	cr.end += n
	if err != nil {
		cr.eof = true
		if !errors.Is(err, io.EOF) {
			cr.err = err
		}
	}
}
