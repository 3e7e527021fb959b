package mergeplan

import (
	"fmt"
	"slices"
	"strings"
)

// module gathers the adapter keys of one module path (and, for the nested ParamWrappers
// of target_parameters, one nesting depth).
type module struct {
	name  string
	depth int
	keys  map[keyKind]adapterKey
}

func (m *module) has(k keyKind) bool { _, ok := m.keys[k]; return ok }

// plan turns every adapter key into operations on output tensors. Replacements come
// first because they may change a tensor's shape (a resized vocabulary) that deltas are
// then checked against.
func (b *builder) plan() {
	mods := map[string]*module{}
	var fulls []adapterKey
	for _, key := range sortedKeys(b.adapter) {
		k, reason, ok := classify(key)
		if !ok {
			b.problem(AdapterFile+": "+key, "%s", reason)
			continue
		}
		if k.Kind == kindFull {
			fulls = append(fulls, k)
			continue
		}
		id := k.Module
		if k.Depth > 0 && len(b.cfg.TargetParameters) > 0 {
			id = fmt.Sprintf("%s (base_layer %d)", k.Module, k.Depth)
		}
		m := mods[id]
		if m == nil {
			m = &module{name: k.Module, depth: k.Depth, keys: map[keyKind]adapterKey{}}
			mods[id] = m
		}
		if prev, dup := m.keys[k.Kind]; dup {
			b.problem(AdapterFile+": "+key, "is a second %s for module %s (the first is %s)", k.Kind, k.Module, prev.Key)
			continue
		}
		m.keys[k.Kind] = k
	}
	b.embed = b.base.inputEmbedding()
	b.head = b.newHead()
	for _, k := range fulls {
		b.replace(k)
	}
	b.syncHead()
	names := sortedKeys(mods)
	for _, n := range names {
		if m := mods[n]; m.has(kindTokens) {
			b.tokens(m)
		}
	}
	for _, n := range names {
		b.lora(mods[n])
	}
	b.resolveSquare()
	b.tie()
	for _, key := range sortedKeys(b.adapter) {
		if !b.used[key] && !b.failed(key) {
			b.problem(AdapterFile+": "+key, "was not used by the plan")
		}
	}
	for _, u := range b.scales.unused() {
		b.warn(AdapterConfigFile, "%s matches no module of the adapter; PEFT ignores it too", u)
	}
	b.checkTargets(mods)
}

// failed reports whether a problem was already recorded for this adapter key, so that it
// is not reported twice.
func (b *builder) failed(key string) bool {
	for _, p := range b.p.Problems {
		if strings.Contains(p.Subject, key) || strings.Contains(p.Message, key) {
			return true
		}
	}
	return false
}

// target finds the output tensor an adapter name stands for.
func (b *builder) target(param, module, key string) *Tensor {
	found, note, err := b.base.resolve(param)
	if err != nil {
		b.problem(AdapterFile+": "+key, "%s %v", param, err)
		return nil
	}
	if found != "" {
		t := b.out(found)
		if note != "" {
			b.notes[key] = note
		}
		return t
	}
	if b.head.possible && isHead(module) {
		return b.head.pending(b)
	}
	return nil
}

func (b *builder) replace(k adapterKey) {
	ref := b.adapter[k.Key]
	subject := AdapterFile + ": " + k.Key
	b.used[k.Key] = true
	t := b.target(k.Param, k.Module, k.Key)
	if t == nil {
		if b.failed(k.Key) {
			return
		}
		if !b.savedModule(k.Module) {
			b.problem(subject, "stands for %s, which is not in the base model (and %s is not in modules_to_save)", k.Param, k.Module)
			return
		}
		dt := ref.DType
		if dt.Float() {
			dt = b.dominantFloat()
		}
		t = &Tensor{Name: k.Param, DType: dt, Shape: ref.Shape, Source: ref, New: true,
			Reason: "new module from modules_to_save"}
		b.outs[k.Param] = t
		b.added = append(b.added, k.Param)
		b.module(Module{Name: k.Module, Target: k.Param, Kind: "new"}, k.Key)
		return
	}
	if t.Source.Adapter() {
		b.problem(subject, "replaces %s, which %s already replaces", t.Name, t.Source.Name)
		return
	}
	if !slices.Equal(t.Shape, ref.Shape) {
		resized := len(t.Shape) == 2 && len(ref.Shape) == 2 && t.Shape[1] == ref.Shape[1]
		if !resized {
			b.problem(subject, "has shape %s but %s in the base has %s", shapeString(ref.Shape), t.Name, shapeString(t.Shape))
			return
		}
		b.warn(t.Name, "is resized from %d to %d rows by the adapter", t.Shape[0], ref.Shape[0])
	}
	if ref.DType != t.DType && !(ref.DType.Float() && t.DType.Float()) {
		b.problem(subject, "is %s but %s in the base is %s", ref.DType, t.Name, t.DType)
		return
	}
	t.Source = ref
	t.Shape = ref.Shape
	t.Dequant = nil // the trained copy is real values
	t.Reason = "replaced by the adapter's trained copy"
	kind := "replace"
	if strings.Contains(k.Key, "base_layer") {
		kind = "replace-base-layer"
	}
	if t == b.head.t {
		b.head.replaced = true
	} else if t.Name == b.embed {
		b.head.embedKind = kind
	}
	b.module(Module{Name: k.Module, Target: t.Name, Kind: kind}, k.Key)
}

// savedModule reports whether modules_to_save names the module.
func (b *builder) savedModule(module string) bool {
	for _, m := range b.cfg.ModulesToSave {
		if module == m || strings.HasSuffix(module, "."+m) {
			return true
		}
	}
	return false
}

func (b *builder) tokens(m *module) {
	k := m.keys[kindTokens]
	ref := b.adapter[k.Key]
	subject := AdapterFile + ": " + k.Key
	b.used[k.Key] = true
	t := b.target(m.name+".weight", m.name, k.Key)
	if t == nil {
		if !b.failed(k.Key) {
			b.problem(subject, "stands for %s.weight, which is not in the base model", m.name)
		}
		return
	}
	ids, ok := b.tokenIDs(m.name, t.Name)
	if !ok {
		b.problem(subject, "has trained token rows, but trainable_token_indices in %s names no token ids for %s", AdapterConfigFile, m.name)
		return
	}
	if len(t.Shape) != 2 || len(ref.Shape) != 2 || ref.Shape[0] != int64(len(ids)) || ref.Shape[1] != t.Shape[1] {
		b.problem(subject, "has shape %s; %d token ids on %s %s need (%d, %d)",
			shapeString(ref.Shape), len(ids), t.Name, shapeString(t.Shape), len(ids), cols(t.Shape))
		return
	}
	seen := map[int64]bool{}
	for _, id := range ids {
		if id >= t.Shape[0] {
			b.problem(AdapterConfigFile+": trainable_token_indices", "token id %d is out of range for %s with %d rows", id, t.Name, t.Shape[0])
			return
		}
		if seen[id] {
			b.problem(AdapterConfigFile+": trainable_token_indices", "token id %d is given twice", id)
			return
		}
		seen[id] = true
	}
	if !ref.DType.Float() {
		b.problem(subject, "is %s; trained token rows must be float", ref.DType)
		return
	}
	t.Patches = append(t.Patches, RowPatch{Indices: ids, Values: ref})
	t.Reason = "trained token rows"
	b.module(Module{Name: m.name, Target: t.Name, Kind: "tokens"}, k.Key)
}

// tokenIDs finds the token ids trained for a module: a dict entry naming it, or the list
// form, which means the input embedding.
func (b *builder) tokenIDs(module, tensor string) ([]int64, bool) {
	for name, ids := range b.cfg.TrainableTokens {
		if name != "" && (module == name || strings.HasSuffix(module, "."+name)) {
			return ids, true
		}
	}
	ids, ok := b.cfg.TrainableTokens[""]
	if ok && (tensor == b.embed || len(b.cfg.TrainableTokens) == 1) {
		return ids, true
	}
	return nil, false
}

func (b *builder) module(m Module, key string) {
	if n, ok := b.notes[key]; ok {
		m.Note = n
	}
	b.p.Modules = append(b.p.Modules, m)
}

// lora plans the low-rank update of one module.
func (b *builder) lora(m *module) {
	if params := b.paramTargets(m.name); len(params) > 0 {
		if found, _, _ := b.base.resolve(m.name + ".weight"); found == "" {
			b.experts(m, params)
			return
		}
	}
	linear := m.has(kindA) || m.has(kindB)
	embedding := m.has(kindEmbA) || m.has(kindEmbB)
	var some adapterKey
	for _, k := range m.keys {
		some = k
	}
	switch {
	case linear && embedding:
		b.problem(AdapterFile+": "+m.name, "has both lora_A/lora_B and lora_embedding_A/B")
		b.markUsed(m)
		return
	case !linear && !embedding:
		for kind, k := range m.keys {
			if kind != kindTokens {
				b.problem(AdapterFile+": "+k.Key, "is a %s without lora_A and lora_B for module %s", kind, m.name)
				b.used[k.Key] = true
			}
		}
		return
	}
	b.markUsed(m)
	aKind, bKind := kindA, kindB
	if embedding {
		aKind, bKind = kindEmbA, kindEmbB
	}
	ka, okA := m.keys[aKind]
	kb, okB := m.keys[bKind]
	if !okA || !okB {
		missing := bKind
		if !okA {
			missing = aKind
		}
		b.problem(AdapterFile+": "+some.Key, "module %s has no %s", m.name, missing)
		return
	}
	A, B := b.adapter[ka.Key], b.adapter[kb.Key]
	subject := AdapterFile + ": " + m.name
	if len(A.Shape) > 2 || len(B.Shape) > 2 {
		b.problem(subject, "lora_A %s and lora_B %s are not matrices: LoRA on convolution layers is not supported", shapeString(A.Shape), shapeString(B.Shape))
		return
	}
	if len(A.Shape) != 2 || len(B.Shape) != 2 {
		b.problem(subject, "%s %s and %s %s must be matrices", aKind, shapeString(A.Shape), bKind, shapeString(B.Shape))
		return
	}
	for _, ref := range []Ref{A, B} {
		if !ref.DType.Float() {
			b.problem(AdapterFile+": "+ref.Name, "is %s; hfmerge reads adapter weights in BF16, F16 or F32", ref.DType)
			return
		}
	}
	r, alpha, scale, err := b.scales.of(m.name)
	if err != nil {
		b.problem(AdapterConfigFile, "%v", err)
		return
	}
	if A.Shape[0] != int64(r) || B.Shape[1] != int64(r) {
		b.problem(subject, "rank mismatch: %s has %d rows and %s has %d columns, but %s gives r = %d for this module (r, rank_pattern)",
			aKind, A.Shape[0], bKind, B.Shape[1], AdapterConfigFile, r)
		return
	}
	t := b.target(m.name+".weight", m.name, ka.Key)
	if t == nil && !embedding && !b.failed(ka.Key) && b.fusedLinear(m, ka, A, B, r, alpha, scale) {
		return
	}
	if t == nil {
		if !b.failed(ka.Key) {
			b.problem(subject, "is not in the base model: no tensor %s.weight (the adapter may be for another model)", m.name)
		}
		return
	}
	if !t.Source.DType.Float() && t.Dequant == nil {
		b.problem(t.Name, "is %s: hfmerge merges into BF16, F16 and F32 weights; use the unquantized base model", t.Source.DType)
		return
	}
	if len(t.Shape) != 2 {
		b.problem(subject, "targets %s with shape %s, which is not a matrix", t.Name, shapeString(t.Shape))
		return
	}
	d := Delta{Module: m.name, A: A, B: B, Rank: r, Scale: scale}
	kind := "linear"
	if embedding {
		// lora_embedding_A is (r, vocab) and lora_embedding_B (dim, r); the weight is (vocab, dim).
		if t.Shape[0] != A.Shape[1] || t.Shape[1] != B.Shape[0] {
			b.problem(subject, "lora_embedding_A %s and lora_embedding_B %s do not fit %s %s", shapeString(A.Shape), shapeString(B.Shape), t.Name, shapeString(t.Shape))
			return
		}
		d.Transposed = true
		kind = "embedding"
	} else {
		tr, ok := b.orientation(m.name, t, A, B)
		if !ok {
			return
		}
		d.Transposed = tr
		if tr {
			kind = "conv1d"
		}
	}
	t.Deltas = append(t.Deltas, d)
	t.Reason = "merged"
	if t == b.head.t {
		b.head.own = true
	}
	b.module(Module{Name: m.name, Target: t.Name, Kind: kind, Rank: r, Alpha: alpha, Scale: scale}, ka.Key)
	b.dora(m, t, d, kind)
	b.loraBias(m, t, d)
}

func (b *builder) markUsed(m *module) {
	for kind, k := range m.keys {
		if kind != kindTokens {
			b.used[k.Key] = true
		}
	}
}

// orientation decides whether the base stores the weight as (out, in) like nn.Linear or
// as (in, out) like GPT-2's Conv1D. Shapes decide when they can; a square weight is
// decided by the architecture, then by the config's fan_in_fan_out.
func (b *builder) orientation(module string, t *Tensor, A, B Ref) (transposed, ok bool) {
	in, out := A.Shape[1], B.Shape[0]
	rowsT, colsT := t.Shape[0], t.Shape[1]
	linear := rowsT == out && colsT == in
	conv := rowsT == in && colsT == out
	switch {
	case linear && conv:
		if c, known := conv1DModule(b.modelType(), leaf(module)); known {
			return c, true
		}
		return b.cfg.FanInFanOut, true
	case linear:
		return false, true
	case conv:
		return true, true
	}
	b.problem(AdapterFile+": "+module, "lora_A %s and lora_B %s give a delta of (%d, %d), which does not fit %s %s",
		shapeString(A.Shape), shapeString(B.Shape), out, in, t.Name, shapeString(t.Shape))
	return false, false
}

// conv1DModules lists, per model_type, the modules Transformers builds as Conv1D.
var conv1DModules = map[string][]string{
	"gpt2":                 {"c_attn", "c_proj", "c_fc", "q_attn"},
	"decision_transformer": {"c_attn", "c_proj", "c_fc", "q_attn"},
	"imagegpt":             {"c_attn", "c_proj", "c_fc"},
	"openai-gpt":           {"c_attn", "c_proj", "c_fc"},
}

// conv1DModule says whether a module of this architecture is a Conv1D, and whether the
// architecture is known.
func conv1DModule(modelType, leafName string) (conv, known bool) {
	mods, ok := conv1DModules[modelType]
	if !ok {
		return false, false
	}
	return slices.Contains(mods, leafName), true
}

func (b *builder) modelType() string {
	s, _ := b.conf["model_type"].(string)
	return s
}

func (b *builder) dora(m *module, t *Tensor, d Delta, kind string) {
	k, has := m.keys[kindMagnitude]
	if !has {
		if b.cfg.UseDoRA {
			b.problem(AdapterFile+": "+m.name, "use_dora is set but the adapter has no lora_magnitude_vector for this module")
		}
		return
	}
	subject := AdapterFile + ": " + k.Key
	if !b.cfg.UseDoRA {
		b.problem(subject, "is a DoRA magnitude, but use_dora is not set in %s", AdapterConfigFile)
		return
	}
	ref := b.adapter[k.Key]
	n := t.Shape[0]
	axis := PerRow
	if d.Transposed {
		n, axis = t.Shape[1], PerCol
	}
	if cols(ref.Shape) != n || len(ref.Shape) != 1 {
		b.problem(subject, "has shape %s; %s %s needs (%d)", shapeString(ref.Shape), t.Name, shapeString(t.Shape), n)
		return
	}
	if !ref.DType.Float() {
		b.problem(subject, "is %s; hfmerge reads adapter weights in BF16, F16 or F32", ref.DType)
		return
	}
	if t.DoRA != nil {
		b.problem(subject, "is a second DoRA magnitude for %s", t.Name)
		return
	}
	t.DoRA = &DoRA{Magnitude: ref, Axis: axis}
	b.p.Modules[len(b.p.Modules)-1].Kind = "dora-" + kind
}

func (b *builder) loraBias(m *module, t *Tensor, d Delta) {
	k, has := m.keys[kindBBias]
	if !has {
		return
	}
	subject := AdapterFile + ": " + k.Key
	if !b.cfg.LoRABias {
		b.problem(subject, "is a lora_B bias, but lora_bias is false in %s, so PEFT ignores it; set lora_bias to true if it was trained", AdapterConfigFile)
		return
	}
	if d.Transposed && d.A.Shape[1] == t.Shape[0] && m.has(kindEmbA) {
		b.problem(subject, "lora_bias is not allowed on an embedding")
		return
	}
	bt := b.target(m.name+".bias", m.name, k.Key)
	if bt == nil {
		b.problem(subject, "needs a bias in the base, but %s.bias does not exist", m.name)
		return
	}
	ref := b.adapter[k.Key]
	if !slices.Equal(ref.Shape, bt.Shape) || len(ref.Shape) != 1 {
		b.problem(subject, "has shape %s but %s has %s", shapeString(ref.Shape), bt.Name, shapeString(bt.Shape))
		return
	}
	if !ref.DType.Float() || !bt.Source.DType.Float() {
		b.problem(subject, "and %s must be float", bt.Name)
		return
	}
	bt.Deltas = append(bt.Deltas, Delta{Module: m.name, B: ref, Scale: d.Scale, Vector: true})
	bt.Reason = "merged"
	b.module(Module{Name: m.name, Target: bt.Name, Kind: "lora-bias", Scale: d.Scale}, k.Key)
}

// checkTargets warns about modules the config targets that the adapter has no weights
// for: PEFT loads them with B = 0, so they do not change the model, but the user may not
// expect that.
func (b *builder) checkTargets(mods map[string]*module) {
	tm := b.cfg.TargetModules
	if !tm.Set || (tm.Regex != "" && strings.EqualFold(tm.Regex, "all-linear")) {
		return
	}
	var re interface{ MatchString(string) (bool, error) }
	if tm.Regex != "" {
		r, err := pyRegex(`\A(?:` + tm.Regex + `)\z`)
		if err != nil {
			b.problem(AdapterConfigFile+": target_modules", "is not a valid regex: %v", err)
			return
		}
		re = r
	}
	haveCore := map[string]bool{}
	for n := range mods {
		haveCore[core(n)] = true
	}
	var missing []string
	for _, name := range sortedKeys(b.base.byName) {
		mod, ok := strings.CutSuffix(name, ".weight")
		if !ok || len(b.base.byName[name].Ref.Shape) != 2 || haveCore[core(mod)] || b.savedModule(mod) {
			continue
		}
		hit := false
		if re != nil {
			hit, _ = re.MatchString(mod)
		} else {
			for _, n := range tm.Names {
				if mod == n || strings.HasSuffix(mod, "."+n) {
					hit = true
				}
			}
		}
		if hit && !b.excluded(mod) && b.inLayers(mod) {
			missing = append(missing, mod)
		}
	}
	if len(missing) > 0 {
		shown := missing
		if len(shown) > 5 {
			shown = shown[:5]
		}
		b.warn(AdapterConfigFile+": target_modules", "targets %d modules the adapter has no weights for (PEFT leaves them unchanged): %s%s",
			len(missing), strings.Join(shown, ", "), map[bool]string{true: ", ...", false: ""}[len(missing) > 5])
	}
}

func (b *builder) excluded(mod string) bool {
	ex := b.cfg.ExcludeModules
	if ex.Regex != "" {
		re, err := pyRegex(`\A(?:` + ex.Regex + `)\z`)
		if err != nil {
			return false
		}
		ok, _ := re.MatchString(mod)
		return ok
	}
	for _, n := range ex.Names {
		if mod == n || strings.HasSuffix(mod, "."+n) {
			return true
		}
	}
	return false
}

// inLayers applies layers_to_transform: the layer index is the first number segment.
func (b *builder) inLayers(mod string) bool {
	if len(b.cfg.LayersToTransform) == 0 {
		return true
	}
	for _, seg := range strings.Split(mod, ".") {
		var n int
		if _, err := fmt.Sscanf(seg, "%d", &n); err == nil && fmt.Sprint(n) == seg {
			return slices.Contains(b.cfg.LayersToTransform, n)
		}
	}
	return true
}
