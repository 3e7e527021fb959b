package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/hfmerge/hfmerge/mergeplan"
)

// repoID matches a Hub repository id, owner/name.
var repoID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$`)

// baseID names the base for the model card: its Hub id when it can be known (a Hub
// source, a directory in the HF cache, or the adapter's base_model_name_or_path), else
// the directory's name.
func baseID(l *loaded, p *mergeplan.Plan) string {
	if id := l.base.HubID(); id != "" {
		return id
	}
	if p.Adapter != nil && repoID.MatchString(p.Adapter.BaseModel) {
		return p.Adapter.BaseModel
	}
	return filepath.Base(filepath.Clean(l.base.String()))
}

// sourceName names a source briefly: its Hub id, else its directory's name.
func sourceName(s source) string {
	if id := s.HubID(); id != "" {
		return id
	}
	return filepath.Base(filepath.Clean(s.String()))
}

// frontMatter reads the top-level keys of a model card's YAML front matter that carry
// over to the merged model's card.
func frontMatter(readme []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(readme))
	if !sc.Scan() || strings.TrimSpace(sc.Text()) != "---" {
		return out
	}
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "---" {
			break
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.HasPrefix(k, " ") || strings.HasPrefix(k, "\t") {
			continue
		}
		switch k {
		case "license", "license_name", "license_link":
			if v = strings.TrimSpace(v); v != "" {
				out[k] = strings.Trim(v, `"'`)
			}
		}
	}
	return out
}

// modelCard writes the merged model's README.md.
func modelCard(ctx context.Context, l *loaded, p *mergeplan.Plan, title string) ([]byte, error) {
	readme, err := l.base.Read(ctx, "README.md")
	if err != nil {
		return nil, err
	}
	fm := frontMatter(readme)
	base := baseID(l, p)
	var b bytes.Buffer
	b.WriteString("---\n")
	fmt.Fprintf(&b, "base_model: %s\n", yamlString(base))
	b.WriteString("library_name: transformers\ntags:\n- hfmerge\n- lora\n- merge\n")
	for _, k := range []string{"license", "license_name", "license_link"} {
		if v, ok := fm[k]; ok {
			fmt.Fprintf(&b, "%s: %s\n", k, yamlString(v))
		}
	}
	b.WriteString("---\n\n")
	fmt.Fprintf(&b, "# %s\n\n", title)
	fmt.Fprintf(&b, "This model is `%s` with the LoRA adapter `%s` merged into its weights by hfmerge %s.\n\n",
		base, sourceName(l.adapter), version())
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
	if len(fm) == 0 && readme == nil {
		b.WriteString("\nThe base model's license applies; it had no model card to read it from.\n")
	}
	return b.Bytes(), nil
}

// yamlString quotes a value when plain YAML would misread it.
func yamlString(s string) string {
	if s != "" && !strings.ContainsAny(s, ":#{}[],&*!|>'\"%@`\n") && strings.TrimSpace(s) == s {
		return s
	}
	return strconv.Quote(s)
}
