package safetensors_test

import (
	"bytes"
	"slices"
	"testing"

	"github.com/hfmerge/hfmerge/safetensors"
)

// FuzzReadHeader feeds arbitrary files to the header parser. It must never panic or
// allocate more than the cap, and whatever it accepts must tile the data section exactly
// and lay out again to the same tensors.
func FuzzReadHeader(f *testing.F) {
	f.Add(raw(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 8))
	f.Add(raw(`{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"a":{"dtype":"U8","shape":[],"data_offsets":[8,9]}}`, 9))
	f.Add(raw(`{"x":{"dtype":"F4","shape":[4],"data_offsets":[0,2]},"y":{"dtype":"NEW","shape":[3],"data_offsets":[2,5]}}   `, 5))
	f.Add(raw(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}`, 6))
	f.Add(raw(`{}`, 0))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := safetensors.ReadHeader(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		if h.Size != int64(len(b)) || h.DataOffset > h.Size {
			t.Fatalf("accepted sizes: header end %d, size %d, file %d", h.DataOffset, h.Size, len(b))
		}
		var pos int64
		entries := make([]safetensors.Entry, 0, len(h.Tensors))
		for _, x := range h.Tensors {
			if x.Begin != pos || x.End < x.Begin {
				t.Fatalf("accepted %s at [%d, %d] after %d", x.Name, x.Begin, x.End, pos)
			}
			pos = x.End
			if got, ok := h.Tensor(x.Name); !ok || got.Begin != x.Begin {
				t.Fatalf("index lost %s", x.Name)
			}
			entries = append(entries, safetensors.Entry{Name: x.Name, DType: x.DType, Shape: x.Shape, Len: x.Len()})
		}
		if h.DataOffset+pos != h.Size {
			t.Fatalf("tensors end at %d, file at %d", h.DataOffset+pos, h.Size)
		}
		l, err := safetensors.NewLayout(h.Metadata, entries)
		if err != nil {
			t.Fatalf("accepted header does not lay out again: %v", err)
		}
		h2, err := l.Header()
		if err != nil {
			t.Fatalf("laid-out header does not parse: %v", err)
		}
		if !slices.EqualFunc(h.Tensors, h2.Tensors, func(a, b safetensors.Tensor) bool {
			return a.Name == b.Name && a.DType == b.DType && slices.Equal(a.Shape, b.Shape) && a.Begin == b.Begin && a.End == b.End
		}) {
			t.Fatalf("layout changed the tensors")
		}
	})
}
