package mergeplan

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
)

// AdapterConfigFile is the name PEFT gives the adapter's configuration.
const AdapterConfigFile = "adapter_config.json"

// Pattern is one entry of rank_pattern or alpha_pattern, kept in file order because
// PEFT takes the first key that matches.
type Pattern struct {
	Key   string
	Value float64
}

// Targets is target_modules or exclude_modules: a list of names, or one Python regex.
type Targets struct {
	Names []string
	Regex string // set when the field is a string
	Set   bool   // the field was present and not null
}

// AdapterConfig holds the fields of adapter_config.json that decide what a merge does.
type AdapterConfig struct {
	PeftType          string
	TaskType          string
	BaseModel         string // base_model_name_or_path
	Revision          string
	R                 int
	Alpha             float64
	UseRSLoRA         bool
	RankPattern       []Pattern
	AlphaPattern      []Pattern
	TargetModules     Targets
	ExcludeModules    Targets
	ModulesToSave     []string
	LayersToTransform []int
	LayersPattern     []string
	TargetParameters  []string
	// PeftVersion is peft_version, which PEFT records since 0.18.0 ("0.19.1", or
	// "0.20.1.dev0@<commit>" for a development build); "" when absent.
	PeftVersion string
	// LoRABLayout is Unsloth's lora_B_layout marker: how the columns of an expert
	// lora_B are packed ("rank_major", PEFT's; "grouped_by_expert", older Unsloth's);
	// "" when absent.
	LoRABLayout       string
	FanInFanOut       bool
	Bias              string // none, all, lora_only
	LoRABias          bool
	UseDoRA           bool
	InitLoRAWeights   string // "true", "false", or the method name
	EnsureWeightTying bool
	// TrainableTokens maps a module name to the token ids it trains; the key "" stands
	// for the list form, which means the model's input embedding.
	TrainableTokens map[string][]int64
	// Unknown lists fields hfmerge does not know that carry a value other than
	// null, false, 0, "" or an empty list or object.
	Unknown []string
}

// ConfigError is a problem with one field of adapter_config.json.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s: %s", AdapterConfigFile, e.Reason)
	}
	return fmt.Sprintf("%s: field %q: %s", AdapterConfigFile, e.Field, e.Reason)
}

// knownFields are the LoraConfig fields that need no action beyond what ParseAdapterConfig
// does with them: they are informational, only matter in training, or are checked below.
var knownFields = []string{
	"peft_type", "task_type", "base_model_name_or_path", "revision", "r", "lora_alpha",
	"use_rslora", "rank_pattern", "alpha_pattern", "target_modules", "exclude_modules",
	"modules_to_save", "layers_to_transform", "layers_pattern", "target_parameters",
	"fan_in_fan_out", "bias", "lora_bias", "use_dora", "init_lora_weights",
	"ensure_weight_tying", "trainable_token_indices", "lora_dropout", "inference_mode",
	"peft_version", "auto_mapping", "eva_config", "corda_config", "loftq_config",
	"runtime_config", "qalora_group_size", "use_qalora", "megatron_config", "megatron_core",
	"layer_replication", "alora_invocation_tokens", "arrow_config", "kasa_config",
	"use_bdlora", "bdlora_config", "velora_config", "monteclora_config", "lora_ga_config",
	"is_prompt_learning", "save_embedding_layers", "use_kasa", "lora_B_layout",
}

// ParseAdapterConfig parses adapter_config.json and refuses the adapters hfmerge cannot
// merge exactly. All fields a merge depends on are read; their JSON types are checked.
func ParseAdapterConfig(data []byte) (*AdapterConfig, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, &ConfigError{Reason: fmt.Sprintf("not a JSON object: %v", err)}
	}
	if raw == nil {
		return nil, &ConfigError{Reason: "not a JSON object"}
	}
	c := &AdapterConfig{}
	p := fieldParser{raw: raw}
	c.PeftType = p.str("peft_type")
	if p.err != nil {
		return nil, p.err
	}
	switch c.PeftType {
	case "LORA":
	case "":
		return nil, &ConfigError{Field: "peft_type", Reason: "missing: is this a PEFT adapter?"}
	default:
		return nil, &ConfigError{Field: "peft_type", Reason: fmt.Sprintf("is %q: hfmerge merges LORA adapters only", c.PeftType)}
	}
	c.TaskType = p.str("task_type")
	c.BaseModel = p.str("base_model_name_or_path")
	c.Revision = p.str("revision")
	c.R = p.integer("r", 8)
	c.Alpha = p.number("lora_alpha", 8)
	c.UseRSLoRA = p.boolean("use_rslora")
	c.RankPattern = p.patterns("rank_pattern", true)
	c.AlphaPattern = p.patterns("alpha_pattern", false)
	c.TargetModules = p.targets("target_modules")
	c.ExcludeModules = p.targets("exclude_modules")
	c.ModulesToSave = p.strings("modules_to_save")
	c.LayersToTransform = p.ints("layers_to_transform")
	c.LayersPattern = p.strings("layers_pattern")
	c.TargetParameters = p.strings("target_parameters")
	c.PeftVersion = p.str("peft_version")
	c.LoRABLayout = p.str("lora_B_layout")
	c.FanInFanOut = p.boolean("fan_in_fan_out")
	c.Bias = p.str("bias")
	c.LoRABias = p.boolean("lora_bias")
	c.UseDoRA = p.boolean("use_dora")
	c.InitLoRAWeights = p.initWeights("init_lora_weights")
	c.EnsureWeightTying = p.boolean("ensure_weight_tying")
	c.TrainableTokens = p.tokens("trainable_token_indices")
	if p.err != nil {
		return nil, p.err
	}
	if c.Bias == "" {
		c.Bias = "none"
	}
	if err := c.check(raw); err != nil {
		return nil, err
	}
	for k, v := range raw {
		if !slices.Contains(knownFields, k) && !empty(v) {
			c.Unknown = append(c.Unknown, k)
		}
	}
	slices.Sort(c.Unknown)
	return c, nil
}

// check refuses what cannot be merged onto the original base, with the reason.
func (c *AdapterConfig) check(raw map[string]json.RawMessage) error {
	if c.R <= 0 {
		return &ConfigError{Field: "r", Reason: fmt.Sprintf("is %d: the rank must be positive", c.R)}
	}
	if math.IsNaN(c.Alpha) || math.IsInf(c.Alpha, 0) {
		return &ConfigError{Field: "lora_alpha", Reason: "is not a finite number"}
	}
	switch c.Bias {
	case "none", "all", "lora_only":
	default:
		return &ConfigError{Field: "bias", Reason: fmt.Sprintf("is %q: want none, all or lora_only", c.Bias)}
	}
	init := strings.ToLower(c.InitLoRAWeights)
	for _, m := range []string{"pissa", "olora", "corda", "lora_ga", "loftq"} {
		if init == m || strings.HasPrefix(init, m+"_") {
			return &ConfigError{Field: "init_lora_weights", Reason: fmt.Sprintf(
				"is %q: this initialisation rewrote the base weights during training, so the adapter "+
					"only fits that modified base; convert it to a plain LoRA first (PEFT's save_pretrained "+
					"with path_initial_model_for_weight_conversion) and merge the converted adapter", c.InitLoRAWeights)}
		}
	}
	refuse := []struct{ field, what string }{
		{"alora_invocation_tokens", "activated LoRA (aLoRA) applies only after its invocation tokens and cannot be merged into weights"},
		{"arrow_config", "Arrow routes between adapters per token and cannot be merged into weights"},
		{"use_qalora", "QA-LoRA is tied to a GPTQ-quantized base and cannot be merged into its weights"},
		{"megatron_config", "Megatron tensor-parallel LoRA layers are stored as parallel shards hfmerge does not read"},
		{"layer_replication", "layers share base weights across replicas with separate adapters; PEFT cannot merge this either"},
		{"kasa_config", "KaSA truncates the base weights by SVD at initialisation"},
		{"use_kasa", "KaSA truncates the base weights by SVD at initialisation"},
		{"use_bdlora", "block-diagonal LoRA stores A or B in a compact form hfmerge does not expand"},
		{"bdlora_config", "block-diagonal LoRA stores A or B in a compact form hfmerge does not expand"},
		{"velora_config", "VeLoRA is not supported"},
		{"monteclora_config", "MonteCLoRA is not supported"},
	}
	for _, r := range refuse {
		if v, ok := raw[r.field]; ok && !empty(v) {
			return &ConfigError{Field: r.field, Reason: "is set: " + r.what}
		}
	}
	switch c.LoRABLayout {
	case "", RankMajor, GroupedByExpert:
	default:
		return &ConfigError{Field: "lora_B_layout", Reason: fmt.Sprintf("is %q: want %q (PEFT's packing) or %q (Unsloth's before 2026-09)",
			c.LoRABLayout, RankMajor, GroupedByExpert)}
	}
	if len(c.TargetParameters) > 0 {
		for _, f := range []struct {
			set  bool
			name string
		}{{c.UseDoRA, "use_dora"}, {c.LoRABias, "lora_bias"}, {c.FanInFanOut, "fan_in_fan_out"}} {
			if f.set {
				return &ConfigError{Field: f.name, Reason: "is set together with target_parameters, which PEFT does not allow (ParamWrapper refuses it)"}
			}
		}
	}
	if c.LoRABias && c.UseDoRA {
		return &ConfigError{Field: "lora_bias", Reason: "is set together with use_dora, which PEFT does not allow"}
	}
	return nil
}

// empty reports whether a JSON value carries nothing: null, false, 0, "", [] or {}.
func empty(v json.RawMessage) bool {
	s := string(bytes.TrimSpace(v))
	switch s {
	case "", "null", "false", "0", `""`, "[]", "{}":
		return true
	}
	var x any
	if json.Unmarshal(v, &x) != nil {
		return false
	}
	switch x := x.(type) {
	case []any:
		return len(x) == 0
	case map[string]any:
		return len(x) == 0
	case float64:
		return x == 0
	}
	return false
}
