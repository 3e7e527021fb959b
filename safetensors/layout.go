package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
)

// Entry describes one tensor of a file to be written.
type Entry struct {
	Name  string
	DType DType
	Shape []int64
	// Len is the byte length; it is needed only for a DType the format does not define
	// and is checked against dtype × shape otherwise.
	Len int64
}

// Layout is a file's header and tensor placement, computed before any tensor byte
// exists, so that the file's size and every tensor's offset are known up front.
type Layout struct {
	Prefix  []byte   // the 8-byte length and the padded JSON header
	Tensors []Tensor // offsets relative to the end of Prefix, in the order given
	Size    int64    // the whole file
}

// NewLayout places the entries in the order given. The header lists __metadata__ first
// (keys sorted) and then the tensors in data order, padded with spaces to a multiple of
// 8 bytes as the reference writer does, so the same input always gives the same bytes.
func NewLayout(metadata map[string]string, entries []Entry) (*Layout, error) {
	var js bytes.Buffer
	js.WriteByte('{')
	first := true
	sep := func() {
		if !first {
			js.WriteByte(',')
		}
		first = false
	}
	if metadata != nil {
		sep()
		js.WriteString(`"__metadata__":{`)
		keys := make([]string, 0, len(metadata))
		for k := range metadata {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				js.WriteByte(',')
			}
			writeString(&js, k)
			js.WriteByte(':')
			writeString(&js, metadata[k])
		}
		js.WriteByte('}')
	}
	l := &Layout{Tensors: make([]Tensor, 0, len(entries))}
	seen := make(map[string]bool, len(entries))
	var pos int64
	for _, e := range entries {
		if e.Name == "__metadata__" || seen[e.Name] {
			return nil, formatErr(e.Name, "name is reserved or given twice")
		}
		seen[e.Name] = true
		n, ok := elements(e.Shape)
		if !ok {
			return nil, formatErr(e.Name, "shape %v is negative or overflows", e.Shape)
		}
		size := e.Len
		if e.DType.Known() {
			want, ok := e.DType.ByteLen(n)
			if !ok || (e.Len != 0 && e.Len != want) {
				return nil, formatErr(e.Name, "length %d does not fit %s %v", e.Len, e.DType, e.Shape)
			}
			size = want
		}
		t := Tensor{Name: e.Name, DType: e.DType, Shape: slices.Clone(e.Shape), Begin: pos, End: pos + size}
		pos = t.End
		l.Tensors = append(l.Tensors, t)
		sep()
		writeString(&js, e.Name)
		js.WriteString(`:{"dtype":`)
		writeString(&js, string(e.DType))
		js.WriteString(`,"shape":[`)
		for i, d := range e.Shape {
			if i > 0 {
				js.WriteByte(',')
			}
			js.WriteString(strconv.FormatInt(d, 10))
		}
		fmt.Fprintf(&js, `],"data_offsets":[%d,%d]}`, t.Begin, t.End)
	}
	js.WriteByte('}')
	for js.Len()%8 != 0 {
		js.WriteByte(' ')
	}
	if js.Len() > MaxHeaderLen {
		return nil, &FormatError{Reason: fmt.Sprintf("header of %d bytes exceeds %d", js.Len(), MaxHeaderLen), Err: ErrHeaderTooLarge}
	}
	l.Prefix = make([]byte, 8, 8+js.Len())
	binary.LittleEndian.PutUint64(l.Prefix, uint64(js.Len()))
	l.Prefix = append(l.Prefix, js.Bytes()...)
	l.Size = int64(len(l.Prefix)) + pos
	return l, nil
}

// DataOffset is where tensor bytes start in the file.
func (l *Layout) DataOffset() int64 { return int64(len(l.Prefix)) }

// Header returns the parsed form of the layout, as a reader of the finished file would
// see it.
func (l *Layout) Header() (*Header, error) { return ParseHeader(l.Prefix, l.Size) }

func writeString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)       // a string always encodes
	b.Truncate(b.Len() - 1) // Encode appends a newline
}

// Write writes a whole file from tensors held in memory, in the order given. It is
// meant for small files: fixtures, adapters, tests.
func Write(w io.Writer, metadata map[string]string, entries []Entry, data [][]byte) error {
	if len(entries) != len(data) {
		return fmt.Errorf("safetensors: %d entries but %d data buffers", len(entries), len(data))
	}
	entries = slices.Clone(entries)
	for i := range entries {
		if !entries[i].DType.Known() {
			entries[i].Len = int64(len(data[i]))
		}
	}
	l, err := NewLayout(metadata, entries)
	if err != nil {
		return err
	}
	for i, t := range l.Tensors {
		if int64(len(data[i])) != t.Len() {
			return formatErr(t.Name, "have %d bytes, layout needs %d", len(data[i]), t.Len())
		}
	}
	if _, err := w.Write(l.Prefix); err != nil {
		return err
	}
	for _, d := range data {
		if _, err := w.Write(d); err != nil {
			return err
		}
	}
	return nil
}
