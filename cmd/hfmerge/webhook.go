package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/hfmerge/hfmerge"
	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/upload"
	"github.com/hfmerge/hfmerge/webhook"
)

// maxPayload bounds a webhook payload read from a file or stdin; the Hub's are a few KB.
const maxPayload = 1 << 20

func webhookFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "from-webhook", Usage: "run for the Hub webhook event in " + webhook.EnvPayload +
			" (as a Job started by a webhook gets it): merge the commit it names, or exit 0 saying why there is nothing to do"},
		&cli.StringFlag{Name: "webhook-payload", Usage: "as --from-webhook, with the payload read from `FILE` (- for stdin)"},
	}
}

// webhookRun says whether the command was told to follow a webhook event.
func webhookRun(c *cli.Context) bool {
	return c.Bool("from-webhook") || c.String("webhook-payload") != ""
}

// readPayload reads the event: from --webhook-payload, else from WEBHOOK_PAYLOAD.
func readPayload(c *cli.Context) (*webhook.Payload, error) {
	var b []byte
	switch f := c.String("webhook-payload"); {
	case f == "-":
		var err error
		if b, err = io.ReadAll(io.LimitReader(c.App.Reader, maxPayload+1)); err != nil {
			return nil, fmt.Errorf("reading the webhook payload from stdin: %w", err)
		}
	case f != "":
		r, err := os.Open(f)
		if err != nil {
			return nil, usageErr("--webhook-payload: %v", err)
		}
		defer r.Close()
		if b, err = io.ReadAll(io.LimitReader(r, maxPayload+1)); err != nil {
			return nil, fmt.Errorf("reading the webhook payload %s: %w", f, err)
		}
	default:
		s, ok := os.LookupEnv(webhook.EnvPayload)
		if !ok || strings.TrimSpace(s) == "" {
			return nil, usageErr("--from-webhook reads the event from %s, which is not set (a Job started by a webhook has it); elsewhere give --webhook-payload FILE", webhook.EnvPayload)
		}
		b = []byte(s)
	}
	if len(b) > maxPayload {
		return nil, usageErr("the webhook payload is larger than %s; it is not one the Hub sent", hfmerge.Human(maxPayload))
	}
	p, err := webhook.Parse(b)
	if err != nil {
		return nil, &exitError{exitUsage, err}
	}
	if err := p.CheckEnv(os.Getenv(webhook.EnvRepoID), os.Getenv(webhook.EnvRepoType)); err != nil {
		return nil, &exitError{exitUsage, err}
	}
	return p, nil
}

// fromWebhook pins the sources to the event's commit. It returns nil when the event
// calls for no merge, having said why.
func (st *state) fromWebhook(c *cli.Context, o *options, target hub.Repo) (*hfmerge.Run, error) {
	if c.String("webhook-payload") == "" && os.Getenv(webhook.EnvPayload) == "" && os.Getenv(webhook.EnvJobID) != "" {
		// The Job a webhook starts copies is first run by hand, with no event: that run
		// has nothing to do, and says so rather than failing.
		st.nothingToDo(c, fmt.Sprintf("this Job was not started by a webhook (%s is not set)", webhook.EnvPayload))
		return nil, nil
	}
	p, err := readPayload(c)
	if err != nil {
		return nil, err
	}
	w, err := hfmerge.FromWebhook(p, o.base, o.adapters, target)
	if ig, ok := err.(*webhook.Ignored); ok {
		st.nothingToDo(c, ig.Reason, "webhook", p.Webhook.ID, "event", p.Event.Scope+" "+p.Event.Action, "repo", p.Repo.Name)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	o.base, o.adapters = w.Base, w.Adapters
	w.Run.Delivery = os.Getenv(webhook.EnvDelivery)
	st.logger().Info("merging the commit the webhook event names", "pinned", strings.Join(w.Pinned, ", "),
		"event", w.Run.Event, "webhook", w.Run.Webhook)
	return &w.Run, nil
}

// jobRun adds the Hub Job running this push, if any, to what started it.
func jobRun(r *hfmerge.Run) *hfmerge.Run {
	id := os.Getenv(webhook.EnvJobID)
	if id == "" {
		return r
	}
	if r == nil {
		r = &hfmerge.Run{}
	}
	r.Job = id
	return r
}

// nothingToDo ends a run that had nothing to do, saying why: on stdout (unless logs are
// JSON), and in the run's summary record.
func (st *state) nothingToDo(c *cli.Context, reason string, attrs ...any) {
	if !st.json {
		fmt.Fprintln(c.App.Writer, "nothing to do: "+reason)
	}
	st.done("nothing to do: "+reason, "ignored webhook event", append([]any{"reason", reason}, attrs...)...)
}

// superseded ends a webhook run whose event is older than what the target holds (see
// hfmerge.Superseded), having said why; it reports whether it did.
func (st *state) superseded(c *cli.Context, t upload.Target, run *hfmerge.Run) bool {
	if run == nil || run.Commit == "" {
		return false
	}
	var ig *webhook.Ignored
	if err := hfmerge.Superseded(c.Context, t, run); errors.As(err, &ig) {
		st.nothingToDo(c, ig.Reason, "webhook", run.Webhook, "event", run.Event, "repo", run.Repo, "commit", run.Commit)
		return true
	}
	return false
}
