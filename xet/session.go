package xet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"time"

	"lukechampine.com/blake3"
)

// Options configure a Session. Zero values take the defaults in brackets.
type Options struct {
	Logger   *slog.Logger   // dedup decisions and query failures [discard]
	Progress func(Progress) // called from the goroutine that calls Upload or Close
	// NoGlobalDedup skips the global dedup queries; the session still reuses what it
	// sent itself.
	NoGlobalDedup bool
	// MinRun is the fewest consecutive chunks a reference to stored chunks must cover
	// [8, the spec's recommendation]; shorter matches are uploaded again, which keeps
	// files from fragmenting into many tiny terms. A whole file that matches is always
	// referenced.
	MinRun int
	// Lookahead is how many bytes of chunks wait before being decided [16 MiB], so
	// that a dedup answer found further on still covers the chunks before it. With
	// the two xorb buffers it bounds the session's memory: about 130 MiB + Lookahead.
	Lookahead int
	Now       func() time.Time // for dedup answer expiry [time.Now]
	// XorbBytes caps a xorb's serialized size [MaxXorbBytes, 64 MiB, as xet-core and
	// huggingface.js]. The session holds two xorb buffers, so a smaller cap bounds its
	// memory; the protocol's limit is a maximum, and smaller xorbs only mean more posts.
	XorbBytes int
}

// Progress is a snapshot of a session's work.
type Progress struct {
	FileBytes  int64 // read of the file being uploaded
	SentBytes  int64 // xorb bytes posted by the session
	DedupBytes int64 // bytes the session referenced instead of sending
}

// FileResult describes one uploaded file.
type FileResult struct {
	Hash     Hash
	XetHash  string // Hash.String(), the file id
	SHA256   string // hex, for the commit's lfsFile oid
	Size     int64
	NewBytes int64 // serialized xorb bytes of the file's new chunks (sent now or at Close)
	// DedupBytes are the file's bytes referenced from chunks the CAS or this session
	// already had.
	DedupBytes int64
}

// Summary is what Close did.
type Summary struct {
	Files        int
	XorbsSent    int   // posted
	XorbsPresent int   // found in the CAS already (HEAD), so not posted
	XorbBytes    int64 // xorb bytes posted over the whole session
	Shards       int   // posted; more than one when the listing passes 64 MiB
	ShardBytes   int
	ShardExisted bool // every shard answered that the CAS had it
}

// Session uploads files to the CAS in one streaming pass each: chunk, hash, sha256,
// deduplicate, pack new chunks into xorbs and post them, at most two xorbs in memory.
// Close posts the last xorb and the shard that makes the files exist. A Session is not
// safe for concurrent use.
//
// Besides its fixed buffers (two xorbs and the lookahead), a session keeps about 150
// bytes per new chunk until Close (its dedup map and the xorb listings of the shard):
// some 2.5 MB per GB of new data. For very large pushes use a session per output file
// or per few files; what an earlier session registered is found again through the
// global dedup index.
type Session struct {
	c   *Client
	o   Options
	log *slog.Logger

	xorbs   []*xorbRef
	byHash  map[Hash]int // xorb hash → index in xorbs
	own     map[Hash]loc // raw chunk hash → where this session stored it
	answers []*answer    // one per HMAC key, in arrival order so decisions are reproducible
	queried map[Hash]bool

	b        *xorbBuilder
	spare    []byte // the buffer of the last xorb sent, reused by the next
	ring     ring   // holds the window's chunk bytes
	cur      int    // index of the xorb being built, or -1
	sealed   []XorbInfo
	inflight chan sendResult

	files        []FileInfo
	pendingTerms [][]int // per file, the xorb index of each term, resolved at Close
	seen         map[Hash]bool
	hasher       *blake3.Hasher

	sent, present int
	sentBytes     int64
	dedupBytes    int64
	fileBytes     int64
	err           error
	closed        bool
}

type sendResult struct {
	sent  bool
	bytes int
	buf   []byte // the xorb's buffer, free again
	err   error
}

// NewSession starts a session on a client.
func NewSession(c *Client, o Options) *Session {
	if o.MinRun == 0 {
		o.MinRun = 8
	}
	if o.Lookahead == 0 {
		o.Lookahead = 16 << 20
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Session{c: c, o: o, log: log, byHash: map[Hash]int{}, own: map[Hash]loc{},
		queried: map[Hash]bool{}, seen: map[Hash]bool{},
		b: &xorbBuilder{comp: newCompressor(), limit: o.XorbBytes}, cur: -1, hasher: blake3.New(32, dataKey[:]),
		ring: ring{buf: make([]byte, o.Lookahead+3*MaxChunk)}}
}

type pendingChunk struct {
	hash  Hash
	data  []byte
	off   int  // in the ring, or -1
	first bool // the file's first chunk
}

type fileTerm struct {
	x, start, end int
	bytes         uint64
	first         int // index of its first chunk in the file
}

type fileState struct {
	chunks     []Chunk
	window     []pendingChunk
	winBytes   int
	next       int // file index of window[0]
	terms      []fileTerm
	newBytes   int64
	dedupBytes int64
}

// Upload reads r to its end and stages it: new chunks go into xorbs (posted as they
// fill), the file's reconstruction waits for Close. The result is final once Close
// succeeds.
func (s *Session) Upload(ctx context.Context, r io.Reader) (FileResult, error) {
	if s.err != nil {
		return FileResult{}, s.err
	}
	if s.closed {
		return FileResult{}, errors.New("xet: Upload after Close")
	}
	res, err := s.upload(ctx, r)
	if werr := s.wait(); err == nil {
		err = werr
	}
	if err != nil {
		s.err = err
		return FileResult{}, err
	}
	return res, nil
}

func (s *Session) upload(ctx context.Context, r io.Reader) (FileResult, error) {
	sha := sha256.New()
	f := &fileState{}
	cr := NewChunkReader(io.TeeReader(r, hashWriter{sha}))
	s.fileBytes = 0
	var reported int64
	for {
		data, err := cr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return FileResult{}, fmt.Errorf("xet: reading the file: %w", err)
		}
		h := s.chunkHash(data)
		first := len(f.chunks) == 0
		f.chunks = append(f.chunks, Chunk{h, uint64(len(data))})
		s.fileBytes += int64(len(data))
		if err := s.maybeQuery(ctx, h, first); err != nil {
			return FileResult{}, err
		}
		buf, off := s.ring.put(data)
		f.window = append(f.window, pendingChunk{h, buf, off, first})
		f.winBytes += len(data)
		if err := s.decide(ctx, f, false); err != nil {
			return FileResult{}, err
		}
		if s.fileBytes-reported >= 4<<20 {
			reported = s.fileBytes
			s.report()
		}
	}
	if err := s.decide(ctx, f, true); err != nil {
		return FileResult{}, err
	}
	fh := FileHash(f.chunks)
	var digest [32]byte
	sha.Sum(digest[:0])
	if !s.seen[fh] {
		s.seen[fh] = true
		info := FileInfo{Hash: fh, SHA256: &digest}
		for _, t := range f.terms {
			hashes := make([]Hash, t.end-t.start)
			for i := range hashes {
				hashes[i] = f.chunks[t.first+i].Hash
			}
			info.Verification = append(info.Verification, VerificationHash(hashes))
			// The xorb hash of a term in the open xorb is known at Close.
			info.Terms = append(info.Terms, Term{Xorb: Hash{}, Bytes: uint32(t.bytes), Start: uint32(t.start), End: uint32(t.end)})
		}
		s.files = append(s.files, info)
		s.pendingTerms = append(s.pendingTerms, termXorbs(f.terms))
	}
	s.report()
	return FileResult{Hash: fh, XetHash: fh.String(), SHA256: hex.EncodeToString(digest[:]), Size: s.fileBytes,
		NewBytes: f.newBytes, DedupBytes: f.dedupBytes}, nil
}

func termXorbs(ts []fileTerm) []int {
	out := make([]int, len(ts))
	for i, t := range ts {
		out[i] = t.x
	}
	return out
}

type hashWriter struct{ h hash.Hash }

func (w hashWriter) Write(p []byte) (int, error) { return w.h.Write(p) }

func (s *Session) chunkHash(data []byte) Hash {
	s.hasher.Reset()
	s.hasher.Write(data)
	var h Hash
	s.hasher.Sum(h[:0])
	return h
}

func (s *Session) pop(f *fileState, n int) {
	for k := 0; k < n; k++ {
		f.winBytes -= len(f.window[k].data)
		s.ring.release(f.window[k].off, len(f.window[k].data))
		f.window[k].data = nil
	}
	f.window = f.window[n:]
	f.next += n
}

func (s *Session) addTerm(f *fileState, x, start, end int, bytes uint64) {
	if k := len(f.terms) - 1; k >= 0 && f.terms[k].x == x && f.terms[k].end == start {
		f.terms[k].end = end
		f.terms[k].bytes += bytes
		return
	}
	f.terms = append(f.terms, fileTerm{x: x, start: start, end: end, bytes: bytes, first: f.next})
}

func (s *Session) addNew(ctx context.Context, f *fileState, c pendingChunk) error {
	if !s.b.fits(len(c.data)) {
		if err := s.flush(ctx); err != nil {
			return err
		}
	}
	if s.cur < 0 {
		s.cur = len(s.xorbs)
		s.xorbs = append(s.xorbs, &xorbRef{own: true})
	}
	n, err := s.b.add(c.data, c.hash)
	if err != nil {
		return err
	}
	r := s.xorbs[s.cur]
	i := len(r.chunks)
	r.chunks = append(r.chunks, c.hash)
	if c.first {
		r.starts = append(r.starts, i)
	}
	if _, ok := s.own[c.hash]; !ok {
		s.own[c.hash] = loc{s.cur, i}
	}
	f.newBytes += int64(n)
	s.addTerm(f, s.cur, i, i+1, uint64(len(c.data)))
	return nil
}

// flush seals the open xorb and sends it, after the one before it has been sent.
func (s *Session) flush(ctx context.Context) error {
	if s.b.empty() {
		return nil
	}
	x := s.b.seal()
	r := s.xorbs[s.cur]
	r.hash = x.hash
	s.byHash[x.hash] = s.cur
	info := XorbInfo{Hash: x.hash, RawBytes: uint32(x.raw), StoredBytes: uint32(len(x.data))}
	var off uint32
	starts := map[int]bool{}
	for _, i := range r.starts {
		starts[i] = true
	}
	for i, c := range x.chunks {
		ci := XorbChunkInfo{Hash: c.Hash, Offset: off, Size: uint32(c.Size)}
		if starts[i] {
			ci.Flags = ChunkFlagGlobalDedup
		}
		info.Chunks = append(info.Chunks, ci)
		off += uint32(c.Size)
	}
	s.sealed = append(s.sealed, info)
	s.cur = -1
	if err := s.wait(); err != nil {
		return err
	}
	// Two buffers take turns: the one just sent fills with the next xorb.
	s.b.data, s.spare = s.spare, nil
	done := make(chan sendResult, 1)
	s.inflight = done
	go func() { done <- s.send(ctx, x) }()
	return nil
}

// send posts a xorb unless the CAS already has it, so a rerun sends nothing twice.
func (s *Session) send(ctx context.Context, x serializedXorb) sendResult {
	exists, err := s.c.XorbExists(ctx, x.hash)
	var se *StatusError
	if err != nil && !errors.As(err, &se) {
		return sendResult{err: err}
	}
	if exists {
		return sendResult{buf: x.data}
	}
	if _, err := s.c.UploadXorb(ctx, x.hash, x.data); err != nil {
		return sendResult{err: err}
	}
	return sendResult{sent: true, bytes: len(x.data), buf: x.data}
}

// wait collects the xorb in flight, if any.
func (s *Session) wait() error {
	if s.inflight == nil {
		return nil
	}
	r := <-s.inflight
	s.inflight = nil
	if r.err != nil {
		return r.err
	}
	s.spare = r.buf[:0]
	if r.sent {
		s.sent++
		s.sentBytes += int64(r.bytes)
	} else {
		s.present++
	}
	s.report()
	return nil
}

func (s *Session) report() {
	if s.o.Progress != nil {
		s.o.Progress(Progress{FileBytes: s.fileBytes, SentBytes: s.sentBytes, DedupBytes: s.dedupBytes})
	}
}

// Close sends the open xorb, then the shard with every file's reconstruction and the
// listing of every xorb the session built. The files exist in the CAS once it returns.
func (s *Session) Close(ctx context.Context) (Summary, error) {
	if s.err != nil {
		return Summary{}, s.err
	}
	if s.closed {
		return Summary{}, errors.New("xet: Close called twice")
	}
	sum, err := s.close(ctx)
	if err != nil {
		s.err = err
		return Summary{}, err
	}
	s.closed = true
	return sum, nil
}

func (s *Session) close(ctx context.Context) (Summary, error) {
	err := s.flush(ctx)
	if werr := s.wait(); err == nil {
		err = werr
	}
	if err != nil {
		return Summary{}, err
	}
	for i := range s.files {
		for j, x := range s.pendingTerms[i] {
			s.files[i].Terms[j].Xorb = s.xorbs[x].hash
		}
	}
	sum := Summary{Files: len(s.files), XorbsSent: s.sent, XorbsPresent: s.present, XorbBytes: s.sentBytes}
	if len(s.files) == 0 {
		return sum, nil
	}
	sum.ShardExisted = true
	for _, shard := range splitShards(s.files, s.sealed, MaxShardBytes) {
		data, err := shard.MarshalUpload()
		if err != nil {
			return Summary{}, err
		}
		existed, err := s.c.UploadShard(ctx, data)
		if err != nil {
			return Summary{}, err
		}
		sum.Shards++
		sum.ShardBytes += len(data)
		sum.ShardExisted = sum.ShardExisted && existed
	}
	return sum, nil
}

// splitShards packs files and xorb listings into shards of at most limit bytes. Every
// xorb is uploaded before the first shard, so any file may go in any shard.
func splitShards(files []FileInfo, xorbs []XorbInfo, limit int) []*Shard {
	var out []*Shard
	cur := &Shard{}
	size := shardHeaderLen + 2*shardRecordLen
	add := func(n int) {
		if size+n > limit && (len(cur.Files) > 0 || len(cur.Xorbs) > 0) {
			out = append(out, cur)
			cur, size = &Shard{}, shardHeaderLen+2*shardRecordLen
		}
		size += n
	}
	for _, f := range files {
		add(shardRecordLen * (2 + 2*len(f.Terms)))
		cur.Files = append(cur.Files, f)
	}
	for _, x := range xorbs {
		add(shardRecordLen * (1 + len(x.Chunks)))
		cur.Xorbs = append(cur.Xorbs, x)
	}
	return append(out, cur)
}
