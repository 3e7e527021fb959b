// Command hfmerge merges a LoRA adapter into a base model's safetensors shards, one row
// block at a time, and writes a complete model directory.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/mergeplan"
)

// Exit statuses.
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsage    = 2
	exitProblems = 3
)

// exitError carries the exit status an error should end the process with.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(format string, args ...any) error {
	return &exitError{exitUsage, fmt.Errorf(format, args...)}
}

func main() {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		// The first signal stops work in progress, which then cleans up; a second one
		// exits at once.
		s := <-sigs
		cancel(&signalError{s})
		s = <-sigs
		os.Exit(signalStatus(s))
	}()
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	var se *signalError
	if errors.As(context.Cause(ctx), &se) && code != exitOK {
		code = signalStatus(se.sig)
	}
	os.Exit(code)
}

// signalError is the cause of a context canceled by a signal.
type signalError struct{ sig os.Signal }

func (e *signalError) Error() string { return "interrupted by " + e.sig.String() }

// signalStatus is the conventional exit status for a signal: 128 + its number.
func signalStatus(s os.Signal) int {
	if n, ok := s.(syscall.Signal); ok {
		return 128 + int(n)
	}
	return 130
}

// run runs the command line and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	err := app.RunContext(ctx, args)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if !errors.As(err, &ee) {
		// Errors the flag parser returns are usage errors; actions wrap all of theirs.
		fmt.Fprintf(stderr, "hfmerge: %v\nRun 'hfmerge help' for usage.\n", err)
		return exitUsage
	}
	if ee.err != errReported {
		fmt.Fprintf(stderr, "hfmerge: %v\n", ee.err)
	}
	return ee.code
}

// errReported marks an error whose details were already printed.
var errReported = errors.New("reported")

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:           "hfmerge",
		Usage:          "merge a LoRA adapter into a model, shard by shard",
		Writer:         stdout,
		ErrWriter:      stderr,
		HideVersion:    true,
		ExitErrHandler: func(*cli.Context, error) {}, // run decides the exit status
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageErr("unknown command %q", c.Args().First())
			}
			return cli.ShowAppHelp(c)
		},
		Commands: []*cli.Command{
			{
				Name:      "merge",
				Usage:     "merge an adapter into a base model and write the merged model to a directory",
				ArgsUsage: " ",
				Flags:     append(commonFlags(), &cli.StringFlag{Name: "out", Usage: "write the merged model into `DIR`"}),
				Action:    action(mergeCmd),
			},
			{
				Name:      "plan",
				Usage:     "check an adapter against a base model and show what a merge would do, reading headers only",
				ArgsUsage: " ",
				Flags:     append(commonFlags(), &cli.BoolFlag{Name: "json", Usage: "print the plan as JSON"}),
				Action:    action(planCmd),
			},
			{
				Name:      "push",
				Usage:     "merge an adapter into a base model and publish the merged model to the Hub in one commit",
				ArgsUsage: " ",
				Flags:     append(commonFlags(), pushFlags()...),
				Action:    action(pushCmd),
			},
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					fmt.Fprintln(c.App.Writer, "hfmerge", version(), runtime.Version(), runtime.GOOS+"/"+runtime.GOARCH)
					return nil
				},
			},
		},
	}
}

func commonFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "base", Usage: "the base model: a local `DIR`, or a Hub repo owner/name[@revision]"},
		&cli.StringFlag{Name: "adapter", Usage: "the LoRA adapter: a local `DIR` or a Hub repo, holding adapter_config.json and adapter_model.safetensors"},
		&cli.StringFlag{Name: "token", Usage: "Hugging Face access `TOKEN` (default: HF_TOKEN, HUGGING_FACE_HUB_TOKEN, then the token file)"},
		&cli.BoolFlag{Name: "offline", Usage: "use only the HF cache; never contact the Hub (also HF_HUB_OFFLINE=1)"},
		&cli.StringFlag{Name: "cache-dir", Usage: "the HF hub cache `DIR` (default: HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub)"},
		&cli.StringFlag{Name: "local-dir", Usage: "read and keep the Hub base in `DIR` laid out as hf download --local-dir does, instead of the HF cache"},
		&cli.BoolFlag{Name: "keep-base", Usage: "keep the base's files this run downloads (default: stream them and keep nothing)"},
		&cli.StringFlag{Name: "dtype", Value: "keep", Usage: "output dtype of float tensors: keep, bf16, fp16 or fp32"},
		&cli.StringFlag{Name: "tied-embeddings", Value: "untie", Usage: "when the adapter changes one side of tied embeddings: untie (the merged model computes what base + adapter did) or fold (add into the shared tensor, as PEFT does)"},
		&cli.IntFlag{Name: "jobs", Value: runtime.NumCPU(), Usage: "cores to merge with"},
		&cli.StringFlag{Name: "progress", Value: "auto", Usage: "auto, bar, plain or none"},
		&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json"},
	}
}

// options are the command-line choices every command shares, checked.
type options struct {
	base, adapter string
	plan          mergeplan.Options
	jobs          int
	progress      string
	logFormat     string
	hub           hubOptions
}

func readOptions(c *cli.Context) (*options, error) {
	o := &options{
		base:      c.String("base"),
		adapter:   c.String("adapter"),
		plan:      mergeplan.Options{DType: mergeplan.DTypeChoice(c.String("dtype")), Tied: mergeplan.Tied(c.String("tied-embeddings"))},
		jobs:      c.Int("jobs"),
		progress:  c.String("progress"),
		logFormat: c.String("log-format"),
		hub: hubOptions{
			token:    c.String("token"),
			offline:  c.Bool("offline") || hub.OfflineFromEnv(),
			cacheDir: c.String("cache-dir"),
			localDir: c.String("local-dir"),
			keepBase: c.Bool("keep-base"),
		},
	}
	if o.hub.localDir != "" && o.hub.cacheDir != "" {
		return nil, usageErr("--local-dir and --cache-dir cannot be used together")
	}
	if c.Args().Present() {
		return nil, usageErr("%s takes no arguments, got %q", c.Command.Name, c.Args().First())
	}
	switch {
	case o.base == "":
		return nil, usageErr("--base is required")
	case o.adapter == "":
		return nil, usageErr("--adapter is required")
	case o.jobs < 1:
		return nil, usageErr("--jobs must be at least 1")
	}
	switch o.plan.DType {
	case mergeplan.KeepDType, mergeplan.ToBF16, mergeplan.ToF16, mergeplan.ToF32:
	default:
		return nil, usageErr("--dtype %q: want keep, bf16, fp16 or fp32", o.plan.DType)
	}
	switch o.plan.Tied {
	case mergeplan.Untie, mergeplan.Fold:
	default:
		return nil, usageErr("--tied-embeddings %q: want untie or fold", o.plan.Tied)
	}
	switch o.progress {
	case "auto", "bar", "plain", "none":
	default:
		return nil, usageErr("--progress %q: want auto, bar, plain or none", o.progress)
	}
	switch o.logFormat {
	case "text", "json":
	default:
		return nil, usageErr("--log-format %q: want text or json", o.logFormat)
	}
	return o, nil
}

// action wraps a command so that every error it returns carries an exit status.
func action(f func(*cli.Context) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		err := f(c)
		var ee *exitError
		if err != nil && !errors.As(err, &ee) {
			return &exitError{exitFailure, err}
		}
		return err
	}
}

// version is the module version hfmerge was built as, or the VCS revision of a build
// from a checkout.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	rev, dirty := "", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return "devel-" + rev
}
