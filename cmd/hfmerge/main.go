// Command hfmerge merges a LoRA adapter into a base model's safetensors shards, one row
// block at a time, and writes the merged model to a directory or publishes it to the
// Hugging Face Hub in one commit. It is a thin shell over the hfmerge library: flags,
// progress, logging, exit codes and signals.
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
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hfmerge/hfmerge"
)

// Exit statuses.
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsage    = 2
	exitProblems = 3
	// exitPending: commit found shares of the run not yet on the Hub; run it again
	// later. Apart from 3, so that a retry policy retries this and nothing else.
	exitPending = 4
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

// memoryLimit is the soft limit the Go runtime's collector works to stay under, unless
// GOMEMLIMIT says otherwise. hfmerge's working set is a few row blocks and buffers
// (well under it); without a limit the collector lets the heap grow to twice the live
// data before it runs, which would double the resident size users see.
const memoryLimit = 192 << 20

func main() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
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

func (e *signalError) Error() string { return "interrupted by a signal (" + signalName(e.sig) + ")" }

func signalName(s os.Signal) string {
	switch s {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.String()
}

// signalStatus is the conventional exit status for a signal: 128 + its number.
func signalStatus(s os.Signal) int {
	if n, ok := s.(syscall.Signal); ok {
		return 128 + int(n)
	}
	return 130
}

// run runs the command line and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	st := &state{stdout: stdout, stderr: stderr, start: time.Now()}
	if jsonLogs(args) {
		// A flag the parser refuses ends the run before the options are read: the
		// caller who asked for JSON still gets its one record.
		st.setLog("json")
	}
	app := newApp(st)
	err := app.RunContext(ctx, args)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if !errors.As(err, &ee) {
		// Errors the flag parser returns are usage errors; actions wrap all of theirs.
		if st.json {
			st.fail(err, exitUsage)
		} else {
			fmt.Fprintf(stderr, "hfmerge: %s\nRun 'hfmerge help' for usage.\n", st.redact(err.Error()))
		}
		return exitUsage
	}
	switch {
	case ee.err != errReported:
		st.fail(ee.err, ee.code)
	case st.json:
		st.fail(errors.New("see the records above"), ee.code)
	}
	return ee.code
}

// jsonLogs says whether the command line asks for --log-format json, read before the
// flag parser, which may stop at another flag first.
func jsonLogs(args []string) bool {
	for i, a := range args {
		if a == "--" {
			break
		}
		switch a {
		case "--log-format=json", "-log-format=json":
			return true
		case "--log-format", "-log-format":
			if i+1 < len(args) && args[i+1] == "json" {
				return true
			}
		}
	}
	return false
}

// errReported marks an error whose details were already printed.
var errReported = errors.New("reported")

func newApp(st *state) *cli.App {
	return &cli.App{
		Name:      "hfmerge",
		Usage:     "merge a LoRA adapter into a model, shard by shard, and publish it",
		Version:   hfmerge.Version(),
		Writer:    st.stdout,
		ErrWriter: st.stderr,
		Suggest:   true,
		// --adapter may name several adapters; a path may hold a comma.
		DisableSliceFlagSeparator: true,
		EnableBashCompletion:      true,
		ExitErrHandler:            func(*cli.Context, error) {}, // run decides the exit status
		OnUsageError:              onUsageError,
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageErr("unknown command %q%s", c.Args().First(), suggestCommand(c, c.Args().First()))
			}
			return cli.ShowAppHelp(c)
		},
		Commands: []*cli.Command{
			command(st, "merge", "merge an adapter into a base model and write the merged model to a directory",
				append(commonFlags(), mergeFlags()...), mergeCmd),
			command(st, "plan", "check an adapter against a base model and show what a merge would do, reading headers only",
				append(commonFlags(), &cli.BoolFlag{Name: "json", Usage: "print the plan as JSON"},
					&cli.StringFlag{Name: "repo", Usage: "report what a push to the Hub repo `OWNER/NAME` would upload, through Xet or LFS"}), planCmd),
			command(st, "push", "merge an adapter into a base model and publish the merged model to the Hub in one commit",
				append(append(append(commonFlags(), pushFlags()...), sharesFlags()...), webhookFlags()...), pushCmd),
			command(st, "commit", "publish in one commit the shares that push --shards uploaded from several machines",
				append(append(commonFlags(), commitFlags()...), webhookFlags()...), commitCmd),
			command(st, "verify", "check that a merge published on the Hub is exactly base + adapter, downloading only what differs",
				append(commonFlags(), verifyFlags()...), verifyCmd),
			completionCommand(),
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					fmt.Fprintln(c.App.Writer, "hfmerge", hfmerge.Version(), runtime.Version(), runtime.GOOS+"/"+runtime.GOARCH)
					return nil
				},
			},
		},
	}
}

// onUsageError prints one line and a hint, on stderr, instead of the whole help on
// stdout, which would end up in `plan --json | jq`.
func onUsageError(c *cli.Context, err error, _ bool) error {
	return &exitError{exitUsage, fmt.Errorf("%v%s\nRun 'hfmerge %s --help' for usage.", err, suggestFlag(c, err), c.Command.Name)}
}

// command builds a subcommand whose action runs with the shared state.
func command(st *state, name, usage string, flags []cli.Flag, f func(*cli.Context, *state) error) *cli.Command {
	return &cli.Command{Name: name, Usage: usage, ArgsUsage: " ", Flags: flags, OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageErr("%s takes no arguments, got %q", name, c.Args().First())
			}
			err := f(c, st)
			var ee *exitError
			var ue *hfmerge.UsageError
			var pe *hfmerge.ProblemsError
			switch {
			case err == nil, errors.As(err, &ee):
				return err
			case errors.As(err, &ue):
				return &exitError{exitUsage, err}
			case errors.As(err, &pe):
				return &exitError{exitProblems, err}
			}
			return &exitError{exitFailure, err}
		}}
}
