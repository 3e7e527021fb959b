package mergeplan

import (
	"fmt"
	"slices"
	"strings"

	"github.com/hfmerge/hfmerge/safetensors"
)

// baseTensor is a tensor of the base checkpoint and the shard that holds it.
type baseTensor struct {
	Shard string
	T     *safetensors.Tensor
	Ref   Ref
}

// names indexes the base checkpoint's tensor names for resolving adapter names.
type names struct {
	byName map[string]*baseTensor
	byCore map[string][]string
}

// renames are prefix pairs that differ between the module paths a model class uses at
// run time (what adapter keys carry) and the names stored in checkpoints, as
// Transformers' checkpoint conversion mappings for multimodal classes define them. Each
// pair is tried in both directions.
var renames = [][2]string{
	{"model.language_model.", "language_model.model."},
	{"model.language_model.", "model."},
	{"model.language_model.", "language_model."},
	{"model.vision_tower.", "vision_tower."},
	{"model.multi_modal_projector.", "multi_modal_projector."},
	{"model.visual.", "visual."},
	{"lm_head.", "language_model.lm_head."},
}

// wrappers are path segments that only wrap a model in another; two names that differ in
// these leading segments alone name the same tensor.
var wrappers = []string{"model", "language_model", "base_model", "module"}

func newNames(shards []File) *names {
	n := &names{byName: map[string]*baseTensor{}, byCore: map[string][]string{}}
	for _, f := range shards {
		for i := range f.Header.Tensors {
			t := &f.Header.Tensors[i]
			n.byName[t.Name] = &baseTensor{Shard: f.Name, T: t, Ref: Ref{
				File: f.Name, Name: t.Name, DType: t.DType, Shape: t.Shape,
				Offset: f.Header.DataOffset + t.Begin, Len: t.Len(),
			}}
			c := core(t.Name)
			n.byCore[c] = append(n.byCore[c], t.Name)
		}
	}
	return n
}

// core drops leading wrapper segments.
func core(name string) string {
	for {
		i := strings.IndexByte(name, '.')
		if i < 0 || !slices.Contains(wrappers, name[:i]) {
			return name
		}
		name = name[i+1:]
	}
}

// resolve finds the base tensor an adapter's tensor name stands for. note says how it
// was found when the name did not match exactly.
func (n *names) resolve(name string) (found string, note string, err error) {
	if _, ok := n.byName[name]; ok {
		return name, "", nil
	}
	var cands []string
	for _, r := range renames {
		for _, dir := range [][2]string{{r[0], r[1]}, {r[1], r[0]}} {
			if rest, ok := strings.CutPrefix(name, dir[0]); ok {
				c := dir[1] + rest
				if _, ok := n.byName[c]; ok && !slices.Contains(cands, c) {
					cands = append(cands, c)
				}
			}
		}
	}
	switch len(cands) {
	case 1:
		return cands[0], fmt.Sprintf("renamed from %s", name), nil
	case 0:
	default:
		return "", "", fmt.Errorf("matches several base tensors after renaming: %s", strings.Join(cands, ", "))
	}
	// A guarded fallback: names that agree once wrapper segments are dropped, and only
	// when exactly one base tensor does.
	cands = n.byCore[core(name)]
	switch len(cands) {
	case 1:
		return cands[0], fmt.Sprintf("matched %s by its unique suffix", name), nil
	case 0:
		return "", "", nil
	default:
		return "", "", fmt.Errorf("matches several base tensors: %s", strings.Join(cands, ", "))
	}
}

// embedSuffixes name the input token embedding in the architectures Transformers ships.
var embedSuffixes = []string{"embed_tokens.weight", "wte.weight", "word_embeddings.weight",
	"embed_in.weight", "tok_embeddings.weight", "shared.weight"}

// inputEmbedding finds the base's input token embedding, or "".
func (n *names) inputEmbedding() string {
	var found []string
	for name := range n.byName {
		for _, s := range embedSuffixes {
			if name == s || strings.HasSuffix(name, "."+s) {
				found = append(found, name)
			}
		}
	}
	if len(found) == 0 {
		return ""
	}
	// Prefer the language model's when a multimodal model has several.
	slices.SortFunc(found, func(a, b string) int {
		la, lb := strings.Contains(a, "language_model"), strings.Contains(b, "language_model")
		if la != lb {
			if la {
				return -1
			}
			return 1
		}
		return len(a) - len(b)
	})
	return found[0]
}

// headName is the name an untied output head gets, next to the embedding it copies.
func headName(embed string) string {
	if strings.HasPrefix(embed, "language_model.") {
		return "language_model.lm_head.weight"
	}
	return "lm_head.weight"
}

// isHead reports whether a module path names an output head.
func isHead(module string) bool {
	l := leaf(module)
	return l == "lm_head" || l == "embed_out"
}
