// Command checkexamples validates every YAML file under a directory (the repo's
// examples/): each must parse, and be a GitHub Actions workflow that actionlint
// accepts, or Kubernetes objects that decode strictly into the Kubernetes API's own Go
// types (k8s.io/api: no unknown field, every value of its type) and carry what the
// API server requires of them. It needs no network once its modules are in the Go
// module cache, and lives in a module of its own so that hfmerge itself does not
// depend on any of this.
//
//	go run . DIR
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/rhysd/actionlint"
	goyaml "go.yaml.in/yaml/v2"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: checkexamples DIR")
		os.Exit(2)
	}
	files, err := yamlFiles(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "checkexamples:", err)
		os.Exit(1)
	}
	if len(files) == 0 {
		fmt.Fprintf(os.Stderr, "checkexamples: no YAML file under %s\n", os.Args[1])
		os.Exit(1)
	}
	failed := 0
	for _, f := range files {
		kind, problems := check(f)
		if len(problems) == 0 {
			fmt.Printf("ok   %s (%s)\n", f, kind)
			continue
		}
		failed++
		for _, p := range problems {
			fmt.Printf("FAIL %s: %s\n", f, p)
		}
	}
	fmt.Printf("%d passed, %d failed\n", len(files)-failed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}

func yamlFiles(dir string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".yml") || strings.HasSuffix(p, ".yaml")) {
			files = append(files, p)
		}
		return nil
	})
	sort.Strings(files)
	return files, err
}

// check says what a file is and what is wrong with it.
func check(path string) (string, []string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unreadable", []string{err.Error()}
	}
	docs, err := documents(b)
	if err != nil {
		return "not YAML", []string{err.Error()}
	}
	if len(docs) == 0 {
		return "empty", []string{"no YAML document"}
	}
	var top map[string]any
	if err := goyaml.Unmarshal(docs[0], &top); err != nil {
		return "not YAML", []string{err.Error()}
	}
	if _, ok := top["jobs"]; ok {
		if len(docs) > 1 {
			return "GitHub Actions workflow", []string{"a workflow file holds one YAML document"}
		}
		return "GitHub Actions workflow", lintWorkflow(path, b)
	}
	var problems, kinds []string
	for i, d := range docs {
		kind, ps := checkObject(d)
		kinds = append(kinds, kind)
		for _, p := range ps {
			problems = append(problems, fmt.Sprintf("document %d (%s): %s", i+1, kind, p))
		}
	}
	return "Kubernetes " + strings.Join(kinds, ", "), problems
}

// documents splits a YAML stream into its documents, each checked to parse.
func documents(b []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var docs [][]byte
	for {
		d, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		var v any
		if err := goyaml.Unmarshal(d, &v); err != nil {
			return nil, fmt.Errorf("document %d: %w", len(docs)+1, err)
		}
		if v != nil {
			docs = append(docs, d)
		}
	}
}

// lintWorkflow runs actionlint's rules on a workflow. Shellcheck and pyflakes, which
// it runs when installed, are off, so the result does not depend on the machine.
func lintWorkflow(path string, b []byte) []string {
	l, err := actionlint.NewLinter(io.Discard, &actionlint.LinterOptions{Shellcheck: "", Pyflakes: ""})
	if err != nil {
		return []string{err.Error()}
	}
	errs, err := l.Lint(path, b, nil)
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, e := range errs {
		out = append(out, fmt.Sprintf("line %d col %d: %s [%s]", e.Line, e.Column, e.Message, e.Kind))
	}
	return out
}
