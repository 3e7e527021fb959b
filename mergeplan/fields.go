package mergeplan

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// fieldParser reads typed fields out of a JSON object and keeps the first error, so that
// ParseAdapterConfig reads as a list of fields.
type fieldParser struct {
	raw map[string]json.RawMessage
	err error
}

func (p *fieldParser) fail(field, format string, args ...any) {
	if p.err == nil {
		p.err = &ConfigError{Field: field, Reason: fmt.Sprintf(format, args...)}
	}
}

// get returns the field's value, or nil when it is absent or null.
func (p *fieldParser) get(field string) json.RawMessage {
	v, ok := p.raw[field]
	if !ok || string(bytes.TrimSpace(v)) == "null" {
		return nil
	}
	return v
}

func (p *fieldParser) str(field string) string {
	v := p.get(field)
	if v == nil {
		return ""
	}
	var s string
	if json.Unmarshal(v, &s) != nil {
		p.fail(field, "want a string, got %s", abbrev(v))
	}
	return s
}

func (p *fieldParser) boolean(field string) bool {
	v := p.get(field)
	if v == nil {
		return false
	}
	var b bool
	if json.Unmarshal(v, &b) != nil {
		p.fail(field, "want true or false, got %s", abbrev(v))
	}
	return b
}

func (p *fieldParser) number(field string, def float64) float64 {
	v := p.get(field)
	if v == nil {
		return def
	}
	f, ok := parseNumber(v)
	if !ok {
		p.fail(field, "want a number, got %s", abbrev(v))
	}
	return f
}

func (p *fieldParser) integer(field string, def int) int {
	v := p.get(field)
	if v == nil {
		return def
	}
	f, ok := parseNumber(v)
	if ok && f == math.Trunc(f) && math.Abs(f) > 1<<31 {
		p.fail(field, "%s is too large: at most %d", abbrev(v), 1<<31)
		return def
	}
	if !ok || f != math.Trunc(f) {
		p.fail(field, "want an integer, got %s", abbrev(v))
		return def
	}
	return int(f)
}

func parseNumber(v json.RawMessage) (float64, bool) {
	var n json.Number
	if json.Unmarshal(v, &n) != nil {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(n), 64)
	return f, err == nil && !math.IsInf(f, 0)
}

// strings reads a list of strings; a single string is taken as a list of one, as PEFT
// does for layers_pattern and modules_to_save.
func (p *fieldParser) strings(field string) []string {
	v := p.get(field)
	if v == nil {
		return nil
	}
	var one string
	if json.Unmarshal(v, &one) == nil {
		return []string{one}
	}
	var list []string
	if json.Unmarshal(v, &list) != nil {
		p.fail(field, "want a string or a list of strings, got %s", abbrev(v))
	}
	return list
}

func (p *fieldParser) ints(field string) []int {
	v := p.get(field)
	if v == nil {
		return nil
	}
	var one int
	if json.Unmarshal(v, &one) == nil {
		return []int{one}
	}
	var list []int
	if json.Unmarshal(v, &list) != nil {
		p.fail(field, "want an integer or a list of integers, got %s", abbrev(v))
	}
	return list
}

func (p *fieldParser) targets(field string) Targets {
	v := p.get(field)
	if v == nil {
		return Targets{}
	}
	var one string
	if json.Unmarshal(v, &one) == nil {
		return Targets{Regex: one, Set: true}
	}
	var list []string
	if json.Unmarshal(v, &list) != nil {
		p.fail(field, "want a regex string or a list of module names, got %s", abbrev(v))
	}
	return Targets{Names: list, Set: true}
}

// patterns reads rank_pattern or alpha_pattern keeping the file's key order.
func (p *fieldParser) patterns(field string, integral bool) []Pattern {
	v := p.get(field)
	if v == nil {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(v))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		p.fail(field, "want an object mapping module patterns to numbers, got %s", abbrev(v))
		return nil
	}
	var out []Pattern
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			p.fail(field, "bad JSON: %v", err)
			return nil
		}
		key, _ := t.(string)
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			p.fail(field, "bad JSON: %v", err)
			return nil
		}
		f, ok := parseNumber(val)
		if !ok || (integral && (f != math.Trunc(f) || f <= 0 || f > 1<<31)) {
			p.fail(field, "key %q: want a positive %s, got %s", key, map[bool]string{true: "integer", false: "number"}[integral], abbrev(val))
			return nil
		}
		for _, q := range out {
			if q.Key == key {
				p.fail(field, "key %q appears twice", key)
				return nil
			}
		}
		out = append(out, Pattern{Key: key, Value: f})
	}
	return out
}

// initWeights reads init_lora_weights, which is a boolean or a method name.
func (p *fieldParser) initWeights(field string) string {
	v := p.get(field)
	if v == nil {
		return "true"
	}
	var b bool
	if json.Unmarshal(v, &b) == nil {
		return strconv.FormatBool(b)
	}
	var s string
	if json.Unmarshal(v, &s) != nil {
		p.fail(field, "want a boolean or a method name, got %s", abbrev(v))
	}
	return s
}

// tokens reads trainable_token_indices: a list of ids (the input embedding) or an object
// mapping module names to lists of ids.
func (p *fieldParser) tokens(field string) map[string][]int64 {
	v := p.get(field)
	if v == nil {
		return nil
	}
	var m map[string][]int64
	var list []int64
	if json.Unmarshal(v, &list) == nil {
		m = map[string][]int64{"": list}
	} else if json.Unmarshal(v, &m) != nil {
		p.fail(field, "want a list of token ids or an object of module name to ids, got %s", abbrev(v))
		return nil
	}
	for k, ids := range m {
		for _, id := range ids {
			if id < 0 {
				p.fail(field, "module %q: negative token id %d", k, id)
			}
		}
	}
	return m
}

func abbrev(v json.RawMessage) string {
	s := string(bytes.TrimSpace(v))
	if len(s) > 40 {
		s = s[:37] + "..."
	}
	return s
}
