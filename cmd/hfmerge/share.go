package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/hfmerge/hfmerge"
	"github.com/hfmerge/hfmerge/upload"
)

// One push, many machines: push --shards i/N and commit (the library's share.go).

func sharesFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "shards", Usage: "merge and upload only share `i/N` of the output shards (i from 1: 1/3, 2/3, 3/3), balanced by bytes, " +
			"and record them on the scratch branch hfmerge/<run id> of the repo; `hfmerge commit` then publishes them in one commit"},
		&cli.StringFlag{Name: "shard-index", Usage: "--shards with a 0-based index: `k/N` is share k+1 of N (for example $(JOB_COMPLETION_INDEX)/3 in a Kubernetes Indexed Job)"},
	}
}

// shareOption reads --shards or --shard-index; nil without them.
func shareOption(c *cli.Context) (*hfmerge.Share, error) {
	s, k := c.String("shards"), c.String("shard-index")
	switch {
	case s != "" && k != "":
		return nil, usageErr("--shards and --shard-index say the same thing; give one")
	case s != "":
		sh, err := hfmerge.ParseShare(s)
		if err != nil {
			return nil, usageErr("--shards: %v", err)
		}
		return &sh, nil
	case k != "":
		sh, err := hfmerge.ParseShareIndex(k)
		if err != nil {
			return nil, usageErr("--shard-index: %v", err)
		}
		return &sh, nil
	}
	return nil, nil
}

func commitFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "repo", Usage: "the Hub repo `OWNER/NAME` the shares were pushed to"},
		&cli.StringFlag{Name: "revision", Value: "main", Usage: "commit to `BRANCH` (as the shares' push --revision)"},
		&cli.StringFlag{Name: "message", Usage: "the commit's title"},
		&cli.StringFlag{Name: "card", Value: "keep", Usage: "the model card on the Hub: keep (unless it is the one hfmerge wrote) or replace"},
		&cli.StringFlag{Name: "run", Usage: "refuse unless the inputs are those of run `ID` (the id push --shards printed)"},
	}
}

// commitCmd publishes the shares push --shards recorded, in one commit.
func commitCmd(c *cli.Context, st *state) error {
	o, err := readOptions(c, st)
	if err != nil {
		return err
	}
	repo, err := targetRepo(c, o)
	if err != nil {
		return err
	}
	// The shares pushed with --from-webhook merged the event's commit: so does the
	// commit given the same event, and it records the event as push does.
	run, ok, err := st.trigger(c, o, repo)
	if err != nil || !ok {
		return err
	}
	card, err := cardPolicy(c)
	if err != nil {
		return err
	}
	ctx := c.Context
	t := upload.Target{Client: o.sources.Client, Repo: repo, Branch: c.String("revision")}
	if err := checkAccess(ctx, o, t); err != nil {
		return err
	}
	if st.superseded(c, t, run) {
		return nil
	}
	l, p, err := st.planned(ctx, o)
	if err != nil {
		return err
	}
	defer l.Close()
	id, err := hfmerge.RunID(l, t)
	if err != nil {
		return err
	}
	if want := c.String("run"); want != "" && want != id {
		return usageErr("--run %s: these inputs and target are run %s; give the inputs the shares were pushed with", want, id)
	}
	st.log.Info("committing the shares", "run", id, "branch", hfmerge.ScratchBranch(id))
	res, err := hfmerge.CommitShares(ctx, l, p, hfmerge.PushOptions{Target: t, Message: c.String("message"), Card: card, Merge: o.merge, Log: st.log, Run: run})
	if err != nil {
		var me *hfmerge.MissingSharesError
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("commit stopped (%v); nothing was committed", context.Cause(ctx))
		case errors.As(err, &me), errors.Is(err, hfmerge.ErrNoShares):
			return &exitError{exitPending, err}
		}
		return err
	}
	result, line := res.Outcome(t)
	if !st.json {
		fmt.Fprintln(c.App.Writer, line)
	}
	st.done(fmt.Sprintf("%s: %d shards, in %s", result, res.Shards, roundSeconds(res.Elapsed)),
		"committed", "result", result, "url", res.URL(), "up_to_date", res.UpToDate, "run", id, "shards", res.Shards, "seconds", seconds(res.Elapsed))
	return nil
}
