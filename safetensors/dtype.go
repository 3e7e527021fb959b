package safetensors

// DType is a tensor element type as spelled in a safetensors header ("BF16", "F32", ...).
// Names the format does not define are kept as they are: such tensors can be carried
// through byte for byte, but their element size is unknown.
type DType string

// The element types the safetensors format defines.
const (
	BOOL   DType = "BOOL"
	F4     DType = "F4"
	F6E2M3 DType = "F6_E2M3"
	F6E3M2 DType = "F6_E3M2"
	U8     DType = "U8"
	I8     DType = "I8"
	F8E5M2 DType = "F8_E5M2"
	F8E4M3 DType = "F8_E4M3"
	F8E8M0 DType = "F8_E8M0"
	I16    DType = "I16"
	U16    DType = "U16"
	F16    DType = "F16"
	BF16   DType = "BF16"
	I32    DType = "I32"
	U32    DType = "U32"
	F32    DType = "F32"
	C64    DType = "C64"
	F64    DType = "F64"
	I64    DType = "I64"
	U64    DType = "U64"
)

// Bits is the size of one element in bits, or 0 for a name the format does not define.
func (d DType) Bits() int {
	switch d {
	case F4:
		return 4
	case F6E2M3, F6E3M2:
		return 6
	case BOOL, U8, I8, F8E5M2, F8E4M3, F8E8M0:
		return 8
	case I16, U16, F16, BF16:
		return 16
	case I32, U32, F32:
		return 32
	case C64, F64, I64, U64:
		return 64
	}
	return 0
}

// Known reports whether the format defines d.
func (d DType) Known() bool { return d.Bits() != 0 }

// Float reports whether d is one of the float types hfmerge computes with.
func (d DType) Float() bool { return d == F16 || d == BF16 || d == F32 }

// ByteLen is the number of bytes n elements of d occupy, and false when that is not a
// whole number of bytes, overflows, or d is unknown.
func (d DType) ByteLen(n int64) (int64, bool) {
	b := int64(d.Bits())
	if b == 0 || n < 0 {
		return 0, false
	}
	if n > (1<<62)/b {
		return 0, false
	}
	bits := n * b
	if bits%8 != 0 {
		return 0, false
	}
	return bits / 8, true
}
