package hfmerge

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hfmerge/hfmerge/mergeplan"
)

// extra is a file of the merged model other than its shards.
type extra struct {
	name string
	data []byte
}

// modelFile says whether a file of the base (or, for tokenizer files, the adapter) is
// one the merged model needs and is published with it: configuration, tokenizer and
// processor files, chat templates, custom code a config names, licences and notices.
// Anything else (other weight formats, logs, training state, stray files) stays behind,
// so that nothing the user did not mean to publish is.
func modelFile(name string) bool {
	lower := strings.ToLower(name)
	switch name {
	case "generation_config.json", "preprocessor_config.json", "processor_config.json",
		"video_preprocessor_config.json", "feature_extractor_config.json", "image_processor_config.json",
		"chat_template.jinja", "chat_template.json", "params.json":
		return true
	}
	switch {
	case isTokenizerFile(name),
		strings.HasPrefix(lower, "license"), strings.HasPrefix(lower, "licence"),
		strings.HasPrefix(lower, "notice"), strings.HasPrefix(lower, "use_policy"),
		strings.HasSuffix(name, ".py") && !strings.ContainsAny(name, "/"):
		return true
	}
	return false
}

// isTokenizerFile reports whether a file belongs to the tokenizer: an adapter's replace
// the base's, since a trainer that added tokens saves its tokenizer there.
func isTokenizerFile(name string) bool {
	switch name {
	case "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
		"spiece.model", "sentencepiece.bpe.model", "tokenizer.model":
		return true
	}
	return strings.HasPrefix(name, "tokenizer") || strings.HasSuffix(name, ".tiktoken")
}

// extras builds the merged model's files other than its shards, in the order they are
// written: the index, config.json, the files copied from the base and the adapter, and
// the model card. merge and push both publish exactly this set, plus hfmerge.json.
func (l *Inputs) extras(ctx context.Context, p *mergeplan.Plan, title, use string, log *slog.Logger) ([]extra, error) {
	var out []extra
	if p.Index != nil {
		out = append(out, extra{p.IndexName, p.Index})
	}
	cfg := p.Config
	if cfg == nil {
		var err error
		if cfg, err = l.Base.Read(ctx, "config.json"); err != nil {
			return nil, err
		}
	}
	if cfg != nil {
		out = append(out, extra{"config.json", cfg})
	}
	copied := map[string]bool{}
	var outside []string
	copyFrom := func(src Source, names []string) error {
		for _, name := range names {
			if copied[name] {
				continue
			}
			if linksOut(src, name) {
				outside = append(outside, filepath.Join(filepath.Base(filepath.Clean(src.Dir())), name))
				continue
			}
			b, err := src.Read(ctx, name)
			if err != nil {
				return err
			}
			if b != nil {
				copied[name] = true
				out = append(out, extra{name, b})
			}
		}
		return nil
	}
	ad, err := l.Adapter.Files(ctx)
	if err != nil {
		return nil, err
	}
	var fromAdapter []string
	for _, name := range sortedNames(ad) {
		if ad[name] >= 0 && isTokenizerFile(name) {
			fromAdapter = append(fromAdapter, name)
		}
	}
	if err := copyFrom(l.Adapter, fromAdapter); err != nil {
		return nil, err
	}
	files, err := l.Base.Files(ctx)
	if err != nil {
		return nil, err
	}
	var fromBase, skipped []string
	for _, name := range sortedNames(files) {
		switch {
		case copied[name], name == "config.json", name == "README.md", name == ProvenanceFile, name == p.IndexName,
			slices.ContainsFunc(p.Shards, func(s mergeplan.Shard) bool { return s.Name == name }):
		case files[name] >= 0 && modelFile(name):
			fromBase = append(fromBase, name)
		case name != ".gitattributes":
			skipped = append(skipped, name)
		}
	}
	if err := copyFrom(l.Base, fromBase); err != nil {
		return nil, err
	}
	if len(outside) > 0 && log != nil {
		log.Warn("not published: a link out of its directory (copy the file in if the model needs it)", "files", strings.Join(outside, ", "))
	}
	if len(skipped) > 0 && log != nil {
		log.Info("not published from the base (not a file the model needs)", "files", strings.Join(skipped, ", "))
	}
	card, err := modelCard(ctx, l, p, title, use)
	if err != nil {
		return nil, err
	}
	return append(out, extra{"README.md", card}), nil
}

func sortedNames(m map[string]int64) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// sourceName names a source briefly: its Hub id, else its directory's name (never the
// full path, which is the user's business).
func sourceName(s Source) string {
	if id := s.HubID(); id != "" {
		return id
	}
	return filepath.Base(filepath.Clean(s.String()))
}

// checkOut refuses an output directory that is one of the inputs.
func checkOut(out string, l *Inputs) error {
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			return p
		}
		if r, err := filepath.EvalSymlinks(a); err == nil {
			return r
		}
		return a
	}
	o := abs(out)
	for _, in := range []struct {
		flag string
		src  Source
	}{{"--base", l.Base}, {"--adapter", l.Adapter}} {
		if in.src.Dir() != "" && o == abs(in.src.Dir()) {
			return &UsageError{fmt.Errorf("--out %s is the %s directory; write the merged model somewhere else", out, in.flag)}
		}
	}
	return nil
}

// linksOut says whether a local source's file is a symbolic link that leaves its
// directory: publishing it would publish whatever it points at. A snapshot of the HF
// cache is a folder of links into its repo's blobs, which stay inside the repo's folder.
func linksOut(src Source, name string) bool {
	dir := src.Dir()
	if dir == "" {
		return false
	}
	p := filepath.Join(dir, name)
	if st, err := os.Lstat(p); err != nil || st.Mode()&os.ModeSymlink == 0 {
		return false
	}
	root := dir
	if src.HubID() != "" {
		root = filepath.Dir(filepath.Dir(dir)) // models--org--name, above snapshots/<commit>
	}
	rootAbs, err1 := filepath.EvalSymlinks(root)
	target, err2 := filepath.EvalSymlinks(p)
	if err1 != nil || err2 != nil {
		return true
	}
	rel, err := filepath.Rel(rootAbs, target)
	return err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator))
}
