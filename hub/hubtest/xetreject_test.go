package hubtest

import (
	"bytes"
	"fmt"
	"net/http"
	"testing"
)

// TestXetRejections provokes each rejection of the CAS with one change to a valid
// upload: a 400 whose reason names the chunk, xorb or file and both values.
func TestXetRejections(t *testing.T) {
	h := newXetHub(t)
	tok := casToken(t, h, xtokW, "write")
	data := compressible(300_000, 2)
	pieces := splitFixed(data, 60_000)
	good := encodeXorb(t, pieces, schemeLZ4)

	t.Run("corrupted xorb", func(t *testing.T) {
		bad := good
		bad.body = bytes.Clone(good.body)
		bad.body[8+6] ^= 0xff // inside the first LZ4 frame's header
		xwant(t, postXorb(t, h, tok, bad), http.StatusBadRequest, "corrupt", "chunk 0", "LZ4")
		flipped := good
		flipped.body = bytes.Clone(good.body)
		flipped.body[4] = 7 // unknown scheme
		xwant(t, postXorb(t, h, tok, flipped), http.StatusBadRequest, "chunk 0", "compression scheme 7")
		short := good
		short.body = good.body[:len(good.body)-10]
		xwant(t, postXorb(t, h, tok, short), http.StatusBadRequest, "runs past the end")
	})
	t.Run("wrong xorb hash", func(t *testing.T) {
		other := encodeXorb(t, splitFixed(compressible(1000, 9), 500), schemeNone)
		wrong := good
		wrong.hash = other.hash
		xwant(t, postXorb(t, h, tok, wrong), http.StatusBadRequest, "xorb hash mismatch", other.hash.String(), good.hash.String())
	})
	if got := h.XetStats().XorbsRejected; got != 4 {
		t.Fatalf("XorbsRejected = %d, want 4", got)
	}
	t.Run("shard referencing a missing xorb", func(t *testing.T) {
		f := newEncFile(data, encTerm{good, 0, len(good.chunks)})
		xwant(t, postShard(t, h, tok, encodeShard(t, []encFile{f}, nil, false)), http.StatusBadRequest,
			"references xorb "+good.hash.String(), "never uploaded")
		xwant(t, postShard(t, h, tok, encodeShard(t, []encFile{f}, []encXorb{good}, false)), http.StatusBadRequest,
			"CAS info lists xorb "+good.hash.String(), "never uploaded")
	})
	xwant(t, postXorb(t, h, tok, good), http.StatusOK)
	t.Run("missing chunk range", func(t *testing.T) {
		f := newEncFile(data, encTerm{good, 0, len(good.chunks)})
		f.terms[0].end = len(good.chunks) + 1
		f.terms[0].x.chunks = append(append([]shardChunk(nil), good.chunks...), good.chunks[0])
		xwant(t, postShard(t, h, tok, encodeShard(t, []encFile{f}, nil, false)), http.StatusBadRequest,
			fmt.Sprintf("chunks [0, %d) of xorb %s, which has %d chunks", len(good.chunks)+1, good.hash, len(good.chunks)))
	})
	t.Run("wrong sha256", func(t *testing.T) {
		f := newEncFile(data, encTerm{good, 0, len(good.chunks)})
		f.sha256 = sha256Hex([]byte("something else"))
		xwant(t, postShard(t, h, tok, encodeShard(t, []encFile{f}, []encXorb{good}, false)), http.StatusBadRequest,
			"metadata extension says sha256 "+f.sha256, "reconstructed bytes have sha256 "+sha256Hex(data))
		f.sha256 = ""
		xwant(t, postShard(t, h, tok, encodeShard(t, []encFile{f}, []encXorb{good}, false)), http.StatusBadRequest,
			"no sha256 metadata extension")
	})
	t.Run("wrong file hash", func(t *testing.T) {
		f := newEncFile(data, encTerm{good, 0, len(good.chunks)})
		half := newEncFile(data[:60_000], encTerm{good, 0, 1})
		f.hash = half.hash
		xwant(t, postShard(t, h, tok, encodeShard(t, []encFile{f}, nil, false)), http.StatusBadRequest,
			"file "+half.hash.String(), "hashes to "+newEncFile(data, encTerm{good, 0, len(good.chunks)}).hash.String())
	})
	t.Run("wrong chunk in CAS info", func(t *testing.T) {
		lying := good
		lying.chunks = append([]shardChunk(nil), good.chunks...)
		lying.chunks[1].hash = good.chunks[2].hash
		xwant(t, postShard(t, h, tok, encodeShard(t, nil, []encXorb{lying}, false)), http.StatusBadRequest,
			"chunk 1 of xorb "+good.hash.String(), "hashes to "+good.chunks[1].hash.String())
	})
	if st := h.XetStats(); st.ShardsRejected != 7 || st.ShardsAccepted != 0 || st.FilesRegistered != 0 {
		t.Fatalf("stats after rejections %+v", st)
	}
	var failed int
	for _, c := range h.XetChecks() {
		if c.Claimed != c.Computed {
			failed++
		}
	}
	if failed != 4 { // xorb hash, sha256, file hash, chunk; corrupt bodies never got as far as a check
		t.Fatalf("%d failed checks recorded, want 4: %+v", failed, h.XetChecks())
	}
	// Both shard forms are accepted once right: without footer and with it (huggingface.js).
	f := newEncFile(data, encTerm{good, 0, len(good.chunks)})
	xwant(t, postShard(t, h, tok, encodeShard(t, []encFile{f}, []encXorb{good}, true)), http.StatusOK, `"result":1`)
	xwant(t, postShard(t, h, tok, encodeShard(t, []encFile{f}, []encXorb{good}, false)), http.StatusOK, `"result":1`)
	xwant(t, postShard(t, h, tok, encodeShard(t, []encFile{f}, []encXorb{good}, false)), http.StatusOK, `"result":0`)
	xwant(t, postXorb(t, h, tok, good), http.StatusOK, `"was_inserted":false`)
}

// Faults apply to the CAS routes as to the others: a 503 on a xorb, and a shard
// registered whose reply is lost (a client that retries gets result 0, no harm).
func TestXetFaults(t *testing.T) {
	h := newXetHub(t)
	tok := casToken(t, h, xtokW, "write")
	data := compressible(50_000, 8)
	x := encodeXorb(t, splitFixed(data, 20_000), schemeLZ4)
	fx := h.Fault(Fault{Route: RouteXetXorb, Status: http.StatusServiceUnavailable})
	xwant(t, postXorb(t, h, tok, x), http.StatusServiceUnavailable)
	if fx.Fired() != 1 || h.XetStats().XorbsAccepted != 0 {
		t.Fatalf("the fault did not stop the upload: %+v", h.XetStats())
	}
	xwant(t, postXorb(t, h, tok, x), http.StatusOK, `"was_inserted":true`)
	f := newEncFile(data, encTerm{x, 0, len(x.chunks)})
	shard := encodeShard(t, []encFile{f}, []encXorb{x}, false)
	h.Fault(Fault{Route: RouteXetShard, ApplyThenLose: true, Status: http.StatusInternalServerError})
	xwant(t, postShard(t, h, tok, shard), http.StatusInternalServerError)
	if _, ok := h.XetFileBySHA256(f.sha256); !ok {
		t.Fatal("the shard whose reply was lost was not applied")
	}
	xwant(t, postShard(t, h, tok, shard), http.StatusOK, `"result":0`)
	if st := h.Stats(); st.Requests[RouteXetXorb] != 2 || st.Requests[RouteXetShard] != 2 || st.FaultsFired != 2 {
		t.Fatalf("requests %v, faults %d", st.Requests, st.FaultsFired)
	}
}

// The CAS parses bytes from any client: no input may crash it, and what it accepts
// must be self-consistent.
func FuzzParseXorb(f *testing.F) {
	f.Add(encodeXorb(f, splitFixed(compressible(3000, 1), 1000), schemeLZ4).body)
	f.Add(encodeXorb(f, splitFixed(compressible(3001, 2), 1000), schemeBG4).body)
	f.Add(encodeXorb(f, [][]byte{[]byte("x")}, schemeNone).body)
	f.Fuzz(func(t *testing.T, b []byte) {
		chunks, datas, err := parseXorb(b)
		if err != nil {
			return
		}
		var end uint32
		for i, c := range chunks {
			if int(c.rawLen) != len(datas[i]) || c.hash != chunkHash(datas[i]) || c.off != end {
				t.Fatalf("chunk %d inconsistent: %+v", i, c)
			}
			end = c.off + c.size
		}
		if int(end) != len(b) {
			t.Fatalf("chunks cover %d of %d bytes", end, len(b))
		}
	})
}

func FuzzParseShard(f *testing.F) {
	x := encodeXorb(f, splitFixed(compressible(3000, 3), 1000), schemeLZ4)
	file := newEncFile(compressible(3000, 3), encTerm{x, 0, len(x.chunks)})
	f.Add(encodeShard(f, []encFile{file}, []encXorb{x}, false))
	f.Add(encodeShard(f, []encFile{file}, []encXorb{x}, true))
	f.Add(dedupShard([]shardXorb{{hash: x.hash, chunks: x.chunks}}, xetHash{1}, 1, 2))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseShard(b)
		if err != nil {
			return
		}
		for _, sf := range s.files {
			if sf.hash == xetBookend {
				t.Fatal("a bookend parsed as a file")
			}
		}
	})
}
