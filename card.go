package hfmerge

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/hfmerge/hfmerge/mergeplan"
)

// baseID is the Hub id of the base actually used, or "" when it cannot be known: a Hub
// source, a directory in the HF cache, or a local base whose config.json names the Hub
// repo it came from (_name_or_path, as save_pretrained writes it).
func baseID(ctx context.Context, l *Inputs) string {
	if id := l.Base.HubID(); id != "" {
		return id
	}
	b, err := l.Base.Read(ctx, "config.json")
	if err != nil || b == nil {
		return ""
	}
	var c struct {
		NameOrPath string `json:"_name_or_path"`
	}
	if json.Unmarshal(b, &c) == nil && validRepoID(c.NameOrPath) {
		return c.NameOrPath
	}
	return ""
}

// cardKeys are the base card's front-matter keys that describe the merged model too.
var cardKeys = []string{"license", "license_name", "license_link", "language", "pipeline_tag", "library_name"}

// frontMatter reads the top-level keys of a model card's YAML front matter that carry
// over to the merged model's card, each with its value lines as written (so that lists
// survive).
func frontMatter(readme []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(readme))
	if !sc.Scan() || strings.TrimSpace(sc.Text()) != "---" {
		return out
	}
	key := ""
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "---" {
			break
		}
		if strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t") || strings.HasPrefix(line, "-") {
			if key != "" {
				out[key] += "\n" + line
			}
			continue
		}
		key = ""
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		for _, want := range cardKeys {
			if k == want {
				key = k
				out[k] = strings.TrimSpace(v)
			}
		}
	}
	for k, v := range out {
		if v == "" {
			delete(out, k)
		}
	}
	return out
}

// modelCard writes the merged model's README.md.
// title heads the card; use is what from_pretrained loads it by (the repo id, or a
// directory).
func modelCard(ctx context.Context, l *Inputs, p *mergeplan.Plan, title, use string) ([]byte, error) {
	readme, err := l.Base.Read(ctx, "README.md")
	if err != nil {
		return nil, err
	}
	fm := frontMatter(readme)
	base := baseID(ctx, l)
	var b bytes.Buffer
	b.WriteString("---\n")
	if base != "" {
		fmt.Fprintf(&b, "base_model: %s\n", yamlString(base))
	}
	if _, ok := fm["library_name"]; !ok {
		fm["library_name"] = "transformers"
	}
	for _, k := range cardKeys {
		if v, ok := fm[k]; ok {
			if strings.HasPrefix(v, "\n") {
				fmt.Fprintf(&b, "%s:%s\n", k, v)
			} else {
				fmt.Fprintf(&b, "%s: %s\n", k, v)
			}
		}
	}
	b.WriteString("tags:\n- hfmerge\n- lora\n- merge\n---\n\n")
	fmt.Fprintf(&b, "# %s\n\n", title)
	baseName := base
	if baseName == "" {
		baseName = sourceName(l.Base)
	}
	if len(l.Stack) > 1 {
		var names []string
		for _, a := range l.Stack {
			names = append(names, fmt.Sprintf("`%s` (weight %g)", sourceName(a.Source), a.Weight))
		}
		fmt.Fprintf(&b, "This model is `%s` with the LoRA adapters %s merged into its weights in one pass "+
			"(W + Σ weight·scale·B·A, rounded once) by hfmerge %s.\n\n", baseName, strings.Join(names, ", "), Version())
	} else {
		fmt.Fprintf(&b, "This model is `%s` with the LoRA adapter `%s` merged into its weights by hfmerge %s.\n\n",
			baseName, sourceName(l.Adapter), Version())
	}
	if a := p.Adapter; a != nil {
		fmt.Fprintf(&b, "- Adapter: r = %d, lora_alpha = %g", a.R, a.Alpha)
		if a.UseRSLoRA {
			b.WriteString(", rsLoRA")
		}
		if a.UseDoRA {
			b.WriteString(", DoRA")
		}
		fmt.Fprintf(&b, "; %d modules changed.\n", len(p.Modules))
		if a.BaseModel != "" && a.BaseModel != base {
			fmt.Fprintf(&b, "- The adapter was trained on `%s` (its base_model_name_or_path).\n", a.BaseModel)
		}
	}
	b.WriteString("- Every merged weight is W + scale · B · A rounded once to the output dtype; tensors the adapter does not touch are the base's bytes.\n")
	for _, e := range p.ConfigEdits {
		fmt.Fprintf(&b, "- config.json: `%s` changed from `%v` to `%v`.\n", e.Key, nilString(e.Old), e.New)
	}
	fmt.Fprintf(&b, "- `%s` records the exact inputs (repos and commits, or digests), the options, and every file's sha256.\n", ProvenanceFile)
	if _, ok := fm["license"]; !ok {
		b.WriteString("\nThe base model's license applies; its model card named none to copy here.\n")
	}
	b.WriteString("\n## Use\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n")
	fmt.Fprintf(&b, "model = AutoModelForCausalLM.from_pretrained(%q)\ntokenizer = AutoTokenizer.from_pretrained(%q)\n```\n", use, use)
	return b.Bytes(), nil
}

// yamlString quotes a value when plain YAML would misread it.
func yamlString(s string) string {
	if s != "" && !strings.ContainsAny(s, ":#{}[],&*!|>'\"%@`\n") && strings.TrimSpace(s) == s {
		return s
	}
	return strconv.Quote(s)
}

func nilString(v any) any {
	if v == nil {
		return "(absent)"
	}
	return v
}
