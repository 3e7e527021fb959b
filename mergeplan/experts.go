package mergeplan

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Values of Unsloth's lora_B_layout marker in adapter_config.json.
const (
	// RankMajor is PEFT's packing of an expert lora_B (out, r·E): column k·E + e holds
	// rank k of expert e.
	RankMajor = "rank_major"
	// GroupedByExpert is the packing Unsloth trained before 2026-09: column e·r + k.
	GroupedByExpert = "grouped_by_expert"
)

// Expert LoRA (PEFT's target_parameters, docs/experts.md). PEFT wraps the module that
// owns a 3-D parameter (E, d1, d2) in a ParamWrapper with lora_A (r·E, in) and lora_B
// (out, r·E); expert e's delta is B_e·A_e laid out (out, in) when PEFT reads the
// parameter as (E, out, in), and its transpose when it reads it as (E, in, out). The
// planner finds the parameter in the checkpoint as it is stored: one fused tensor, or
// per-expert Linear weights that Transformers v5 fuses at load time, whose rows it
// splits the delta back into.

// wrapOrder is the order in which Transformers' expert classes register their
// parameters, which is the order PEFT wraps them in (named_parameters): the first
// wrapped is the innermost, whose keys carry the most .base_layer segments.
var wrapOrder = []string{"gate_up_proj", "gate_proj", "up_proj", "down_proj"}

// paramTargets lists the parameters of module that target_parameters names, in the
// order PEFT wraps them. PEFT matches "<module>.<param>" against each entry, exactly or
// as a dotted suffix.
func (b *builder) paramTargets(module string) []string {
	var out []string
	for _, tp := range b.cfg.TargetParameters {
		param := leaf(tp)
		key := module + "." + param
		if (key == tp || strings.HasSuffix(key, "."+tp)) && !slices.Contains(out, param) {
			out = append(out, param)
		}
	}
	rank := func(p string) int {
		if i := slices.Index(wrapOrder, p); i >= 0 {
			return i
		}
		return len(wrapOrder)
	}
	slices.SortStableFunc(out, func(x, y string) int { return rank(x) - rank(y) })
	return out
}

// expertSite is where a parameter's experts are in the checkpoint.
type expertSite struct {
	param  string
	count  int   // E
	d1, d2 int64 // the parameter is (E, d1, d2) at run time
	fused  *Tensor
	// parts of a per-expert checkpoint: the tensors each expert's d1 rows go to, in
	// order (gate then up for gate_up_proj, as v5's Concatenate(dim=1) joins them).
	parts [][]*Tensor // parts[j][e]
	names []string    // the per-expert name of part j, with {e} for the expert
	// transposed is true when Transformers' class reads the parameter as (E, in, out)
	// (is_transposed); known is false when the planner does not know the class.
	transposed, known bool
}

// transposedTypes are the model types whose expert parameters Transformers stores
// (E, in, out) and marks is_transposed.
var transposedTypes = []string{"gpt_oss"}

// fusingTypes are the model types Transformers v5 fuses per-expert Linear weights for
// (conversion_mapping.py); their fused parameters are (E, out, in).
var fusingTypes = []string{"mixtral", "minimax", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "dots1",
	"ernie4_5_moe", "glm4_moe", "glm4v_moe", "longcat_flash", "qwen3_omni_moe", "qwen3_next", "qwen3_vl_moe",
	"hunyuan_v1_moe", "flex_olmo", "olmoe", "phimoe", "lfm2_moe", "jamba"}

// perExpertNames are the per-expert Linear modules a fused parameter is made of, by the
// conversions of Transformers v5: Qwen-style names, and Mixtral's w1 (gate), w3 (up)
// and w2 (down).
var perExpertNames = map[string][][]string{
	"gate_up_proj": {{"gate_proj", "up_proj"}, {"w1", "w3"}},
	"down_proj":    {{"down_proj"}, {"w2"}},
}

// modelTypes are config.json's model_type and text_config.model_type.
func (b *builder) modelTypes() []string {
	out := []string{b.modelType()}
	if t, ok := b.conf["text_config"].(map[string]any); ok {
		if s, ok := t["model_type"].(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// site finds parameter param of module in the checkpoint, or says why it cannot.
func (b *builder) site(module, param string) (*expertSite, error) {
	types := b.modelTypes()
	anyOf := func(list []string) bool {
		return slices.ContainsFunc(types, func(t string) bool { return slices.Contains(list, t) })
	}
	name := module + "." + param
	found, note, err := b.base.resolve(name)
	if err != nil {
		return nil, err
	}
	if found != "" {
		t := b.out(found)
		if note != "" {
			b.notes[name] = note
		}
		if len(t.Shape) != 3 {
			return nil, fmt.Errorf("is %s %s in the base, not a stack of expert matrices (E, d1, d2)", found, shapeString(t.Shape))
		}
		return &expertSite{param: param, count: int(t.Shape[0]), d1: t.Shape[1], d2: t.Shape[2], fused: t,
			transposed: anyOf(transposedTypes), known: anyOf(transposedTypes) || anyOf(fusingTypes)}, nil
	}
	// Per-expert weights under the module, or under Mixtral's block_sparse_moe, which
	// v5 renames to mlp.
	prefixes := []string{module}
	if p, ok := strings.CutSuffix(module, ".mlp.experts"); ok {
		prefixes = append(prefixes, p+".block_sparse_moe.experts")
	}
	for _, prefix := range prefixes {
		for _, parts := range perExpertNames[param] {
			s, err := b.perExpert(prefix, param, parts)
			if err != nil {
				return nil, err
			}
			if s != nil {
				return s, nil
			}
		}
	}
	var tried []string
	for _, prefix := range prefixes {
		for _, parts := range perExpertNames[param] {
			tried = append(tried, prefix+".{e}."+parts[0]+".weight")
		}
	}
	if len(tried) == 0 {
		return nil, fmt.Errorf("has no expert tensors in the base: no tensor %s (the expert tensors are missing, or the adapter is for another model)", name)
	}
	return nil, fmt.Errorf("has no expert tensors in the base: no tensor %s, nor per-expert %s (the expert tensors are missing, or the adapter is for another model)",
		name, strings.Join(tried, ", "))
}

// perExpert finds per-expert weights prefix.{e}.<part>.weight for e = 0, 1, ..., or nil.
func (b *builder) perExpert(prefix, param string, parts []string) (*expertSite, error) {
	s := &expertSite{param: param, known: true} // v5 fuses Linear weights: (E, out, in)
	for _, part := range parts {
		var ts []*Tensor
		for e := 0; ; e++ {
			found, _, err := b.base.resolve(fmt.Sprintf("%s.%d.%s.weight", prefix, e, part))
			if err != nil {
				return nil, err
			}
			if found == "" {
				break
			}
			ts = append(ts, b.out(found))
		}
		if len(ts) == 0 {
			if part == parts[0] {
				return nil, nil
			}
			return nil, fmt.Errorf("the base has %s.{e}.%s.weight but no %s.{e}.%s.weight", prefix, parts[0], prefix, part)
		}
		if s.count != 0 && len(ts) != s.count {
			return nil, fmt.Errorf("the base has %d experts' %s but %d experts' %s under %s", s.count, parts[0], len(ts), part, prefix)
		}
		s.count = len(ts)
		for _, t := range ts {
			if len(t.Shape) != 2 || t.Shape[0] != ts[0].Shape[0] || t.Shape[1] != ts[0].Shape[1] {
				return nil, fmt.Errorf("%s is %s, unlike %s %s", t.Name, shapeString(t.Shape), ts[0].Name, shapeString(ts[0].Shape))
			}
		}
		if s.d2 != 0 && ts[0].Shape[1] != s.d2 {
			return nil, fmt.Errorf("%s has %d columns but %s has %d", ts[0].Name, ts[0].Shape[1], s.parts[0][0].Name, s.d2)
		}
		s.d1 += ts[0].Shape[0]
		s.d2 = ts[0].Shape[1]
		s.parts = append(s.parts, ts)
		s.names = append(s.names, prefix+".{e}."+part+".weight")
	}
	return s, nil
}

// experts plans the deltas of one ParamWrapper: the keys of m at its nesting depth.
func (b *builder) experts(m *module, params []string) {
	b.markUsed(m)
	subject := AdapterFile + ": " + m.name
	ka, okA := m.keys[kindA]
	kb, okB := m.keys[kindB]
	for kind, k := range m.keys {
		if kind != kindA && kind != kindB {
			b.problem(AdapterFile+": "+k.Key, "is a %s on a target_parameters module, which PEFT's ParamWrapper does not have", kind)
			return
		}
	}
	if !okA || !okB {
		b.problem(subject, "has a ParamWrapper without both lora_A and lora_B")
		return
	}
	A, B := b.adapter[ka.Key], b.adapter[kb.Key]
	if len(A.Shape) != 2 || len(B.Shape) != 2 || !A.DType.Float() || !B.DType.Float() {
		b.problem(subject, "lora_A %s %s and lora_B %s %s must be float matrices", shapeString(A.Shape), A.DType, shapeString(B.Shape), B.DType)
		return
	}
	// Where each targeted parameter is in the base; PEFT wraps only the parameters the
	// module has, so those the base lacks do not count in the nesting.
	sites := map[string]*expertSite{}
	errs := map[string]error{}
	var present []string
	for _, p := range params {
		if sites[p], errs[p] = b.site(m.name, p); errs[p] == nil {
			present = append(present, p)
		}
	}
	if len(present) > 0 {
		params = present
	}
	i := len(params) - 1 - m.depth
	if i < 0 {
		b.problem(AdapterFile+": "+ka.Key, "is nested %d deep under base_layer, but target_parameters names only %d parameter(s) of %s (%s)",
			m.depth, len(params), m.name, strings.Join(params, ", "))
		return
	}
	// PEFT's nesting order says which parameter this is; the shapes must agree.
	fits := func(p string) bool {
		s := sites[p]
		return s != nil && s.count > 0 && A.Shape[0]%int64(s.count) == 0 &&
			((B.Shape[0] == s.d1 && A.Shape[1] == s.d2) || (A.Shape[1] == s.d1 && B.Shape[0] == s.d2))
	}
	param := params[i]
	note := ""
	if !fits(param) {
		var others []string
		for _, p := range params {
			if p != param && fits(p) {
				others = append(others, p)
			}
		}
		if len(others) == 1 {
			note = fmt.Sprintf("the shapes fit %s, not %s, which PEFT's nesting order gives", others[0], param)
			param = others[0]
		}
	}
	s := sites[param]
	if err := errs[param]; err != nil {
		b.problem(subject, "targets %s.%s, which %v", m.name, param, err)
		return
	}
	r, alpha, scale, err := b.scales.of(m.name + "." + param)
	if err != nil {
		b.problem(AdapterConfigFile, "%v", err)
		return
	}
	E := int64(s.count)
	if A.Shape[0]%E != 0 || B.Shape[1] != A.Shape[0] {
		b.problem(AdapterFile+": "+ka.Key, "has %d rows and lora_B %d columns, but %s.%s has %d experts, which must divide r·E (PEFT stores lora_A as (r·E, in) and lora_B as (out, r·E))",
			A.Shape[0], B.Shape[1], m.name, param, E)
		return
	}
	if A.Shape[0] != int64(r)*E {
		b.problem(subject, "rank mismatch: lora_A has %d rows = %d experts × %d, but %s gives r = %d for %s.%s (r, rank_pattern)",
			A.Shape[0], E, A.Shape[0]/E, AdapterConfigFile, r, m.name, param)
		return
	}
	emit := func(inOut bool, how string) {
		b.emitExperts(m, param, ka, kb, A, B, s, r, alpha, scale, note, inOut, how)
	}
	inOut, decided, ok := b.shapeReading(ka.Key, m.name+"."+param, s, A, B)
	switch {
	case !ok:
	case decided:
		emit(inOut, "")
	default:
		// Square: decided once every module is seen (resolveSquare).
		b.square = append(b.square, squareExpert{key: ka.Key, param: m.name + "." + param, s: s, A: A, B: B, emit: emit})
	}
}

// emitExperts adds the deltas of one ParamWrapper, read (E, in, out) when inOut.
func (b *builder) emitExperts(m *module, param string, ka, kb adapterKey, A, B Ref, s *expertSite, r int, alpha, scale float64, note string, inOut bool, how string) {
	grouped := b.cfg.LoRABLayout == GroupedByExpert
	base := func(e int) Delta {
		return Delta{Module: m.name, A: A, B: B, Rank: r, Scale: scale, Transposed: inOut,
			Expert: &Expert{Index: e, Count: s.count, GroupedB: grouped}}
	}
	layout := map[bool]string{false: "out-in", true: "in-out"}[inOut]
	mod := Module{Name: m.name, Kind: "expert", Rank: r, Alpha: alpha, Scale: scale, Param: param,
		Keys: []string{ka.Key, kb.Key}, Experts: s.count, Note: strings.Trim(note+"; "+how, "; ")}
	from := ka.Key
	if a, ok := strings.CutSuffix(ka.Key, "lora_A.weight"); ok && kb.Key == a+"lora_B.weight" {
		from = a + "lora_{A,B}.weight"
	}
	if s.fused != nil {
		t := s.fused
		for e := 0; e < s.count; e++ {
			d := base(e)
			d.Expert.Lo, d.Expert.Hi, d.Expert.Row = 0, s.d1, int64(e)*s.d1
			t.Deltas = append(t.Deltas, d)
		}
		t.Reason = fmt.Sprintf("merged: %d experts' deltas (%s) from %s", s.count, layout, from)
		mod.Target, mod.Layout, mod.Tensors = t.Name, layout+", fused", []string{t.Name}
		if n, ok := b.notes[m.name+"."+param]; ok {
			mod.Note = strings.Trim(mod.Note+"; "+n, "; ")
		}
	} else {
		lo := int64(0)
		for _, ts := range s.parts {
			hi := lo + ts[0].Shape[0]
			for e, t := range ts {
				d := base(e)
				d.Expert.Lo, d.Expert.Hi = lo, hi
				t.Deltas = append(t.Deltas, d)
				t.Reason = fmt.Sprintf("merged: rows %d–%d of expert %d's %s delta (%s) from %s", lo, hi, e, param, layout, from)
				mod.Tensors = append(mod.Tensors, t.Name)
			}
			lo = hi
		}
		mod.Target, mod.Layout = strings.Join(s.names, ", "), layout+", per-expert"
	}
	b.p.Modules = append(b.p.Modules, mod)
}

// squareExpert is a ParamWrapper whose parameter is square, so that its shapes fit
// both readings; emit adds its deltas once the reading is decided.
type squareExpert struct {
	key, param string
	s          *expertSite
	A, B       Ref
	emit       func(inOut bool, how string)
}

// shapeReading decides from the shapes whether PEFT read the parameter (E, d1, d2) as
// (E, out, in) or (E, in, out): (E, out, in) needs lora_B with d1 rows and lora_A with
// d2 columns, (E, in, out) the other way round. decided is false when both fit
// (d1 = d2); ok is false, with a problem recorded, when neither does. A decided
// reading of gate_up_proj or down_proj is evidence for the square ones (resolveSquare).
func (b *builder) shapeReading(key, param string, s *expertSite, A, B Ref) (inOut, decided, ok bool) {
	outIn := B.Shape[0] == s.d1 && A.Shape[1] == s.d2
	inOutFits := A.Shape[1] == s.d1 && B.Shape[0] == s.d2
	if !outIn && !inOutFits {
		b.problem(AdapterFile+": "+key, "lora_A %s and lora_B %s fit neither reading of %s (E=%d, %d, %d): (E, out, in) needs lora_B with %d rows and lora_A with %d columns, (E, in, out) the other way round",
			shapeString(A.Shape), shapeString(B.Shape), param, s.count, s.d1, s.d2, s.d1, s.d2)
		return false, false, false
	}
	if outIn != inOutFits && slices.Contains([]string{"gate_up_proj", "down_proj"}, s.param) {
		if b.evidence == nil {
			b.evidence = map[bool]string{}
		}
		if _, seen := b.evidence[inOutFits]; !seen {
			b.evidence[inOutFits] = param
		}
	}
	return inOutFits, outIn != inOutFits, true
}

// resolveSquare decides the reading of the square expert parameters, in this order:
// the option; the reading the shapes gave the adapter's other gate_up_proj or
// down_proj parameters, which PEFT and Transformers' patch (patch_moe_parameter_targeting)
// treat alike in every version; PEFT 0.19.1 and later for Transformers v5's
// (E, out, in) experts, which read (E, out, in) with or without the patch. Otherwise
// the plan refuses and names both readings.
func (b *builder) resolveSquare() {
	for _, q := range b.square {
		switch b.in.Options.Experts {
		case ExpertOutIn:
			q.emit(false, "square: read (E, out, in) as the option says")
			continue
		case ExpertInOut:
			q.emit(true, "square: read (E, in, out) as the option says")
			continue
		}
		outIn, inOut := b.evidence[false], b.evidence[true]
		switch {
		case outIn != "" && inOut == "":
			q.emit(false, "square: read (E, out, in), as the shapes of "+outIn+" show PEFT read this adapter's experts")
			continue
		case inOut != "" && outIn == "":
			q.emit(true, "square: read (E, in, out), as the shapes of "+inOut+" show PEFT read this adapter's experts")
			continue
		}
		v := b.cfg.PeftVersion
		if outIn == "" && q.s.known && !q.s.transposed && versionAtLeast(v, 0, 19, 1) {
			q.emit(false, fmt.Sprintf("square: read (E, out, in), as PEFT %s does for Transformers v5 experts", v))
			continue
		}
		why := "peft_version " + orAbsent(v) + " does not settle it for this model"
		if outIn != "" {
			why = fmt.Sprintf("the adapter's other experts disagree (%s reads (E, out, in), %s (E, in, out))", outIn, inOut)
		}
		b.problem(AdapterFile+": "+q.key, "%s is (E=%d, %d, %d), square, so lora_A %s and lora_B %s fit both readings: (E, out, in), where expert e's delta is B_e·A_e "+
			"(PEFT 0.19.1 and later, on Transformers v5's experts), and (E, in, out), where it is (B_e·A_e)ᵀ (PEFT 0.18 and earlier; is_transposed experts such as gpt-oss's, "+
			"unless Transformers' patch swapped them); %s; choose a reading with --expert-layout out-in or in-out",
			q.param, q.s.count, q.s.d1, q.s.d2, shapeString(q.A.Shape), shapeString(q.B.Shape), why)
	}
}

func orAbsent(v string) string {
	if v == "" {
		return "(absent: PEFT before 0.18)"
	}
	return strconv.Quote(v)
}

// peftVersion parses "X.Y.Z", "X.Y.Z.devN" or "X.Y.Z.devN@commit". A development
// build of X.Y.Z is PEFT's main branch after the release before X.Y.Z: it may hold any
// change made before X.Y.Z (or the next release) was cut.
func peftVersion(v string) (n [3]int, dev, ok bool) {
	v, _, _ = strings.Cut(v, "@")
	if i := strings.Index(v, ".dev"); i >= 0 {
		v, dev = v[:i], true
	} else if i := strings.IndexAny(v, "abcr+"); i >= 0 {
		v, dev = v[:i], true // a pre-release comes before its release
	}
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return n, false, false
	}
	for i, p := range parts {
		x, err := strconv.Atoi(p)
		if err != nil || x < 0 {
			return n, false, false
		}
		n[i] = x
	}
	return n, dev, true
}

// versionAtLeast reports whether v is release X.Y.Z or later (a development build of
// X.Y.Z is not); an unparsable version is not.
func versionAtLeast(v string, x, y, z int) bool {
	n, dev, ok := peftVersion(v)
	c := slices.Compare(n[:], []int{x, y, z})
	return ok && (c > 0 || (c == 0 && !dev))
}

// fusedLinear plans a LoRA on one expert's Linear module that the checkpoint stores
// fused: a Transformers 4.x training's experts.{e}.gate_proj (Mixtral's w1, w3, w2)
// against a v5-saved experts.gate_up_proj (E, 2I, H), whose rows [e·2I, e·2I + I) are
// the gate's and [e·2I + I, (e+1)·2I) the up projection's; or Unsloth's gpt-oss
// experts.gate_up_projs.{e} (a Linear (2I, H)) against gpt-oss's experts.gate_up_proj
// (E, H, 2I), whose expert e is that Linear's weight transposed. It reports whether the
// module is one of these; problems with it are recorded.
func (b *builder) fusedLinear(m *module, ka adapterKey, A, B Ref, r int, alpha, scale float64) bool {
	segs := strings.Split(m.name, ".")
	j := slices.Index(segs, "experts")
	if j < 0 || j+3 != len(segs) {
		return false
	}
	prefix := strings.Join(segs[:j+1], ".")
	parts := map[string][2]int{"gate_proj": {0, 2}, "up_proj": {1, 2}, "w1": {0, 2}, "w3": {1, 2}, "down_proj": {0, 1}, "w2": {0, 1}}
	var param, proj string
	var e int
	var err error
	transposed := false
	if e, err = strconv.Atoi(segs[j+1]); err == nil {
		proj = segs[j+2]
		if _, ok := parts[proj]; !ok {
			return false
		}
		param = map[bool]string{true: "gate_up_proj", false: "down_proj"}[parts[proj][1] == 2]
	} else if e, err = strconv.Atoi(segs[j+2]); err == nil && (segs[j+1] == "gate_up_projs" || segs[j+1] == "down_projs") {
		param, proj, transposed = strings.TrimSuffix(segs[j+1], "s"), segs[j+1], true
	} else {
		return false
	}
	prefixes := []string{prefix}
	if p, ok := strings.CutSuffix(prefix, ".block_sparse_moe.experts"); ok {
		prefixes = append(prefixes, p+".mlp.experts")
	}
	var t *Tensor
	for _, pre := range prefixes {
		if found, _, _ := b.base.resolve(pre + "." + param); found != "" {
			t = b.out(found)
			break
		}
	}
	if t == nil {
		return false
	}
	subject := AdapterFile + ": " + m.name
	if len(t.Shape) != 3 || e < 0 || int64(e) >= t.Shape[0] {
		b.problem(subject, "is expert %d's %s, but %s in the base is %s", e, proj, t.Name, shapeString(t.Shape))
		return true
	}
	if !t.Source.DType.Float() {
		b.problem(t.Name, "is %s: hfmerge merges into BF16, F16 and F32 weights; use the unquantized base model", t.Source.DType)
		return true
	}
	for _, k := range []keyKind{kindMagnitude, kindBBias} {
		if mk, ok := m.keys[k]; ok {
			b.problem(AdapterFile+": "+mk.Key, "is a %s on an expert the base stores fused (%s); hfmerge does not merge that", k, t.Name)
			return true
		}
	}
	d1, d2 := t.Shape[1], t.Shape[2]
	x := &Expert{Index: 0, Count: 1}
	var what string
	if transposed {
		// The Linear's weight (out, in) is expert e's slice (in, out) transposed.
		if B.Shape[0] != d2 || A.Shape[1] != d1 {
			b.problem(subject, "lora_A %s and lora_B %s give a delta of (%d, %d), but expert %d of %s %s is (%d, %d) transposed",
				shapeString(A.Shape), shapeString(B.Shape), B.Shape[0], A.Shape[1], e, t.Name, shapeString(t.Shape), d2, d1)
			return true
		}
		x.Hi, x.Row = d1, int64(e)*d1
		what = fmt.Sprintf("expert %d, transposed", e)
	} else {
		if b.isTransposedArch() {
			b.problem(subject, "is expert %d's %s, but %s of this architecture is stored (E, in, out); hfmerge does not know how the per-expert module maps to it", e, proj, t.Name)
			return true
		}
		part := parts[proj]
		n := d1 / int64(part[1])
		if d1%int64(part[1]) != 0 || B.Shape[0] != n || A.Shape[1] != d2 {
			b.problem(subject, "lora_A %s and lora_B %s give a delta of (%d, %d), but %s of expert %d in %s %s has (%d, %d)",
				shapeString(A.Shape), shapeString(B.Shape), B.Shape[0], A.Shape[1], proj, e, t.Name, shapeString(t.Shape), n, d2)
			return true
		}
		x.Hi, x.Row = n, int64(e)*d1+int64(part[0])*n
		what = fmt.Sprintf("expert %d's %s rows %d–%d", e, proj, int64(part[0])*n, int64(part[0]+1)*n)
	}
	t.Deltas = append(t.Deltas, Delta{Module: m.name, A: A, B: B, Rank: r, Scale: scale, Transposed: transposed, Expert: x})
	t.Reason = "merged, with per-expert LoRA"
	b.module(Module{Name: m.name, Target: t.Name, Kind: "linear-expert", Rank: r, Alpha: alpha, Scale: scale,
		Keys: []string{ka.Key, m.keys[kindB].Key}, Layout: what, Tensors: []string{t.Name},
		Note: fmt.Sprintf("the base stores the experts fused in %s", t.Name)}, ka.Key)
	return true
}

func (b *builder) isTransposedArch() bool {
	return slices.ContainsFunc(b.modelTypes(), func(t string) bool { return slices.Contains(transposedTypes, t) })
}
