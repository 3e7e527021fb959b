package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hfmerge/hfmerge"
	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/upload"
)

// load opens --base and every --adapter and reads their headers.
func load(ctx context.Context, o *options) (*hfmerge.Inputs, error) {
	base, err := o.sources.Base(ctx, o.base)
	if err != nil {
		return nil, err
	}
	stack, err := o.sources.Stack(ctx, o.adapters)
	if err != nil {
		base.Close()
		return nil, err
	}
	return hfmerge.LoadStack(ctx, base, stack, o.plan)
}

// planned loads the inputs and plans the merge; a plan with problems is reported and
// ends the run with status 3.
func (st *state) planned(ctx context.Context, o *options) (*hfmerge.Inputs, *mergeplan.Plan, error) {
	l, err := load(ctx, o)
	if err != nil {
		return nil, nil, err
	}
	p := l.Plan()
	if err := st.checked(p); err != nil {
		l.Close()
		return nil, nil, err
	}
	return l, p, nil
}

func planCmd(c *cli.Context, st *state) error {
	o, err := readOptions(c, st)
	if err != nil {
		return err
	}
	l, err := load(c.Context, o)
	if err != nil {
		return err
	}
	defer l.Close()
	p := l.Plan()
	r := l.Report(p, o.merge.Jobs)
	if s := c.String("repo"); s != "" {
		repo, _, err := hub.ParseRepo(s)
		if err != nil {
			return usageErr("--repo: %v", err)
		}
		r.Target = hfmerge.PlanPush(c.Context, o.sources.Client, repo, p)
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	} else {
		r.Print(c.App.Writer)
	}
	if !p.OK() {
		return &exitError{exitProblems, errReported}
	}
	return nil
}

func mergeCmd(c *cli.Context, st *state) error {
	o, err := readOptions(c, st)
	if err != nil {
		return err
	}
	out := c.String("out")
	if out == "" {
		return usageErr("--out is required")
	}
	l, p, err := st.planned(c.Context, o)
	if err != nil {
		return err
	}
	defer l.Close()
	m := st.meter(o.progress)
	start := time.Now()
	err = hfmerge.MergeDir(c.Context, l, p, out, hfmerge.MergeOptions{Merge: o.merge, Force: c.Bool("force"), Log: st.log, Progress: m.event})
	m.finish()
	if err != nil {
		if c.Context.Err() != nil {
			return fmt.Errorf("merge stopped (%v); no merged file was written to %s", context.Cause(c.Context), out)
		}
		return err
	}
	var total int64
	for _, s := range p.Shards {
		total += s.Size()
	}
	st.done(fmt.Sprintf("merged %d shards (%s) into %s in %s", len(p.Shards), hfmerge.Human(total), out, roundSeconds(time.Since(start))),
		"merged", "out", out, "shards", len(p.Shards), "size", hfmerge.Human(total), "seconds", seconds(time.Since(start)))
	return nil
}

func pushCmd(c *cli.Context, st *state) error {
	o, err := readOptions(c, st)
	if err != nil {
		return err
	}
	repo, err := targetRepo(c, o)
	if err != nil {
		return err
	}
	// Before anything else: an event that calls for no merge ends the run here.
	run, ok, err := st.trigger(c, o, repo)
	if err != nil || !ok {
		return err
	}
	budget := int64(-1)
	if s := c.String("disk-budget"); s != "" {
		if budget, err = hfmerge.ParseSize(s); err != nil {
			return usageErr("--disk-budget %q: %v", s, err)
		}
	}
	card, err := cardPolicy(c)
	if err != nil {
		return err
	}
	share, err := shareOption(c)
	if err != nil {
		return err
	}
	ctx := c.Context
	xm, err := upload.ParseXetMode(c.String("xet"))
	if err != nil {
		return usageErr("--xet: %v", err)
	}
	t := upload.Target{Client: o.sources.Client, Repo: repo, Branch: c.String("revision"), PR: c.Bool("pr"), Xet: xm}
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
	m := st.meter(o.progress)
	res, err := hfmerge.Push(ctx, l, p, hfmerge.PushOptions{Target: t, Private: c.Bool("private"), Message: c.String("message"), Card: card,
		DiskBudget: budget, WorkDir: c.String("work-dir"), Merge: o.merge, Log: st.log, Progress: m.event, Share: share, Run: run})
	m.finish()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("push stopped (%v); what was uploaded stays for the next run", context.Cause(ctx))
		}
		return err
	}
	url := res.URL()
	result, line := res.Outcome(t)
	var job, evCommit string // what started the run, for the summary record
	if run != nil {
		job, evCommit = run.Job, run.Commit
	}
	if !st.json {
		// With JSON logs the summary record below says it; stdout stays free of text.
		fmt.Fprintln(c.App.Writer, line)
	}
	human := fmt.Sprintf("%s: %d shards, %s up, %s down, in %s", result, res.Shards, hfmerge.Human(res.BytesUp), hfmerge.Human(res.BytesDown), roundSeconds(res.Elapsed))
	st.done(human, "pushed", "result", result, "url", url, "up_to_date", res.UpToDate, "shards", res.Shards, "uploaded", res.Uploaded,
		"already_on_hub", res.OnHub, "unchanged", res.Unchanged, "bytes_down", res.BytesDown, "bytes_up", res.BytesUp,
		"down", hfmerge.Human(res.BytesDown), "up", hfmerge.Human(res.BytesUp), "seconds", seconds(res.Elapsed), "upload_busy_seconds", seconds(res.UploadBusy),
		"disk_budget", hfmerge.Human(res.Budget), "xet", res.Xet, "xet_expected", res.XetExpected, "xet_sent", res.XetSent,
		"run", res.RunID, "share", res.Share, "scratch_branch", res.Scratch, "job", job, "event_commit", evCommit)
	if res.Xet && !res.UpToDate {
		fmt.Fprintf(c.App.Writer, "through Xet: %s sent in xorbs (expected about %s) for %s of shards\n",
			hfmerge.Human(res.XetSent), hfmerge.Human(res.XetExpected), hfmerge.Human(res.ShardBytes))
	}
	return nil
}

// roundSeconds prints a duration for people: 850ms, 12.3s, 4m5s.
func roundSeconds(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// seconds is a duration as seconds with three decimals at most, for log lines.
func seconds(d time.Duration) float64 {
	return float64(d.Round(time.Millisecond)) / float64(time.Second)
}
