// Package safetensors reads and lays out files in the safetensors format: an 8-byte
// little-endian header length N, N bytes of JSON describing every tensor, then the
// tensor bytes. The reader trusts nothing it reads: lengths are capped, offsets are
// checked against each other, the dtypes, shapes and the file size before any tensor
// byte is used.
package safetensors

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"unicode/utf8"
)

// MaxHeaderLen caps the JSON header, as the Hub's Python and JavaScript clients do.
const MaxHeaderLen = 25_000_000

// Sentinel errors; every error from this package wraps one of them.
var (
	ErrFormat         = errors.New("safetensors: invalid file")
	ErrHeaderTooLarge = errors.New("safetensors: header too large")
	ErrTruncated      = errors.New("safetensors: file truncated")
	ErrNotFound       = errors.New("safetensors: no such tensor")
)

// FormatError says what is wrong with a header, and where.
type FormatError struct {
	Tensor string // empty when the problem is not about one tensor
	Reason string
	Err    error // one of the sentinels
}

func (e *FormatError) Error() string {
	if e.Tensor != "" {
		return fmt.Sprintf("%v: tensor %q: %s", e.Err, e.Tensor, e.Reason)
	}
	return fmt.Sprintf("%v: %s", e.Err, e.Reason)
}

func (e *FormatError) Unwrap() error { return e.Err }

func formatErr(tensor, format string, args ...any) error {
	return &FormatError{Tensor: tensor, Reason: fmt.Sprintf(format, args...), Err: ErrFormat}
}

// Tensor describes one tensor. Begin and End are relative to the first byte after the
// header, as in the file.
type Tensor struct {
	Name       string
	DType      DType
	Shape      []int64
	Begin, End int64
}

// Len is the tensor's size in bytes.
func (t *Tensor) Len() int64 { return t.End - t.Begin }

// Elements is the number of elements (1 for a scalar).
func (t *Tensor) Elements() int64 {
	n, _ := elements(t.Shape)
	return n
}

// Header is a parsed, validated safetensors header.
type Header struct {
	Metadata   map[string]string // the __metadata__ entry, nil when absent
	Tensors    []Tensor          // in data order
	DataOffset int64             // where tensor bytes start: 8 + the JSON length
	Size       int64             // the size the file must have
	// PrefixSHA256 is the sha256 of the file's first DataOffset bytes (the length and
	// the JSON), so that a writer can tell whether the header it would write is
	// byte for byte this one.
	PrefixSHA256 [32]byte
	index        map[string]int
}

// Tensor returns the named tensor.
func (h *Header) Tensor(name string) (*Tensor, bool) {
	i, ok := h.index[name]
	if !ok {
		return nil, false
	}
	return &h.Tensors[i], true
}

// Section returns a reader of the named tensor's bytes within the file r.
func (h *Header) Section(r io.ReaderAt, name string) (*io.SectionReader, error) {
	t, ok := h.Tensor(name)
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	return io.NewSectionReader(r, h.DataOffset+t.Begin, t.Len()), nil
}

// HeaderLen decodes the 8-byte prefix of a file and checks it against the cap.
func HeaderLen(prefix []byte) (int64, error) {
	if len(prefix) < 8 {
		return 0, &FormatError{Reason: "shorter than the 8-byte header length", Err: ErrTruncated}
	}
	n := binary.LittleEndian.Uint64(prefix[:8])
	if n > MaxHeaderLen {
		return 0, &FormatError{Reason: fmt.Sprintf("header length %d exceeds %d", n, MaxHeaderLen), Err: ErrHeaderTooLarge}
	}
	if n < 2 {
		return 0, formatErr("", "header length %d is too small for a JSON object", n)
	}
	return int64(n), nil
}

// ReadHeader reads and validates the header of the file r of the given size. It reads
// only the header bytes.
func ReadHeader(r io.ReaderAt, size int64) (*Header, error) {
	var prefix [8]byte
	if _, err := r.ReadAt(prefix[:], 0); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &FormatError{Reason: "shorter than the 8-byte header length", Err: ErrTruncated}
		}
		return nil, fmt.Errorf("safetensors: reading header length: %w", err)
	}
	n, err := HeaderLen(prefix[:])
	if err != nil {
		return nil, err
	}
	if 8+n > size {
		return nil, &FormatError{Reason: fmt.Sprintf("header of %d bytes does not fit in a file of %d bytes", n, size), Err: ErrTruncated}
	}
	buf := make([]byte, 8+n)
	copy(buf, prefix[:])
	if _, err := io.ReadFull(io.NewSectionReader(r, 8, n), buf[8:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, &FormatError{Reason: "header cut short", Err: ErrTruncated}
		}
		return nil, fmt.Errorf("safetensors: reading header: %w", err)
	}
	return ParseHeader(buf, size)
}

// ParseHeader parses a header from the first bytes of a file (at least 8 + N of them;
// extra bytes are ignored) and validates it against the file size. Pass size < 0 to skip
// the size check, for example when the size is not known yet.
func ParseHeader(b []byte, size int64) (*Header, error) {
	n, err := HeaderLen(b)
	if err != nil {
		return nil, err
	}
	if int64(len(b)) < 8+n {
		return nil, &FormatError{Reason: fmt.Sprintf("have %d of %d header bytes", len(b), 8+n), Err: ErrTruncated}
	}
	raw := b[8 : 8+n]
	if !utf8.Valid(raw) {
		return nil, formatErr("", "header is not valid UTF-8")
	}
	if raw[0] != '{' {
		return nil, formatErr("", "header does not start with '{'")
	}
	h := &Header{DataOffset: 8 + n, PrefixSHA256: sha256.Sum256(b[:8+n]), index: map[string]int{}}
	if err := h.decode(raw); err != nil {
		return nil, err
	}
	end, err := h.validate()
	if err != nil {
		return nil, err
	}
	h.Size = h.DataOffset + end
	if size >= 0 && size != h.Size {
		if size < h.Size {
			return nil, &FormatError{Reason: fmt.Sprintf("file has %d bytes, header describes %d", size, h.Size), Err: ErrTruncated}
		}
		return nil, formatErr("", "file has %d bytes, header describes %d: trailing data", size, h.Size)
	}
	return h, nil
}

type entry struct {
	DType       *string  `json:"dtype"`
	Shape       *[]int64 `json:"shape"`
	DataOffsets *[]int64 `json:"data_offsets"`
}

// decode walks the top-level object token by token so that duplicate names are caught
// (a map would keep only the last) and ties in offsets keep the file's order.
func (h *Header) decode(raw []byte) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return formatErr("", "header is not JSON: %v", err)
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return formatErr("", "header is not JSON: %v", err)
		}
		name, _ := tok.(string)
		if name == "__metadata__" {
			if h.Metadata != nil {
				return formatErr("", "__metadata__ appears twice")
			}
			h.Metadata = map[string]string{}
			if err := dec.Decode(&h.Metadata); err != nil {
				return formatErr("", "__metadata__ must map strings to strings: %v", err)
			}
			continue
		}
		if _, dup := h.index[name]; dup {
			return formatErr(name, "appears twice in the header")
		}
		var e entry
		if err := dec.Decode(&e); err != nil {
			return formatErr(name, "bad entry (invalid JSON, or wrong types): %v", err)
		}
		if e.DType == nil || e.Shape == nil || e.DataOffsets == nil {
			return formatErr(name, "entry needs dtype, shape and data_offsets")
		}
		if len(*e.DataOffsets) != 2 {
			return formatErr(name, "data_offsets must have two numbers")
		}
		h.index[name] = len(h.Tensors)
		h.Tensors = append(h.Tensors, Tensor{
			Name:  name,
			DType: DType(*e.DType),
			Shape: *e.Shape,
			Begin: (*e.DataOffsets)[0],
			End:   (*e.DataOffsets)[1],
		})
	}
	if _, err := dec.Token(); err != nil {
		return formatErr("", "header is not JSON: %v", err)
	}
	rest := raw[dec.InputOffset():]
	if len(bytes.TrimRight(rest, " \t\r\n")) != 0 {
		return formatErr("", "unexpected bytes after the header object")
	}
	return nil
}

// validate sorts tensors into data order and checks that they tile the data section
// exactly. It returns the data section's length.
func (h *Header) validate() (int64, error) {
	slices.SortStableFunc(h.Tensors, func(a, b Tensor) int {
		if c := cmp.Compare(a.Begin, b.Begin); c != 0 {
			return c
		}
		return cmp.Compare(a.End, b.End)
	})
	var pos int64
	for i := range h.Tensors {
		t := &h.Tensors[i]
		h.index[t.Name] = i
		if t.Begin != pos {
			if t.Begin < pos {
				return 0, formatErr(t.Name, "data_offsets [%d, %d] overlap the previous tensor, which ends at %d", t.Begin, t.End, pos)
			}
			return 0, formatErr(t.Name, "data_offsets [%d, %d] leave a gap after offset %d", t.Begin, t.End, pos)
		}
		if t.End < t.Begin {
			return 0, formatErr(t.Name, "data_offsets [%d, %d] end before they begin", t.Begin, t.End)
		}
		n, ok := elements(t.Shape)
		if !ok {
			return 0, formatErr(t.Name, "shape %v is negative or overflows", t.Shape)
		}
		if t.DType.Known() {
			want, ok := t.DType.ByteLen(n)
			if !ok {
				return 0, formatErr(t.Name, "%d elements of %s are not a whole number of bytes", n, t.DType)
			}
			if want != t.Len() {
				return 0, formatErr(t.Name, "%s %v needs %d bytes, data_offsets give %d", t.DType, t.Shape, want, t.Len())
			}
		}
		pos = t.End
	}
	return pos, nil
}

func elements(shape []int64) (int64, bool) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, false
		}
		if d != 0 && n > (1<<62)/d {
			return 0, false
		}
		n *= d
	}
	return n, true
}
