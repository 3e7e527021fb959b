package mergeplan

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/dlclark/regexp2/v2"
)

// matchBudget bounds the time all pattern matches of one plan may take together:
// patterns come from a file, and a backtracking engine can be made to run for ever. A
// pattern that runs out of it is refused at once, naming it, and no further match is
// tried (PEFT's re.match would hang on it too). Real patterns take microseconds per
// module.
const matchBudget = 2 * time.Second

// budget is the match time left to a plan, shared by rank_pattern and alpha_pattern;
// failed is the refusal once a pattern ran out of it.
type budget struct {
	left   time.Duration
	failed error
}

// pyRegex compiles a Python `re` pattern. Python's syntax is close to the .NET syntax
// regexp2 implements (look-around, lazy quantifiers, \d \w \s); the named-group
// spellings (?P<name>...) and (?P=name) are rewritten to .NET's.
func pyRegex(pattern string) (*regexp2.Regexp, error) {
	re, err := regexp2.Compile(pythonToNET(pattern))
	if err != nil {
		return nil, err
	}
	re.MatchTimeout = matchBudget
	return re, nil
}

func pythonToNET(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '\\' && i+1 < len(p) {
			b.WriteString(p[i : i+2])
			i++
			continue
		}
		if strings.HasPrefix(p[i:], "(?P<") {
			b.WriteString("(?<")
			i += 3
			continue
		}
		if strings.HasPrefix(p[i:], "(?P=") {
			end := strings.IndexByte(p[i:], ')')
			if end > 0 {
				b.WriteString(`\k<` + p[i+4:i+end] + ">")
				i += end
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

// patternSet is rank_pattern or alpha_pattern compiled the way PEFT's get_pattern_key
// uses them: keys in file order, and key K matches module name m when Python's
// re.match(r"(.*\.)?(K)$", m) does.
type patternSet struct {
	field    string
	patterns []Pattern
	res      []*regexp2.Regexp
	budget   *budget
}

func compilePatterns(field string, ps []Pattern, b *budget) (*patternSet, error) {
	s := &patternSet{field: field, patterns: ps, budget: b}
	for _, p := range ps {
		re, err := pyRegex(`\A(?:.*\.)?(?:` + p.Key + `)$`)
		if err != nil {
			return nil, &ConfigError{Field: field, Reason: fmt.Sprintf("key %q is not a valid regex: %v", p.Key, err)}
		}
		s.res = append(s.res, re)
	}
	return s, nil
}

// lookup returns the value of the first key that matches module, and whether one did.
// Once a pattern has run out of the plan's match budget every lookup fails with the
// same refusal, which the plan reports once.
func (s *patternSet) lookup(module string) (float64, string, bool, error) {
	for i, re := range s.res {
		if s.budget.failed != nil {
			return 0, "", false, s.budget.failed
		}
		re.MatchTimeout = max(s.budget.left, time.Millisecond)
		start := time.Now()
		ok, err := re.MatchString(module)
		s.budget.left -= time.Since(start)
		if err != nil {
			s.budget.failed = &ConfigError{Field: s.field, Reason: fmt.Sprintf(
				"key %q took more than the %v all patterns may take to match (on %s): it backtracks catastrophically; write it without nested repetition",
				s.patterns[i].Key, matchBudget, module)}
			return 0, "", false, s.budget.failed
		}
		if ok {
			return s.patterns[i].Value, s.patterns[i].Key, true, nil
		}
	}
	return 0, "", false, nil
}

// scales computes each module's rank, alpha and scale from the config, as PEFT's
// LoraModel does when it creates the layer: rank and alpha are looked up independently
// in their pattern sets, and the scale is alpha/r, or alpha/√r with use_rslora.
type scales struct {
	cfg          *AdapterConfig
	rank, alpha  *patternSet
	usedPatterns map[string]bool
}

func newScales(cfg *AdapterConfig) (*scales, error) {
	b := &budget{left: matchBudget}
	rp, err := compilePatterns("rank_pattern", cfg.RankPattern, b)
	if err != nil {
		return nil, err
	}
	ap, err := compilePatterns("alpha_pattern", cfg.AlphaPattern, b)
	if err != nil {
		return nil, err
	}
	return &scales{cfg: cfg, rank: rp, alpha: ap, usedPatterns: map[string]bool{}}, nil
}

func (s *scales) of(module string) (r int, alpha, scale float64, err error) {
	r = s.cfg.R
	alpha = s.cfg.Alpha
	v, key, ok, err := s.rank.lookup(module)
	if err != nil {
		return 0, 0, 0, err
	}
	if ok {
		r = int(v)
		s.usedPatterns["rank_pattern:"+key] = true
	}
	v, key, ok, err = s.alpha.lookup(module)
	if err != nil {
		return 0, 0, 0, err
	}
	if ok {
		alpha = v
		s.usedPatterns["alpha_pattern:"+key] = true
	}
	if s.cfg.UseRSLoRA {
		return r, alpha, alpha / math.Sqrt(float64(r)), nil
	}
	return r, alpha, alpha / float64(r), nil
}

// unused lists pattern keys that matched no module: PEFT ignores them silently, which
// usually means a typo.
func (s *scales) unused() []string {
	var out []string
	for _, p := range s.cfg.RankPattern {
		if !s.usedPatterns["rank_pattern:"+p.Key] {
			out = append(out, "rank_pattern key "+fmt.Sprintf("%q", p.Key))
		}
	}
	for _, p := range s.cfg.AlphaPattern {
		if !s.usedPatterns["alpha_pattern:"+p.Key] {
			out = append(out, "alpha_pattern key "+fmt.Sprintf("%q", p.Key))
		}
	}
	return out
}
