package safetensors_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/safetensors"
)

func file(t testing.TB, meta map[string]string, entries []safetensors.Entry) []byte {
	t.Helper()
	data := make([][]byte, len(entries))
	for i, e := range entries {
		n := int64(1)
		for _, d := range e.Shape {
			n *= d
		}
		l, ok := e.DType.ByteLen(n)
		if !ok {
			l = e.Len
		}
		data[i] = bytes.Repeat([]byte{byte(i + 1)}, int(l))
	}
	var b bytes.Buffer
	if err := safetensors.Write(&b, meta, entries, data); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// raw builds a file from a header written by hand and n data bytes.
func raw(header string, n int) []byte {
	b := make([]byte, 8, 8+len(header)+n)
	binary.LittleEndian.PutUint64(b, uint64(len(header)))
	b = append(b, header...)
	return append(b, make([]byte, n)...)
}

func TestRoundTrip(t *testing.T) {
	entries := []safetensors.Entry{
		{Name: "b.weight", DType: safetensors.BF16, Shape: []int64{3, 5}},
		{Name: "a.weight", DType: safetensors.F32, Shape: []int64{2}},
		{Name: "scalar", DType: safetensors.I64, Shape: []int64{}},
		{Name: "empty", DType: safetensors.F16, Shape: []int64{0, 4}},
		{Name: "packed", DType: safetensors.F4, Shape: []int64{2, 3}},
		{Name: "future", DType: "F3_E1M1", Shape: []int64{7}, Len: 3},
		{Name: `quote"and<html>`, DType: safetensors.U8, Shape: []int64{1}},
	}
	b := file(t, map[string]string{"format": "pt", "z": "1"}, entries)
	h, err := safetensors.ReadHeader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if (h.DataOffset-8)%8 != 0 || h.Size != int64(len(b)) {
		t.Errorf("header length %d not padded to 8, or size %d != %d", h.DataOffset-8, h.Size, len(b))
	}
	if h.Metadata["format"] != "pt" || h.Metadata["z"] != "1" {
		t.Errorf("metadata %v", h.Metadata)
	}
	var names []string
	for _, x := range h.Tensors {
		names = append(names, x.Name)
	}
	want := []string{"b.weight", "a.weight", "scalar", "empty", "packed", "future", `quote"and<html>`}
	if !slices.Equal(names, want) {
		t.Errorf("data order %v, want %v", names, want)
	}
	x, _ := h.Tensor("packed")
	if x.Len() != 3 {
		t.Errorf("F4 (2,3) has %d bytes, want 3", x.Len())
	}
	s, err := h.Section(bytes.NewReader(b), "a.weight")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(s)
	if !bytes.Equal(got, bytes.Repeat([]byte{2}, 8)) {
		t.Errorf("section of a.weight = %v", got)
	}
	if _, err := h.Section(bytes.NewReader(b), "nope"); !errors.Is(err, safetensors.ErrNotFound) {
		t.Errorf("missing tensor: %v", err)
	}
	// The same input always gives the same bytes.
	if !bytes.Equal(b, file(t, map[string]string{"z": "1", "format": "pt"}, entries)) {
		t.Error("layout is not deterministic")
	}
}

func TestRejects(t *testing.T) {
	ok := `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`
	cases := []struct {
		name   string
		file   []byte
		size   int64 // -1: len(file)
		err    error
		phrase string
	}{
		{"header length over the cap", func() []byte {
			b := make([]byte, 16)
			binary.LittleEndian.PutUint64(b, safetensors.MaxHeaderLen+1)
			return b
		}(), -1, safetensors.ErrHeaderTooLarge, "exceeds"},
		{"header longer than the file", raw(ok, 8)[:30], -1, safetensors.ErrTruncated, "does not fit"},
		{"shorter than 8 bytes", []byte{1, 2, 3}, -1, safetensors.ErrTruncated, "8-byte"},
		{"data cut short", raw(ok, 5), -1, safetensors.ErrTruncated, "describes"},
		{"trailing data", raw(ok, 9), -1, safetensors.ErrFormat, "trailing"},
		{"overlap", raw(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}`, 6), -1, safetensors.ErrFormat, "overlap"},
		{"gap", raw(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}}`, 8), -1, safetensors.ErrFormat, "gap"},
		{"not from zero", raw(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}`, 6), -1, safetensors.ErrFormat, "gap"},
		{"dtype times shape", raw(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, 8), -1, safetensors.ErrFormat, "needs 12 bytes"},
		{"negative dim", raw(`{"a":{"dtype":"U8","shape":[-2],"data_offsets":[0,0]}}`, 0), -1, safetensors.ErrFormat, "negative"},
		{"overflowing shape", raw(`{"a":{"dtype":"U8","shape":[4294967296,4294967296,4],"data_offsets":[0,0]}}`, 0), -1, safetensors.ErrFormat, "overflows"},
		{"end before begin", raw(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"U8","shape":[0],"data_offsets":[0,-1]}}`, 0), -1, safetensors.ErrFormat, ""},
		{"duplicate name", raw(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, 2), -1, safetensors.ErrFormat, "twice"},
		{"not JSON", raw(`{"a":`+strings.Repeat(" ", 3), 0), -1, safetensors.ErrFormat, "JSON"},
		{"not an object start", raw(` {"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, 1), -1, safetensors.ErrFormat, "'{'"},
		{"invalid UTF-8", raw("{\"\xff\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1), -1, safetensors.ErrFormat, "UTF-8"},
		{"missing field", raw(`{"a":{"dtype":"U8","shape":[1]}}`, 1), -1, safetensors.ErrFormat, "data_offsets"},
		{"three offsets", raw(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}`, 1), -1, safetensors.ErrFormat, "two numbers"},
		{"fractional shape", raw(`{"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}}`, 1), -1, safetensors.ErrFormat, "bad entry"},
		{"metadata not strings", raw(`{"__metadata__":{"a":1}}`, 0), -1, safetensors.ErrFormat, "__metadata__"},
		{"bytes after the object", raw(`{}x`, 0), -1, safetensors.ErrFormat, "after the header"},
		{"odd bit count", raw(`{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}`, 1), -1, safetensors.ErrFormat, "whole number"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			size := c.size
			if size < 0 {
				size = int64(len(c.file))
			}
			_, err := safetensors.ReadHeader(bytes.NewReader(c.file), size)
			if !errors.Is(err, c.err) {
				t.Fatalf("error %v, want %v", err, c.err)
			}
			if !strings.Contains(err.Error(), c.phrase) {
				t.Errorf("error %q does not say %q", err, c.phrase)
			}
		})
	}
}

// TestUnknownDType: a dtype the format does not define is carried as opaque bytes.
func TestUnknownDType(t *testing.T) {
	b := raw(`{"x":{"dtype":"F2_E1M0","shape":[10],"data_offsets":[0,3]}}`, 3)
	h, err := safetensors.ReadHeader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if x, _ := h.Tensor("x"); x.Len() != 3 || x.DType.Known() {
		t.Errorf("tensor %+v", x)
	}
}

// TestHeaderReadOnly: reading a header reads the header and nothing else.
func TestHeaderReadOnly(t *testing.T) {
	b := file(t, nil, []safetensors.Entry{{Name: "w", DType: safetensors.F32, Shape: []int64{1000}}})
	cr := &countReader{r: bytes.NewReader(b)}
	h, err := safetensors.ReadHeader(cr, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if cr.n != h.DataOffset {
		t.Errorf("read %d bytes, header is %d", cr.n, h.DataOffset)
	}
}

type countReader struct {
	r io.ReaderAt
	n int64
}

func (c *countReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n += int64(n)
	return n, err
}
