// Package webhook reads the payloads the Hugging Face Hub sends when a watched repo
// changes (to a URL, or to a Job as WEBHOOK_PAYLOAD) and says whether one is a new
// commit on a given branch, and which commit. docs/jobs.md lists the fields and where
// they are documented.
package webhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// Version is the payload version this package reads: huggingface_hub reads only 3
// (its WebhookPayloadWebhook.version), the others being retired.
const Version = 3

// Payload is the part of a webhook payload that says what changed.
type Payload struct {
	Event       Event        `json:"event"`
	Repo        Repo         `json:"repo"`
	UpdatedRefs []UpdatedRef `json:"updatedRefs"`
	Webhook     Hook         `json:"webhook"`
}

// Event says what happened: Scope is where ("repo", "repo.content", "repo.config",
// "discussion", "discussion.comment", or a narrower scope added later), Action what
// ("create", "delete", "move", "update").
type Event struct {
	Action string `json:"action"`
	Scope  string `json:"scope"`
}

// Repo is the repo the event is about. HeadSha is the head of its main branch, sent
// only with scopes under "repo".
type Repo struct {
	Type    string `json:"type"` // model, dataset or space
	Name    string `json:"name"` // owner/name
	HeadSha string `json:"headSha"`
}

// UpdatedRef is one ref a content event moved. OldSha is nil for a new ref, NewSha
// nil for a deleted one.
type UpdatedRef struct {
	Ref    string  `json:"ref"`
	OldSha *string `json:"oldSha"`
	NewSha *string `json:"newSha"`
}

// Hook identifies the webhook that sent the payload (not the delivery: the payload
// carries no delivery id).
type Hook struct {
	ID      string `json:"id"`
	Version int    `json:"version"`
}

// FieldError is a payload field that is missing or malformed.
type FieldError struct {
	Field string // as in the payload, for example "repo.headSha" or "updatedRefs[1].newSha"
	Msg   string
}

func (e *FieldError) Error() string { return "webhook payload: " + e.Field + ": " + e.Msg }

// Parse reads a payload and checks the fields a decision rests on.
func Parse(b []byte) (*Payload, error) {
	var p Payload
	if err := json.Unmarshal(b, &p); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, &FieldError{te.Field, fmt.Sprintf("is a JSON %s, want a %s", te.Value, te.Type)}
		}
		return nil, fmt.Errorf("webhook payload: not a JSON object: %w", err)
	}
	switch {
	case p.Event.Scope == "":
		return nil, &FieldError{"event.scope", "missing"}
	case p.Event.Action == "":
		return nil, &FieldError{"event.action", "missing"}
	case p.Repo.Name == "":
		return nil, &FieldError{"repo.name", "missing"}
	case strings.Count(p.Repo.Name, "/") != 1 || strings.HasPrefix(p.Repo.Name, "/") || strings.HasSuffix(p.Repo.Name, "/"):
		return nil, &FieldError{"repo.name", fmt.Sprintf("%q is not owner/name", p.Repo.Name)}
	case p.Repo.Type == "":
		return nil, &FieldError{"repo.type", "missing"}
	case p.Webhook.Version != 0 && p.Webhook.Version != Version:
		return nil, &FieldError{"webhook.version", fmt.Sprintf("%d; hfmerge reads version %d payloads", p.Webhook.Version, Version)}
	}
	// These reach the terminal, in the reason an event is ignored, and the logs: text
	// with a control character (an escape sequence, a newline) is not the Hub's.
	for _, f := range []struct{ name, v string }{{"event.scope", p.Event.Scope}, {"event.action", p.Event.Action},
		{"repo.type", p.Repo.Type}, {"webhook.id", p.Webhook.ID}} {
		if !printable(f.v) {
			return nil, &FieldError{f.name, fmt.Sprintf("%q holds a control character", f.v)}
		}
	}
	if p.Repo.HeadSha != "" && !isSHA(p.Repo.HeadSha) {
		return nil, &FieldError{"repo.headSha", fmt.Sprintf("%q is not a 40-digit commit id", p.Repo.HeadSha)}
	}
	for i, r := range p.UpdatedRefs {
		f := fmt.Sprintf("updatedRefs[%d]", i)
		switch {
		case !strings.HasPrefix(r.Ref, "refs/") || !printable(r.Ref):
			return nil, &FieldError{f + ".ref", fmt.Sprintf("%q is not a ref (refs/...)", r.Ref)}
		case r.NewSha != nil && !isSHA(*r.NewSha):
			return nil, &FieldError{f + ".newSha", fmt.Sprintf("%q is not a 40-digit commit id", *r.NewSha)}
		case r.OldSha != nil && !isSHA(*r.OldSha):
			return nil, &FieldError{f + ".oldSha", fmt.Sprintf("%q is not a 40-digit commit id", *r.OldSha)}
		}
	}
	return &p, nil
}

// printable says whether s holds no control character (nor a non-printing one).
func printable(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) < 0
}

func isSHA(s string) bool {
	if len(s) != 40 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// IsCommitID says whether s is a full commit id as the Hub writes them.
func IsCommitID(s string) bool { return isSHA(s) }

// Ignored is an event that is not a new commit on the watched branch: nothing to do.
type Ignored struct{ Reason string }

func (e *Ignored) Error() string { return e.Reason }

// Commit returns the commit a payload moved branch to, or an *Ignored saying why the
// event is not a new commit on that branch.
//
// Content events ("repo.content", and narrower scopes, which the Hub documents as
// updates of the broader one) list the refs they moved in updatedRefs; the branch
// must be among them with a new commit. A payload without updatedRefs is taken at
// repo.headSha, which is documented as the main branch's head, so only for main.
func (p *Payload) Commit(branch string) (string, error) {
	if p.Event.Scope != "repo.content" && !strings.HasPrefix(p.Event.Scope, "repo.content.") {
		what := p.Event.Scope + " " + p.Event.Action
		if strings.HasPrefix(p.Event.Scope, "discussion") {
			what += " (a discussion or pull request event, not a commit)"
		}
		return "", &Ignored{fmt.Sprintf("the event is a %s of %s, not a new commit", what, p.Repo.Name)}
	}
	ref := "refs/heads/" + branch
	if len(p.UpdatedRefs) == 0 {
		if branch != "main" {
			return "", &Ignored{fmt.Sprintf("the event lists no updated refs, and its repo.headSha is the head of main, not of %s", branch)}
		}
		if p.Repo.HeadSha == "" {
			return "", &Ignored{fmt.Sprintf("the event names no commit of %s (no updatedRefs, no repo.headSha)", p.Repo.Name)}
		}
		return p.Repo.HeadSha, nil
	}
	var moved []string
	for _, r := range p.UpdatedRefs {
		if r.Ref != ref {
			moved = append(moved, r.Ref)
			continue
		}
		if r.NewSha == nil {
			return "", &Ignored{fmt.Sprintf("the event deleted %s of %s", ref, p.Repo.Name)}
		}
		return *r.NewSha, nil
	}
	return "", &Ignored{fmt.Sprintf("the event moved %s of %s, not %s", strings.Join(moved, ", "), p.Repo.Name, ref)}
}

// The environment a Job started by a webhook gets (hub-docs jobs-webhooks.md), and the
// Job's own id (jobs-configuration.md).
const (
	EnvPayload  = "WEBHOOK_PAYLOAD"   // the whole payload, as JSON
	EnvRepoID   = "WEBHOOK_REPO_ID"   // repo.name
	EnvRepoType = "WEBHOOK_REPO_TYPE" // repo.type
	EnvDelivery = "WEBHOOK_ID"        // the delivery, where the Hub sets it (not in the docs read; see docs/jobs.md)
	EnvJobID    = "JOB_ID"            // the Job running
)

// CheckEnv checks a payload against the repo the Job's environment names (either may
// be ""): a payload that disagrees with it is not the one the Hub sent this Job.
func (p *Payload) CheckEnv(repoID, repoType string) error {
	if repoID != "" && !strings.EqualFold(repoID, p.Repo.Name) {
		return &FieldError{"repo.name", fmt.Sprintf("%q, but %s is %q", p.Repo.Name, EnvRepoID, repoID)}
	}
	if repoType != "" && repoType != p.Repo.Type {
		return &FieldError{"repo.type", fmt.Sprintf("%q, but %s is %q", p.Repo.Type, EnvRepoType, repoType)}
	}
	return nil
}
