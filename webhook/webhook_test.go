package webhook

import (
	"errors"
	"strings"
	"testing"
)

const (
	sha1 = "575db8b7a51b6f85eb06eee540738584589f131c"
	sha0 = "ce9a4674fa833a68d5a73ec355f0ea95eedd60b7"
)

// event is a content event on alice/lora with the given updatedRefs JSON.
func event(refs string) string {
	return `{"event":{"action":"update","scope":"repo.content"},
	"repo":{"type":"model","name":"alice/lora","headSha":"` + sha1 + `","owner":{"id":"x"}},
	"updatedRefs":` + refs + `,"webhook":{"id":"hook1","version":3}}`
}

func TestParseBad(t *testing.T) {
	for _, c := range []struct{ name, payload, field string }{
		{"not JSON", `{"event":`, "not a JSON object"},
		{"array", `[1,2]`, "not a JSON object"},
		{"no scope", `{"event":{"action":"update"},"repo":{"type":"model","name":"a/b"}}`, "event.scope: missing"},
		{"no action", `{"event":{"scope":"repo"},"repo":{"type":"model","name":"a/b"}}`, "event.action: missing"},
		{"no repo", `{"event":{"action":"update","scope":"repo.content"}}`, "repo.name: missing"},
		{"bad name", `{"event":{"action":"update","scope":"repo"},"repo":{"type":"model","name":"ab"}}`, `repo.name: "ab" is not owner/name`},
		{"no type", `{"event":{"action":"update","scope":"repo"},"repo":{"name":"a/b"}}`, "repo.type: missing"},
		{"name a number", `{"event":{"action":"update","scope":"repo"},"repo":{"type":"model","name":7}}`, "repo.name: is a JSON number"},
		{"version", `{"event":{"action":"update","scope":"repo"},"repo":{"type":"model","name":"a/b"},"webhook":{"id":"h","version":2}}`, "webhook.version: 2"},
		{"short headSha", `{"event":{"action":"update","scope":"repo"},"repo":{"type":"model","name":"a/b","headSha":"abc"}}`, `repo.headSha: "abc" is not a 40-digit commit id`},
		{"bad ref", event(`[{"ref":"main","oldSha":null,"newSha":"` + sha1 + `"}]`), `updatedRefs[0].ref: "main" is not a ref`},
		{"bad newSha", event(`[{"ref":"refs/tags/x","oldSha":null,"newSha":"` + sha1 + `"},{"ref":"refs/heads/main","oldSha":null,"newSha":"HEAD"}]`), `updatedRefs[1].newSha: "HEAD"`},
		{"bad oldSha", event(`[{"ref":"refs/heads/main","oldSha":"` + strings.ToUpper(sha0) + `","newSha":"` + sha1 + `"}]`), "updatedRefs[0].oldSha"},
		{"refs not a list", event(`{"ref":"refs/heads/main"}`), "updatedRefs: is a JSON object"},
		// Text that reaches the terminal in the reason an event is ignored: no control
		// characters (an escape sequence would rewrite what the user sees).
		{"escape in ref", event(`[{"ref":"refs/tags/\u001b[2Jv1","oldSha":null,"newSha":"` + sha1 + `"}]`), "updatedRefs[0].ref: "},
		{"newline in scope", `{"event":{"action":"update","scope":"repo\nok"},"repo":{"type":"model","name":"a/b"}}`, "event.scope: "},
		{"escape in action", `{"event":{"action":"\u001b]0;x\u0007","scope":"repo"},"repo":{"type":"model","name":"a/b"}}`, "event.action: "},
		{"escape in type", `{"event":{"action":"update","scope":"repo"},"repo":{"type":"model\u001b","name":"a/b"}}`, "repo.type: "},
		{"escape in webhook id", `{"event":{"action":"update","scope":"repo"},"repo":{"type":"model","name":"a/b"},"webhook":{"id":"h\r","version":3}}`, "webhook.id: "},
	} {
		_, err := Parse([]byte(c.payload))
		if err == nil || !strings.Contains(err.Error(), c.field) || !strings.HasPrefix(err.Error(), "webhook payload: ") {
			t.Errorf("%s: %v, want an error naming %q", c.name, err, c.field)
		}
		var fe *FieldError
		if strings.Contains(c.field, ":") && !errors.As(err, &fe) {
			t.Errorf("%s: %T is not a *FieldError", c.name, err)
		}
	}
}

func TestCommit(t *testing.T) {
	for _, c := range []struct {
		name, payload, branch string
		want                  string // the commit, or words of the reason it is ignored
		ignored               bool
	}{
		{"main", event(`[{"ref":"refs/heads/main","oldSha":"` + sha0 + `","newSha":"` + sha1 + `"}]`), "main", sha1, false},
		{"new branch", event(`[{"ref":"refs/heads/dev","oldSha":null,"newSha":"` + sha0 + `"}]`), "dev", sha0, false},
		{"other branch", event(`[{"ref":"refs/heads/dev","oldSha":null,"newSha":"` + sha0 + `"}]`), "main", "moved refs/heads/dev", true},
		{"tag", event(`[{"ref":"refs/tags/v1","oldSha":null,"newSha":"` + sha1 + `"}]`), "main", "moved refs/tags/v1", true},
		{"pull request", event(`[{"ref":"refs/pr/3","oldSha":null,"newSha":"` + sha1 + `"}]`), "main", "refs/pr/3", true},
		{"deleted", event(`[{"ref":"refs/heads/main","oldSha":"` + sha0 + `","newSha":null}]`), "main", "deleted refs/heads/main", true},
		{"narrower scope", strings.Replace(event(`[{"ref":"refs/heads/main","oldSha":null,"newSha":"`+sha1+`"}]`), `"repo.content"`, `"repo.content.lfs"`, 1), "main", sha1, false},
		{"headSha only", `{"event":{"action":"update","scope":"repo.content"},"repo":{"type":"model","name":"a/b","headSha":"` + sha1 + `"}}`, "main", sha1, false},
		{"headSha, other branch", `{"event":{"action":"update","scope":"repo.content"},"repo":{"type":"model","name":"a/b","headSha":"` + sha1 + `"}}`, "dev", "head of main", true},
		{"no commit", `{"event":{"action":"update","scope":"repo.content"},"repo":{"type":"model","name":"a/b"}}`, "main", "names no commit", true},
		{"config", `{"event":{"action":"update","scope":"repo.config"},"repo":{"type":"model","name":"a/b","headSha":"` + sha1 + `"},"updatedConfig":{"private":true}}`, "main", "repo.config update", true},
		{"repo created", `{"event":{"action":"create","scope":"repo"},"repo":{"type":"model","name":"a/b","headSha":"` + sha1 + `"}}`, "main", "repo create", true},
		{"discussion", `{"event":{"action":"create","scope":"discussion"},"repo":{"type":"model","name":"a/b"},"discussion":{"num":1}}`, "main", "discussion or pull request", true},
	} {
		p, err := Parse([]byte(c.payload))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got, err := p.Commit(c.branch)
		var ig *Ignored
		switch {
		case c.ignored && (!errors.As(err, &ig) || !strings.Contains(ig.Reason, c.want) || got != ""):
			t.Errorf("%s: %q, %v; want ignored saying %q", c.name, got, err, c.want)
		case !c.ignored && (err != nil || got != c.want):
			t.Errorf("%s: %q, %v; want %s", c.name, got, err, c.want)
		}
	}
}

func TestCheckEnv(t *testing.T) {
	p, err := Parse([]byte(event(`[]`)))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CheckEnv("Alice/Lora", "model"); err != nil {
		t.Errorf("same repo: %v", err)
	}
	if err := p.CheckEnv("", ""); err != nil {
		t.Errorf("no environment: %v", err)
	}
	if err := p.CheckEnv("alice/other", ""); err == nil || !strings.Contains(err.Error(), "repo.name") || !strings.Contains(err.Error(), "WEBHOOK_REPO_ID") {
		t.Errorf("other repo: %v", err)
	}
	if err := p.CheckEnv("", "dataset"); err == nil || !strings.Contains(err.Error(), "WEBHOOK_REPO_TYPE") {
		t.Errorf("other type: %v", err)
	}
}
