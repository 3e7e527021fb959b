package hfmerge

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/hub/hubtest"
	"github.com/hfmerge/hfmerge/upload"
	"github.com/hfmerge/hfmerge/webhook"
)

func commitEvent(t *testing.T, repoType, repo, ref, sha string) *webhook.Payload {
	t.Helper()
	p, err := webhook.Parse([]byte(`{"event":{"action":"update","scope":"repo.content"},
		"repo":{"type":"` + repoType + `","name":"` + repo + `"},
		"updatedRefs":[{"ref":"` + ref + `","oldSha":null,"newSha":"` + sha + `"}],"webhook":{"id":"h1","version":3}}`))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFromWebhook(t *testing.T) {
	const sha = "575db8b7a51b6f85eb06eee540738584589f131c"
	target := hub.Repo{Type: "model", ID: "alice/merged"}
	for _, c := range []struct {
		name              string
		event             *webhook.Payload
		base              string
		adapters          []string
		wantBase          string
		wantAdapters      []string
		ignored, usageErr string
	}{
		{name: "adapter from the event", event: commitEvent(t, "model", "alice/lora", "refs/heads/main", sha),
			base: "org/base", wantBase: "org/base", wantAdapters: []string{"alice/lora@" + sha}},
		{name: "named adapter, in a stack, weight kept", event: commitEvent(t, "model", "Alice/LoRA", "refs/heads/main", sha),
			base: "org/base", adapters: []string{"org/style:0.5", "alice/lora:0.25"},
			wantBase: "org/base", wantAdapters: []string{"org/style:0.5", "alice/lora@" + sha + ":0.25"}},
		{name: "adapter on a branch", event: commitEvent(t, "model", "alice/lora", "refs/heads/dev", sha),
			base: "org/base", adapters: []string{"alice/lora@dev"}, wantBase: "org/base", wantAdapters: []string{"alice/lora@" + sha}},
		{name: "the base changed", event: commitEvent(t, "model", "org/base", "refs/heads/main", sha),
			base: "org/base", adapters: []string{"alice/lora"}, wantBase: "org/base@" + sha, wantAdapters: []string{"alice/lora"}},
		{name: "another branch", event: commitEvent(t, "model", "alice/lora", "refs/heads/dev", sha),
			base: "org/base", adapters: []string{"alice/lora"}, ignored: "not refs/heads/main"},
		{name: "another repo", event: commitEvent(t, "model", "alice/other", "refs/heads/main", sha),
			base: "org/base", adapters: []string{"alice/lora"}, ignored: "neither --base nor an --adapter"},
		{name: "a dataset of the same name", event: commitEvent(t, "dataset", "alice/lora", "refs/heads/main", sha),
			base: "org/base", adapters: []string{"alice/lora"}, ignored: "neither"},
		{name: "a dataset, no adapter given", event: commitEvent(t, "dataset", "alice/data", "refs/heads/main", sha),
			base: "org/base", ignored: "an adapter is a model repo"},
		{name: "the target's own commit", event: commitEvent(t, "model", "alice/merged", "refs/heads/main", sha),
			base: "org/base", ignored: "the repo this push publishes to"},
		{name: "a local adapter", event: commitEvent(t, "model", "alice/lora", "refs/heads/main", sha),
			base: "org/base", adapters: []string{"./alice/lora"}, ignored: "neither"},
		{name: "pinned to a commit", event: commitEvent(t, "model", "alice/lora", "refs/heads/main", sha),
			base: "org/base", adapters: []string{"alice/lora@ce9a4674fa833a68d5a73ec355f0ea95eedd60b7"}, usageErr: "follows a branch"},
	} {
		w, err := FromWebhook(c.event, c.base, c.adapters, target)
		var ig *webhook.Ignored
		var ue *UsageError
		switch {
		case c.ignored != "":
			if !errors.As(err, &ig) || !strings.Contains(ig.Reason, c.ignored) {
				t.Errorf("%s: %v, want ignored saying %q", c.name, err, c.ignored)
			}
		case c.usageErr != "":
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), c.usageErr) {
				t.Errorf("%s: %v, want a usage error saying %q", c.name, err, c.usageErr)
			}
		case err != nil:
			t.Errorf("%s: %v", c.name, err)
		case w.Base != c.wantBase || !slices.Equal(w.Adapters, c.wantAdapters):
			t.Errorf("%s: base %s adapters %q, want %s %q", c.name, w.Base, w.Adapters, c.wantBase, c.wantAdapters)
		case w.Run.Commit != sha || w.Run.Webhook != "h1" || w.Run.Event != "repo.content update" || !strings.HasPrefix(w.Run.Ref, "refs/heads/"):
			t.Errorf("%s: run %+v", c.name, w.Run)
		}
	}
}

// TestFromWebhookRepoName: the event's repo name comes from the payload, which a relay
// (or anyone who can post to the handler) writes. It must be a repo id and nothing more:
// a weight (":5"), a revision ("@dev"), a type prefix or a local path would otherwise be
// merged as the adapter spec it reads as.
func TestFromWebhookRepoName(t *testing.T) {
	const sha = "575db8b7a51b6f85eb06eee540738584589f131c"
	target := hub.Repo{Type: "model", ID: "alice/merged"}
	for _, name := range []string{"alice/lora:5", "alice/lora@dev", "alice/lora@" + sha, "./lora", "~/lora", "alice/..", "alice/a--b", "alice/lo ra"} {
		p, err := webhook.Parse([]byte(`{"event":{"action":"update","scope":"repo.content"},
			"repo":{"type":"model","name":"` + name + `"},
			"updatedRefs":[{"ref":"refs/heads/main","oldSha":null,"newSha":"` + sha + `"}],"webhook":{"id":"h1","version":3}}`))
		if err != nil {
			continue // refused when read: as good
		}
		w, err := FromWebhook(p, "org/base", nil, target)
		var fe *webhook.FieldError
		if !errors.As(err, &fe) || fe.Field != "repo.name" {
			adapters := []string(nil)
			if w != nil {
				adapters = w.Adapters
			}
			t.Errorf("repo.name %q: adapters %q, error %v; want a refusal naming repo.name", name, adapters, err)
		}
	}
}

func TestFromWebhookRepoType(t *testing.T) {
	p := commitEvent(t, "models", "alice/lora", "refs/heads/main", "575db8b7a51b6f85eb06eee540738584589f131c")
	var fe *webhook.FieldError
	if _, err := FromWebhook(p, "org/base", nil, hub.Repo{Type: "model", ID: "alice/merged"}); !errors.As(err, &fe) || fe.Field != "repo.type" {
		t.Errorf("repo.type \"models\": %v, want a refusal naming repo.type", err)
	}
}

// TestSuperseded: an event is superseded only when its branch has moved on to a commit
// whose merge the target records; an event naming the head (a reset to an older commit
// included) or a target recording another commit is not.
func TestSuperseded(t *testing.T) {
	h := hubtest.New(hubtest.WithToken(writeToken, "alice", hubtest.ScopeWrite)).Start(t)
	first, _ := h.Seed("alice/lora", map[string][]byte{"adapter_config.json": []byte(`{"r":1}`)})
	second, _ := h.Seed("alice/lora", map[string][]byte{"adapter_config.json": []byte(`{"r":2}`)})
	c, err := hub.New(hub.Options{Endpoint: h.URL(), Token: writeToken})
	if err != nil {
		t.Fatal(err)
	}
	target := upload.Target{Client: c, Repo: hub.Repo{Type: "model", ID: "alice/merged"}}
	record := func(commit string) {
		b, _ := json.Marshal(Provenance{Tool: "hfmerge test", Inputs: "x", Base: SourceID{Repo: "org/base", Commit: strings.Repeat("0", 40)},
			Adapter: SourceID{Repo: "alice/lora", Commit: commit}})
		if _, err := h.Seed("alice/merged", map[string][]byte{ProvenanceFile: b}); err != nil {
			t.Fatal(err)
		}
	}
	run := func(commit string) *Run { return &Run{Repo: "alice/lora", Ref: "refs/heads/main", Commit: commit} }
	ctx := context.Background()
	if err := Superseded(ctx, target, run(first)); err != nil {
		t.Errorf("no hfmerge.json on the target: %v", err)
	}
	record(first)
	if err := Superseded(ctx, target, run(first)); err != nil {
		t.Errorf("the target records the event's commit, the head is newer: %v", err)
	}
	record(second)
	var ig *webhook.Ignored
	if err := Superseded(ctx, target, run(first)); !errors.As(err, &ig) || !strings.Contains(ig.Reason, "older than what is published") {
		t.Errorf("the target records the head, the event is older: %v", err)
	}
	if err := Superseded(ctx, target, run(second)); err != nil {
		t.Errorf("the event names the head: %v", err)
	}
	if err := Superseded(ctx, upload.Target{Client: c, Repo: target.Repo, PR: true}, run(first)); err != nil {
		t.Errorf("a pull request target: %v", err)
	}
}
