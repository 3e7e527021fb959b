package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/hfmerge/hfmerge"
	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/upload"
)

// The publishing commands (push, commit) read their target and check the token the
// same way; these are that one way.

// targetRepo reads --repo, which names a repo without a revision (the branch is
// --revision), for a command that needs the Hub.
func targetRepo(c *cli.Context, o *options) (hub.Repo, error) {
	repo, rev, err := repoFlag(c, "repo")
	if err != nil {
		return hub.Repo{}, err
	}
	if rev != "" {
		return hub.Repo{}, usageErr("--repo %s: give the branch with --revision", c.String("repo"))
	}
	if o.offline {
		return hub.Repo{}, usageErr("%s needs the Hub; it cannot run offline", c.Command.Name)
	}
	return repo, nil
}

// cardPolicy reads --card.
func cardPolicy(c *cli.Context) (hfmerge.CardPolicy, error) {
	card := hfmerge.CardPolicy(c.String("card"))
	if card != hfmerge.CardKeep && card != hfmerge.CardReplace {
		return "", usageErr("--card %q: want keep or replace", c.String("card"))
	}
	return card, nil
}

// checkAccess refuses a run without a token, or whose token may not publish to t,
// before anything moves.
func checkAccess(ctx context.Context, o *options, t upload.Target) error {
	if o.token == "" {
		return hfmerge.ErrNoToken
	}
	if err := hfmerge.CheckAccess(ctx, t); err != nil {
		if errors.Is(err, hub.ErrUnauthorized) {
			return fmt.Errorf("%w (the token from %s)", err, o.tokenFrom)
		}
		return err
	}
	return nil
}

// trigger reads what started the run: the webhook event of --from-webhook, whose commit
// the run merges, and the Job it runs in. ok is false when the event calls for nothing
// (fromWebhook has said why).
func (st *state) trigger(c *cli.Context, o *options, repo hub.Repo) (run *hfmerge.Run, ok bool, err error) {
	if webhookRun(c) {
		if run, err = st.fromWebhook(c, o, repo); err != nil || run == nil {
			return nil, false, err
		}
	}
	return jobRun(run), true, nil
}
