package hfmerge

import (
	"context"
	"fmt"
	"strings"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/upload"
	"github.com/hfmerge/hfmerge/webhook"
)

// Run says what started a push. It goes into hfmerge.json for people and tools to
// read, and is no part of the inputs digest: a retried delivery, or the same merge
// started another way, finds the target up to date.
type Run struct {
	Job      string `json:"job,omitempty"`      // the Hugging Face Job that ran the push (JOB_ID)
	Webhook  string `json:"webhook,omitempty"`  // the webhook that started it (the payload's webhook.id)
	Delivery string `json:"delivery,omitempty"` // the delivery, where the Job's environment names it (WEBHOOK_ID)
	Event    string `json:"event,omitempty"`    // event.scope and event.action, as "repo.content update"
	Repo     string `json:"repo,omitempty"`     // the repo the event is about
	Ref      string `json:"ref,omitempty"`      // the ref it moved, refs/heads/<branch>
	Commit   string `json:"commit,omitempty"`   // the commit it moved the ref to: the one merged
}

// WebhookPush is what a push started by a webhook merges.
type WebhookPush struct {
	Base     string   // --base, pinned to the event's commit when the event is about it
	Adapters []string // --adapter values, likewise; the event's repo when none was given
	Pinned   []string // which sources were pinned, for the log ("--adapter alice/lora@<commit>")
	Run      Run
}

// FromWebhook decides what a push started by payload p merges: the source the event is
// about (an --adapter, or the --base) at exactly the commit the event moved its watched
// branch to, every other source as given. The watched branch is the revision the
// source names (main when it names none). With no --adapter, the event's repo is the
// adapter. target is the repo the push publishes to.
//
// An event that calls for no merge returns a *webhook.Ignored saying why: not a new
// commit (another scope, a deletion, another ref, a pull request), a repo that is no
// source of this push (the webhook watches more, or it is the target's own commit).
func FromWebhook(p *webhook.Payload, base string, adapters []string, target hub.Repo) (*WebhookPush, error) {
	// The name is the payload's, which whoever can post to a handler writes: it must be
	// a repo id and nothing else, or a ":5", "@dev" or "./dir" in it would be read as
	// the weight, revision or local path of the adapter spec it becomes below.
	if !validRepoID(p.Repo.Name) {
		return nil, &UsageError{&webhook.FieldError{Field: "repo.name", Msg: fmt.Sprintf("%q is not a repo id (owner/name)", p.Repo.Name)}}
	}
	switch p.Repo.Type {
	case "model", "dataset", "space":
	default:
		return nil, &UsageError{&webhook.FieldError{Field: "repo.type", Msg: fmt.Sprintf("%q is not model, dataset or space", p.Repo.Type)}}
	}
	evRepo := hub.Repo{Type: p.Repo.Type, ID: p.Repo.Name}
	w := &WebhookPush{Base: base, Adapters: append([]string(nil), adapters...),
		Run: Run{Webhook: p.Webhook.ID, Event: p.Event.Scope + " " + p.Event.Action, Repo: evRepo.String()}}
	if sameRepo(evRepo, target) {
		return nil, &webhook.Ignored{Reason: fmt.Sprintf("the event is about %s, the repo this push publishes to (its own commit, most likely)", evRepo)}
	}
	type match struct {
		spec *string // the value to pin
		role string
	}
	var found []match
	if namesRepo(base, evRepo) {
		found = append(found, match{&w.Base, "--base"})
	}
	for i := range w.Adapters {
		if src, _ := splitWeight(w.Adapters[i]); namesRepo(src, evRepo) {
			found = append(found, match{&w.Adapters[i], "--adapter"})
		}
	}
	if len(adapters) == 0 {
		if evRepo.Type != "model" {
			return nil, &webhook.Ignored{Reason: fmt.Sprintf("the event is about the %s %s; an adapter is a model repo", evRepo.Type, evRepo.ID)}
		}
		w.Adapters = []string{evRepo.ID}
		found = append(found, match{&w.Adapters[0], "--adapter"})
	}
	if len(found) == 0 {
		return nil, &webhook.Ignored{Reason: fmt.Sprintf("the event is about %s, which is neither --base nor an --adapter of this push", evRepo)}
	}
	for _, m := range found {
		src, weight := cutWeight(*m.spec)
		_, rev, _ := hub.ParseRepo(src)
		branch := rev
		switch {
		case branch == "":
			branch = "main"
		case webhook.IsCommitID(rev) || strings.HasPrefix(rev, "refs/"):
			return nil, &UsageError{fmt.Errorf("%s %s names %s; a push started by a webhook follows a branch (give the branch, or none for main)", m.role, src, rev)}
		}
		c, err := p.Commit(branch)
		if err != nil {
			return nil, err
		}
		w.Run.Ref = "refs/heads/" + branch
		w.Run.Commit = c
		id, _, _ := strings.Cut(src, "@")
		*m.spec = id + "@" + c + weight
		w.Pinned = append(w.Pinned, m.role+" "+id+"@"+c)
	}
	return w, nil
}

// namesRepo says whether a --base or --adapter value names the Hub repo r.
func namesRepo(spec string, r hub.Repo) bool {
	if IsLocal(spec) {
		return false
	}
	repo, _, err := hub.ParseRepo(spec)
	return err == nil && sameRepo(repo, r)
}

// sameRepo compares repo ids as the Hub does, ignoring case.
func sameRepo(a, b hub.Repo) bool {
	ta, tb := a.Type, b.Type
	if ta == "" {
		ta = "model"
	}
	if tb == "" {
		tb = "model"
	}
	return ta == tb && strings.EqualFold(a.ID, b.ID)
}

// cutWeight splits SRC[:WEIGHT] as Sources.Stack reads it, keeping the weight's text
// (":0.5", or "") to put back.
func cutWeight(spec string) (src, weight string) {
	s, _ := splitWeight(spec)
	return s, spec[len(s):]
}

// Superseded returns a *webhook.Ignored when the event r is older than what the target
// holds: the branch the event moved has moved on since, to a commit whose merge the
// target's hfmerge.json already records. The Hub does not promise to deliver events in
// order, and a retried or replayed old delivery would otherwise publish the older merge
// over the newer. An event naming the branch's head now (a new commit, or the branch
// reset to an older one) is never superseded, nor is one whose branch or target cannot
// be read: the push then runs as it would without this check, and a target holding the
// merge of some other commit than the head is left to the event that names the head.
func Superseded(ctx context.Context, t upload.Target, r *Run) error {
	if r == nil || r.Commit == "" || t.PR {
		return nil
	}
	branch, ok := strings.CutPrefix(r.Ref, "refs/heads/")
	if !ok {
		return nil
	}
	src, _, err := hub.ParseRepo(r.Repo)
	if err != nil {
		return nil
	}
	head, err := t.Client.BranchHead(ctx, src, branch)
	if err != nil || head == r.Commit {
		return nil
	}
	rev := t.Branch
	if rev == "" {
		rev = "main"
	}
	have, err := hubProvenance(ctx, &t, rev)
	if err != nil || have == nil {
		return nil
	}
	ids := []SourceID{have.Base, have.Adapter}
	for _, a := range have.Adapters {
		ids = append(ids, a.SourceID)
	}
	for _, id := range ids {
		if repo, _, err := hub.ParseRepo(id.Repo); err == nil && id.Commit == head && sameRepo(repo, src) {
			return &webhook.Ignored{Reason: fmt.Sprintf("the event names %s@%s, but %s of %s has moved on to %s since, and %s@%s already holds the merge of %s: the event is older than what is published",
				src, short(r.Commit), branch, src, short(head), t.Repo, rev, short(head))}
		}
	}
	return nil
}

func short(commit string) string { return commit[:min(len(commit), 12)] }
