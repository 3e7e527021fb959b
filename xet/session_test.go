package xet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func sha256Of(b []byte) [32]byte { return sha256.Sum256(b) }

func upload(t *testing.T, s *Session, data []byte) FileResult {
	t.Helper()
	res, err := s.Upload(context.Background(), bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func closeSession(t *testing.T, s *Session) Summary {
	t.Helper()
	sum, err := s.Close(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func TestSessionUpload(t *testing.T) {
	cas := newTestCAS(t)
	var last Progress
	calls := 0
	s := NewSession(cas.client(ClientOptions{}), Options{Progress: func(p Progress) { last = p; calls++ }})
	a := splitmix64Data(5<<20, 11)
	res := upload(t, s, a)
	empty := upload(t, s, nil)
	// The same bytes read a few at a time are the same file.
	half, err := s.Upload(context.Background(), iotest.HalfReader(bytes.NewReader(a)))
	if err != nil || half.Hash != res.Hash || half.SHA256 != res.SHA256 || half.DedupBytes != int64(len(a)) {
		t.Errorf("re-read file: %+v, %v", half, err)
	}
	sum := closeSession(t, s)

	d := sha256.Sum256(a)
	if res.SHA256 != hex.EncodeToString(d[:]) || res.Size != int64(len(a)) {
		t.Errorf("sha256 %s size %d", res.SHA256, res.Size)
	}
	if want := FileHash(chunkList(a)); res.Hash != want || res.XetHash != want.String() {
		t.Errorf("file hash %s, want %s", res.XetHash, want)
	}
	if empty.Hash != (Hash{}) || empty.Size != 0 {
		t.Errorf("empty file: %+v", empty)
	}
	if got := cas.file(res.Hash); !bytes.Equal(got, a) {
		t.Fatalf("the CAS rebuilds %d bytes, not the file", len(got))
	}
	xb, posts, shards := cas.stats()
	if sum.Files != 2 || sum.XorbsSent != 1 || posts != 1 || shards != 1 || sum.XorbBytes != xb || res.NewBytes != xb {
		t.Errorf("summary %+v; CAS saw %d xorb bytes in %d posts, %d shards; file new bytes %d", sum, xb, posts, shards, res.NewBytes)
	}
	if _, err := s.Upload(context.Background(), bytes.NewReader(a)); err == nil {
		t.Error("Upload after Close succeeded")
	}
	if calls < 2 || last.SentBytes != xb {
		t.Errorf("%d progress calls, last %+v; want at least 2 and %d bytes sent", calls, last, xb)
	}
}

// TestSessionLocalDedup: a second file sharing a long stretch with the first sends
// only its own bytes (and a chunk or two at each edge).
func TestSessionLocalDedup(t *testing.T) {
	cas := newTestCAS(t)
	s := NewSession(cas.client(ClientOptions{}), Options{NoGlobalDedup: true})
	a := splitmix64Data(4<<20, 1)
	b := append(append(splitmix64Data(300000, 2), a[1<<20:3<<20]...), splitmix64Data(200000, 3)...)
	upload(t, s, a)
	rb := upload(t, s, b)
	closeSession(t, s)
	if rb.DedupBytes < (2<<20)-2*MaxChunk {
		t.Errorf("shared 2 MiB, deduplicated only %d bytes", rb.DedupBytes)
	}
	if !bytes.Equal(cas.file(rb.Hash), b) {
		t.Fatal("the CAS rebuilds the second file wrong")
	}
}

// TestSessionMinRun: a match shorter than MinRun chunks is uploaded again; a longer
// minimum-run setting changes only that.
func TestSessionMinRun(t *testing.T) {
	a := splitmix64Data(2<<20, 4)
	chunks := chunkList(a)
	var six int
	for _, c := range chunks[:6] {
		six += int(c.Size)
	}
	b := append(bytes.Clone(a[:six]), splitmix64Data(1<<20, 5)...)
	for _, c := range []struct {
		minRun int
		dedup  int64
	}{{8, 0}, {4, int64(six)}} {
		cas := newTestCAS(t)
		s := NewSession(cas.client(ClientOptions{}), Options{NoGlobalDedup: true, MinRun: c.minRun})
		upload(t, s, a)
		rb := upload(t, s, b)
		closeSession(t, s)
		if rb.DedupBytes != c.dedup {
			t.Errorf("MinRun %d: deduplicated %d bytes, want %d", c.minRun, rb.DedupBytes, c.dedup)
		}
		if !bytes.Equal(cas.file(rb.Hash), b) {
			t.Fatalf("MinRun %d: the CAS rebuilds the file wrong", c.minRun)
		}
	}
}

// TestSessionGlobalDedup: a base file stored by an earlier session; a "merged" file
// that changed a stretch in the middle sends little more than that stretch, whether
// the CAS HMACs its answers or not, and nothing is deduplicated against an answer
// whose key expired.
func TestSessionGlobalDedup(t *testing.T) {
	base := splitmix64Data(6<<20, 21)
	merged := bytes.Clone(base)
	changed := merged[2<<20 : 2<<20+500000]
	copy(changed, splitmix64Data(len(changed), 22))
	for _, c := range []struct {
		name    string
		key     Hash
		expired bool
	}{{"raw", Hash{}, false}, {"hmac", Hash{1, 2, 3}, false}, {"expired", Hash{1, 2, 3}, true}} {
		t.Run(c.name, func(t *testing.T) {
			cas := newTestCAS(t)
			cas.key = c.key
			s := NewSession(cas.client(ClientOptions{}), Options{})
			upload(t, s, base)
			closeSession(t, s)
			before, _, _ := cas.stats()

			now := time.Now
			if c.expired {
				now = func() time.Time { return time.Now().Add(2 * time.Hour) }
			}
			// A small lookahead makes the window's ring wrap many times.
			s2 := NewSession(cas.client(ClientOptions{}), Options{Now: now, Lookahead: 1 << 20})
			res := upload(t, s2, merged)
			closeSession(t, s2)
			after, _, _ := cas.stats()
			sent := after - before
			if !bytes.Equal(cas.file(res.Hash), merged) {
				t.Fatal("the CAS rebuilds the merged file wrong")
			}
			limit := int64(len(changed) + 2*MaxChunk)
			t.Logf("changed %d bytes: sent %d, deduplicated %d", len(changed), sent, res.DedupBytes)
			if c.expired {
				if res.DedupBytes != 0 {
					t.Errorf("deduplicated %d bytes against an expired answer", res.DedupBytes)
				}
				return
			}
			if sent > limit || res.DedupBytes < int64(len(base)-len(changed)-4*MaxChunk) {
				t.Errorf("sent %d bytes (limit %d), deduplicated %d", sent, limit, res.DedupBytes)
			}
		})
	}
}

// TestSessionResume: a rerun sends nothing twice. After a completed run the dedup
// answer covers every chunk; after a run whose shard never arrived, the xorbs are
// rebuilt identically and the CAS's HEAD says it has them.
func TestSessionResume(t *testing.T) {
	data := splitmix64Data(2<<20, 31)
	cas := newTestCAS(t)
	s := NewSession(cas.client(ClientOptions{}), Options{})
	upload(t, s, data)
	closeSession(t, s)
	first, posts, _ := cas.stats()

	s = NewSession(cas.client(ClientOptions{}), Options{})
	res := upload(t, s, data)
	sum := closeSession(t, s)
	if again, p, _ := cas.stats(); again != first || p != posts || !sum.ShardExisted || res.DedupBytes != int64(len(data)) {
		t.Errorf("completed rerun: %d more xorb bytes, summary %+v, dedup %d", again-first, sum, res.DedupBytes)
	}

	other := splitmix64Data(1<<20, 32)
	cas.fail(fault{prefix: "POST /v1/shards", status: 400, body: "boom"})
	s = NewSession(cas.client(ClientOptions{}), Options{})
	upload(t, s, other)
	if _, err := s.Close(context.Background()); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("Close: %v; want the CAS's refusal with its message", err)
	}
	sent, _, _ := cas.stats()
	s = NewSession(cas.client(ClientOptions{}), Options{})
	upload(t, s, other)
	sum = closeSession(t, s)
	if after, _, _ := cas.stats(); after != sent || sum.XorbsPresent != 1 || sum.XorbsSent != 0 {
		t.Errorf("rerun after a lost shard: %d more xorb bytes, summary %+v", after-sent, sum)
	}
}

// TestRing: chunks put and released first in, first out keep their bytes, and a ring
// sized as the session sizes it never falls back to the heap.
func TestRing(t *testing.T) {
	const lookahead = 1 << 20
	r := ring{buf: make([]byte, lookahead+3*MaxChunk)}
	type held struct {
		data, want []byte
		off        int
	}
	var window []held
	live := 0
	src := splitmix64Data(64<<20, 9)
	sizes := chunkList(src)
	pos := 0
	for i, c := range sizes {
		want := src[pos : pos+int(c.Size)]
		pos += int(c.Size)
		buf, off := r.put(want)
		if off < 0 {
			t.Fatalf("chunk %d: the ring was full with %d bytes live", i, live)
		}
		window = append(window, held{buf, want, off})
		live += len(buf)
		for live > lookahead {
			h := window[0]
			if !bytes.Equal(h.data, h.want) {
				t.Fatalf("chunk bytes changed in the ring")
			}
			r.release(h.off, len(h.data))
			live -= len(h.data)
			window = window[1:]
		}
	}
	for _, h := range window {
		if !bytes.Equal(h.data, h.want) {
			t.Fatalf("chunk bytes changed in the ring")
		}
	}
}

func TestSplitShards(t *testing.T) {
	s := sampleShard()
	files := []FileInfo{s.Files[0], s.Files[0], s.Files[0]}
	xorbs := []XorbInfo{s.Xorbs[0], s.Xorbs[0]}
	one, _ := (&Shard{Files: files, Xorbs: xorbs}).MarshalUpload()
	if got := splitShards(files, xorbs, len(one)); len(got) != 1 {
		t.Fatalf("%d shards for what fits in one", len(got))
	}
	limit := 48 + 96 + 6*48 + 4*48 // a file and a xorb listing, not more
	parts := splitShards(files, xorbs, limit)
	var nf, nx int
	for _, p := range parts {
		b, err := p.MarshalUpload()
		if err != nil || len(b) > limit {
			t.Fatalf("shard of %d bytes (limit %d): %v", len(b), limit, err)
		}
		nf += len(p.Files)
		nx += len(p.Xorbs)
	}
	if len(parts) < 3 || nf != 3 || nx != 2 {
		t.Errorf("%d shards with %d files and %d xorbs", len(parts), nf, nx)
	}
}
