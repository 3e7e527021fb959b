package merge

import (
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/safetensors"
)

// TestNonFiniteHint: a value that overflows bf16 suggests --dtype fp32; under fp32 the
// hint points at the adapter instead, since a wider dtype cannot help.
func TestNonFiniteHint(t *testing.T) {
	bf := (&NonFiniteError{Tensor: "w", DType: safetensors.BF16, Value: 1e40}).Error()
	if !strings.Contains(bf, "--dtype fp32") {
		t.Errorf("bf16: %s", bf)
	}
	f32 := (&NonFiniteError{Tensor: "w", DType: safetensors.F32, Value: 1e40}).Error()
	if strings.Contains(f32, "--dtype fp32") || !strings.Contains(f32, "check the adapter") {
		t.Errorf("fp32: %s", f32)
	}
}
