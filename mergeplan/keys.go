package mergeplan

import (
	"strings"
)

// keyKind is what an adapter tensor is, read from its key.
type keyKind int

const (
	kindFull      keyKind = iota // a whole tensor that replaces (or adds) a model tensor
	kindA                        // lora_A.weight
	kindB                        // lora_B.weight
	kindBBias                    // lora_B.bias (lora_bias)
	kindEmbA                     // lora_embedding_A
	kindEmbB                     // lora_embedding_B
	kindMagnitude                // lora_magnitude_vector (DoRA)
	kindTokens                   // token_adapter.trainable_tokens_delta
)

func (k keyKind) String() string {
	return [...]string{"full tensor", "lora_A", "lora_B", "lora_B.bias", "lora_embedding_A",
		"lora_embedding_B", "lora_magnitude_vector", "trainable_tokens_delta"}[k]
}

// adapterKey is an adapter tensor key taken apart.
type adapterKey struct {
	Key    string  // as stored in the adapter file
	Kind   keyKind // what it is
	Module string  // module path in model names (no PEFT prefix, no .base_layer)
	Param  string  // for kindFull: the model tensor name it stands for
	// Depth counts the .base_layer segments just before a lora_A or lora_B suffix: PEFT
	// nests one ParamWrapper in another for each further parameter target_parameters
	// names on a module, and the innermost (wrapped first) is the deepest.
	Depth int
}

var suffixes = []struct {
	suffix string
	kind   keyKind
}{
	{".lora_A.weight", kindA},
	{".lora_B.weight", kindB},
	{".lora_B.bias", kindBBias},
	{".lora_embedding_A", kindEmbA},
	{".lora_embedding_B", kindEmbB},
	{".lora_magnitude_vector", kindMagnitude},
	{".lora_magnitude_vector.weight", kindMagnitude},
	{".token_adapter.trainable_tokens_delta", kindTokens},
}

// foreign are markers of adapter types other than LoRA, or of LoRA keys in a form PEFT
// does not save; a key containing one is refused rather than taken for a full tensor.
var foreign = []string{"lora_A", "lora_B", "lora_E", "lora_embedding", "lora_magnitude",
	"ranknum", "hada_", "lokr_", "vera_", "ia3_", "oft_", "boft_", "trainable_tokens"}

// classify takes an adapter key apart. ok is false when the key is not one PEFT's LoRA
// writes; reason says why.
func classify(key string) (k adapterKey, reason string, ok bool) {
	name := normalize(key)
	k.Key = key
	for _, s := range suffixes {
		if m, found := strings.CutSuffix(name, s.suffix); found && m != "" {
			k.Kind = s.kind
			k.Module = stripBaseLayer(m)
			for strings.HasSuffix(m, ".base_layer") {
				k.Depth++
				m = strings.TrimSuffix(m, ".base_layer")
			}
			return k, "", true
		}
	}
	for _, seg := range strings.Split(name, ".") {
		for _, f := range foreign {
			if strings.HasPrefix(seg, f) {
				return k, "is not a key PEFT writes for a LoRA adapter (" + seg + "); is this another PEFT type, or a LoRA saved with its adapter name?", false
			}
		}
	}
	k.Kind = kindFull
	k.Param = stripBaseLayer(name)
	i := strings.LastIndexByte(k.Param, '.')
	if i <= 0 {
		return k, "is not a module parameter", false
	}
	k.Module = k.Param[:i]
	return k, "", true
}

// normalize removes what wrapping added to a name: PEFT's base_model.model. prefix, and
// the torch.compile and FSDP wrapper segments PEFT also strips.
func normalize(key string) string {
	name := strings.TrimPrefix(key, "base_model.model.")
	if !strings.Contains(name, "_orig_mod.") && !strings.Contains(name, "_fsdp_wrapped_module.") {
		return name
	}
	parts := strings.Split(name, ".")
	out := parts[:0]
	for _, p := range parts {
		if p != "_orig_mod" && p != "_fsdp_wrapped_module" {
			out = append(out, p)
		}
	}
	return strings.Join(out, ".")
}

// stripBaseLayer removes every .base_layer segment: LoRA wraps the original module as
// base_layer, possibly more than once.
func stripBaseLayer(name string) string {
	if !strings.Contains(name, "base_layer") {
		return name
	}
	parts := strings.Split(name, ".")
	out := parts[:0]
	for _, p := range parts {
		if p != "base_layer" {
			out = append(out, p)
		}
	}
	return strings.Join(out, ".")
}

// leaf is the last segment of a dotted name.
func leaf(name string) string {
	return name[strings.LastIndexByte(name, '.')+1:]
}
