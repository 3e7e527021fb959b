package main

import (
	"encoding/json"
	"os"
	"path"
	"slices"
	"strings"
	"testing"
)

// No Docker daemon runs where the tests do, so `docker build --check` cannot; this test
// parses the Dockerfile as far as its syntax goes (instructions, continuations, stages)
// and checks that it makes the image scripts/image.sh makes: same binary path,
// entrypoint, user, environment.

type instruction struct {
	line int
	cmd  string // upper case
	args string
}

var dockerfileInstructions = []string{"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
	"LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}

func parseDockerfile(t *testing.T, text string) []instruction {
	t.Helper()
	var out []instruction
	var cur *instruction
	for i, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if cur == nil && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur != nil && strings.HasPrefix(trimmed, "#") {
			continue // a comment inside a continued instruction
		}
		cont := strings.HasSuffix(trimmed, `\`)
		trimmed = strings.TrimSuffix(trimmed, `\`)
		if cur == nil {
			cmd, args, _ := strings.Cut(trimmed, " ")
			cur = &instruction{line: i + 1, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
			if !slices.Contains(dockerfileInstructions, cur.cmd) {
				t.Errorf("Dockerfile:%d: unknown instruction %q", i+1, cmd)
			}
		} else {
			cur.args += " " + strings.TrimSpace(trimmed)
		}
		if !cont {
			out = append(out, *cur)
			cur = nil
		}
	}
	if cur != nil {
		t.Errorf("Dockerfile:%d: continued past the end", cur.line)
	}
	return out
}

func TestDockerfile(t *testing.T) {
	text, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	ins := parseDockerfile(t, string(text))
	if len(ins) == 0 || ins[0].cmd != "FROM" {
		t.Fatalf("Dockerfile does not start with FROM: %v", ins)
	}
	stages := map[string]bool{}
	var final []instruction // the last stage's instructions
	for _, in := range ins {
		switch in.cmd {
		case "FROM":
			f := strings.Fields(in.args)
			if n := len(f); n >= 3 && strings.EqualFold(f[n-2], "AS") {
				stages[f[n-1]] = true
			}
			final = nil
		case "COPY":
			for _, f := range strings.Fields(in.args) {
				if from, ok := strings.CutPrefix(f, "--from="); ok && !stages[from] {
					t.Errorf("Dockerfile:%d: COPY --from=%s names no earlier stage", in.line, from)
				}
			}
		case "ENTRYPOINT", "CMD":
			var argv []string
			if err := json.Unmarshal([]byte(in.args), &argv); err != nil {
				t.Errorf("Dockerfile:%d: %s is not the exec (JSON) form: %v", in.line, in.cmd, err)
			}
		}
		final = append(final, in)
	}
	get := func(cmd string) []string {
		var vs []string
		for _, in := range final {
			if in.cmd == cmd {
				vs = append(vs, in.args)
			}
		}
		return vs
	}
	if e := get("ENTRYPOINT"); len(e) != 1 || e[0] != `["`+binaryPath+`"]` {
		t.Errorf("final stage ENTRYPOINT %v, want [%q] as scripts/image.sh", e, binaryPath)
	}
	if u := get("USER"); len(u) != 1 || u[0] != "65532:65532" {
		t.Errorf("final stage USER %v, want 65532:65532", u)
	}
	if w := get("WORKDIR"); len(w) != 1 || w[0] != home {
		t.Errorf("final stage WORKDIR %v, want %s", w, home)
	}
	var envs []string
	for _, e := range get("ENV") {
		envs = append(envs, strings.Fields(e)...)
	}
	for _, want := range env {
		if strings.HasPrefix(want, "PATH=") {
			continue // distroless's own PATH includes /usr/local/bin
		}
		if !slices.Contains(envs, want) {
			t.Errorf("final stage ENV %v lacks %s", envs, want)
		}
	}
	if c := get("COPY"); len(c) != 2 || !strings.HasSuffix(c[0], " "+binaryPath) ||
		!strings.Contains(c[1], "--chown=65532:65532") || !strings.HasSuffix(c[1], " "+path.Dir(hfHome)) {
		t.Errorf("final stage COPY %v, want the binary copied to %s and %s made the user's", c, binaryPath, hfHome)
	}
}
