package hubtest

import (
	"fmt"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
)

// paramSignedRange carries the byte ranges a transfer URL may be asked for (as in the
// Hub's v2 reconstruction URLs).
const paramSignedRange = "X-Xet-Signed-Range"

type reconRange struct {
	Start int64 `json:"start"`
	End   int64 `json:"end"`
}

type reconTerm struct {
	Hash           string     `json:"hash"`
	UnpackedLength int64      `json:"unpacked_length"`
	Range          reconRange `json:"range"`
}

type reconFetchV1 struct {
	Range    reconRange `json:"range"`
	URL      string     `json:"url"`
	URLRange reconRange `json:"url_range"`
}

type reconFetchV2 struct {
	URL    string `json:"url"`
	Ranges []struct {
		Chunks reconRange `json:"chunks"`
		Bytes  reconRange `json:"bytes"`
	} `json:"ranges"`
}

// reconstruction answers GET /v1/reconstructions/{file} and /v2/...: the terms that
// cover the requested byte range (Range: bytes=a-b, inclusive; the whole file
// without it), cut to the chunks the range touches, with offset_into_first_range,
// and signed transfer URLs for the chunk ranges of each xorb (v1: one URL per range
// in fetch_info; v2: one URL per xorb carrying all its ranges, in xorbs). A token
// reads a file when its repo was the one that uploaded it or has it in a commit.
func (h *Hub) reconstruction(c *call) {
	x := h.xet
	tok, ok := h.casAuth(c, false)
	if !ok {
		return
	}
	x.count(func(s *XetStats) { s.Reconstructions++ })
	id, err := parseXetHash(c.id)
	if err != nil {
		writeError(c.w, http.StatusBadRequest, "", "reconstruction: bad file hash: "+err.Error())
		return
	}
	x.mu.Lock()
	f := x.files[id]
	var uploader bool
	if f != nil {
		uploader = f.repos[tok.repo]
	}
	x.mu.Unlock()
	if f != nil && !uploader {
		h.mu.Lock()
		uploader = h.repoHasObjectLocked(tok.repo, f.sha256)
		h.mu.Unlock()
	}
	if f == nil || !uploader {
		writeError(c.w, http.StatusNotFound, "", "reconstruction: no file "+id.String()+" readable with this token")
		return
	}
	first, last := int64(0), f.size-1
	if rh := c.r.Header.Get("Range"); rh != "" {
		a, b, status := parseRange(rh, f.size)
		if status == http.StatusRequestedRangeNotSatisfiable || f.size == 0 {
			c.w.Header().Set("Content-Range", "bytes */"+itoa(f.size))
			writeError(c.w, http.StatusRequestedRangeNotSatisfiable, "", fmt.Sprintf("reconstruction: range %q is outside the file's %d bytes", rh, f.size))
			return
		}
		first, last = a, b-1
	}
	x.mu.Lock()
	terms, offset, need := x.planLocked(f, first, last)
	x.mu.Unlock()
	out := map[string]any{"offset_into_first_range": offset, "terms": terms}
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.part == 1 {
		fetch := map[string][]reconFetchV1{}
		for _, n := range need {
			for _, r := range n.ranges {
				fetch[n.xorb] = append(fetch[n.xorb], reconFetchV1{Range: r.chunks, URL: h.transferURLLocked(n.xorb, []reconRange{r.bytes}), URLRange: r.bytes})
			}
		}
		out["fetch_info"] = fetch
	} else {
		xorbs := map[string][]reconFetchV2{}
		for _, n := range need {
			var e reconFetchV2
			var bytes []reconRange
			for _, r := range n.ranges {
				e.Ranges = append(e.Ranges, struct {
					Chunks reconRange `json:"chunks"`
					Bytes  reconRange `json:"bytes"`
				}{r.chunks, r.bytes})
				bytes = append(bytes, r.bytes)
			}
			e.URL = h.transferURLLocked(n.xorb, bytes)
			xorbs[n.xorb] = []reconFetchV2{e}
		}
		out["xorbs"] = xorbs
	}
	writeJSON(c.w, http.StatusOK, out)
}

type xorbNeed struct {
	xorb   string
	ranges []struct{ chunks, bytes reconRange }
}

// planLocked cuts a file's terms to the chunks that hold bytes first..last and
// gathers, per xorb, the merged chunk ranges to fetch with their serialized byte
// ranges (inclusive ends).
func (x *xetState) planLocked(f *xetFile, first, last int64) ([]reconTerm, int64, []xorbNeed) {
	terms := []reconTerm{}
	var offset int64 = -1
	var pos int64
	wanted := map[string][]reconRange{} // xorb -> chunk ranges
	var order []string
	for _, t := range f.terms {
		xb := x.xorbs[t.xorb]
		s, e := -1, -1
		var n int64
		for i := int(t.start); i < int(t.end); i++ {
			ch := xb.chunks[i]
			cs, ce := pos, pos+int64(ch.rawLen)
			pos = ce
			if ce <= first || cs > last {
				continue
			}
			if s < 0 {
				s = i
				if offset < 0 {
					offset = first - cs
				}
			}
			e = i + 1
			n += int64(ch.rawLen)
		}
		if s < 0 {
			continue
		}
		name := t.xorb.String()
		terms = append(terms, reconTerm{Hash: name, UnpackedLength: n, Range: reconRange{int64(s), int64(e)}})
		if wanted[name] == nil {
			order = append(order, name)
		}
		wanted[name] = append(wanted[name], reconRange{int64(s), int64(e)})
	}
	var need []xorbNeed
	for _, name := range order {
		xh, _ := parseXetHash(name)
		xb := x.xorbs[xh]
		n := xorbNeed{xorb: name}
		for _, r := range mergeRanges(wanted[name]) {
			firstCh, lastCh := xb.chunks[r.Start], xb.chunks[r.End-1]
			n.ranges = append(n.ranges, struct{ chunks, bytes reconRange }{r,
				reconRange{int64(firstCh.off), int64(lastCh.off+lastCh.size) - 1}})
		}
		need = append(need, n)
	}
	return terms, max(offset, 0), need
}

// mergeRanges sorts chunk ranges and merges the ones that overlap or touch.
func mergeRanges(rs []reconRange) []reconRange {
	sorted := append([]reconRange(nil), rs...)
	for i := 1; i < len(sorted); i++ { // insertion sort: few ranges per xorb
		for j := i; j > 0 && sorted[j].Start < sorted[j-1].Start; j-- {
			sorted[j], sorted[j-1] = sorted[j-1], sorted[j]
		}
	}
	var out []reconRange
	for _, r := range sorted {
		if len(out) > 0 && r.Start <= out[len(out)-1].End {
			out[len(out)-1].End = max(out[len(out)-1].End, r.End)
			continue
		}
		out = append(out, r)
	}
	return out
}

func formatRanges(rs []reconRange) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("%d-%d", r.Start, r.End)
	}
	return "bytes=" + strings.Join(parts, ",")
}

// transferURLLocked signs a URL on the CAS host for byte ranges of a xorb. h.mu must
// be held (for the URL epoch of ExpireURLs, which these URLs obey too).
func (h *Hub) transferURLLocked(xorb string, ranges []reconRange) string {
	now := h.cfg.now()
	p := "/xorb/default/" + xorb
	q := url.Values{}
	q.Set(paramSignedRange, formatRanges(ranges))
	q.Set(paramExpires, strconv.FormatInt(now.Add(h.cfg.urlExpiry).Unix(), 10))
	q.Set(paramIssued, strconv.FormatInt(now.UnixNano(), 10))
	q.Set(paramSig, h.sign(p, q))
	return h.CASURL() + p + "?" + q.Encode()
}

// transfer serves GET /xorb/default/{hash} on a signed URL: the Range header must be
// one of the signed ranges (206 with that range) or all of them as one multi-range
// header (206 multipart/byteranges, parts in order). Like presigned storage it needs
// no Authorization and refuses one.
func (h *Hub) transfer(c *call) {
	x := h.xet
	if c.r.Header.Get("Authorization") != "" {
		x.count(func(s *XetStats) { s.AuthRejected++ })
		writeS3Error(c.w, http.StatusBadRequest, "InvalidArgument", "Only one auth mechanism allowed: this URL is presigned, send no Authorization header")
		return
	}
	if !h.checkSigned(c) {
		return
	}
	signed := c.r.URL.Query().Get(paramSignedRange)
	got := strings.ReplaceAll(c.r.Header.Get("Range"), " ", "")
	allowed := got != "" && (got == signed || strings.Contains(","+strings.TrimPrefix(signed, "bytes=")+",", ","+strings.TrimPrefix(got, "bytes=")+",") && !strings.Contains(got, ","))
	if !allowed {
		writeS3Error(c.w, http.StatusForbidden, "AccessDenied", fmt.Sprintf("Range %q is not among the signed ranges %q", c.r.Header.Get("Range"), signed))
		return
	}
	xh, err := parseXetHash(c.id)
	if err != nil {
		writeS3Error(c.w, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return
	}
	x.mu.Lock()
	xb := x.xorbs[xh]
	x.mu.Unlock()
	if xb == nil {
		writeS3Error(c.w, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return
	}
	size := int64(len(xb.data))
	var ranges []reconRange
	for _, part := range strings.Split(strings.TrimPrefix(got, "bytes="), ",") {
		a, b, ok := strings.Cut(part, "-")
		s, err1 := strconv.ParseInt(a, 10, 64)
		e, err2 := strconv.ParseInt(b, 10, 64)
		if !ok || err1 != nil || err2 != nil || s > e || e >= size {
			writeS3Error(c.w, http.StatusRequestedRangeNotSatisfiable, "InvalidRange", "The requested range is not satisfiable")
			return
		}
		ranges = append(ranges, reconRange{s, e})
	}
	var sent int64
	hd := c.w.Header()
	if len(ranges) == 1 {
		r := ranges[0]
		hd.Set("Content-Type", "application/octet-stream")
		hd.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", r.Start, r.End, size))
		hd.Set("Content-Length", itoa(r.End-r.Start+1))
		c.w.WriteHeader(http.StatusPartialContent)
		n, _ := c.w.Write(xb.data[r.Start : r.End+1])
		sent = int64(n)
	} else {
		mw := multipart.NewWriter(c.w)
		hd.Set("Content-Type", "multipart/byteranges; boundary="+mw.Boundary())
		c.w.WriteHeader(http.StatusPartialContent)
		for _, r := range ranges {
			pw, err := mw.CreatePart(textproto.MIMEHeader{
				"Content-Type":  {"application/octet-stream"},
				"Content-Range": {fmt.Sprintf("bytes %d-%d/%d", r.Start, r.End, size)},
			})
			if err != nil {
				break
			}
			n, err := pw.Write(xb.data[r.Start : r.End+1])
			sent += int64(n)
			if err != nil {
				break
			}
		}
		mw.Close()
	}
	x.count(func(s *XetStats) { s.TransferBytes += sent })
}
