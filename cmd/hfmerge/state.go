package main

import (
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/hfmerge/hfmerge/mergeplan"
)

// state is what a command shares with the shell around it: where output goes, the log,
// and the token to keep out of both.
type state struct {
	stdout, stderr io.Writer
	log            *slog.Logger
	json           bool
	token          string
	start          time.Time // when the run began, for its summary
}

func (st *state) setLog(format string) {
	st.json = format == "json"
	w := &redactor{st: st, w: st.stderr}
	opts := &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Value.Kind() == slog.KindDuration {
			return slog.Float64(a.Key, seconds(a.Value.Duration()))
		}
		return a
	}}
	if st.json {
		st.log = slog.New(slog.NewJSONHandler(w, opts))
	} else {
		st.log = slog.New(slog.NewTextHandler(w, opts))
	}
}

func (st *state) logger() *slog.Logger {
	if st.log == nil {
		st.setLog("text")
	}
	return st.log
}

// hfToken matches anything shaped like a Hugging Face token.
var hfToken = regexp.MustCompile(`hf_[A-Za-z0-9]{8,}`)

// redact removes the token, and anything shaped like one, from a line: a server may
// echo it back in an error message.
func (st *state) redact(s string) string {
	if st.token != "" {
		s = strings.ReplaceAll(s, st.token, "[token]")
	}
	return hfToken.ReplaceAllString(s, "hf_[redacted]")
}

// redactor is a writer that redacts every line written through it.
type redactor struct {
	st *state
	w  io.Writer
}

func (r *redactor) Write(p []byte) (int, error) {
	if _, err := io.WriteString(r.w, r.st.redact(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// fail reports the error that ends the run: with --log-format json the run's summary
// record (every line is JSON, and the last one says how the run ended), else one line.
func (st *state) fail(err error, code int) {
	msg := st.redact(err.Error())
	if st.json {
		st.logger().Error("failed", "error", msg, "exit_status", code, "seconds", seconds(time.Since(st.start)))
		return
	}
	fmt.Fprintf(st.stderr, "hfmerge: %s\n", msg)
}

// done logs the run's summary: one JSON record that ends the run's output and carries
// its exit status; a log line of text; or, with text logs on a terminal, the short
// sentence human says, for a person.
func (st *state) done(human, msg string, attrs ...any) {
	switch {
	case st.json:
		st.logger().Info(msg, append(attrs, "exit_status", exitOK)...)
	case st.terminal():
		fmt.Fprintln(st.stderr, st.redact(human))
	default:
		st.logger().Info(msg, attrs...)
	}
}

// terminal says whether stderr is a terminal a person reads.
func (st *state) terminal() bool { return isTerminal(st.stderr) }

// checked prints a plan's problems and returns an error that exits with status 3;
// warnings are logged.
func (st *state) checked(p *mergeplan.Plan) error {
	if !p.OK() {
		if st.json {
			for _, x := range p.Problems {
				st.logger().Error("problem", "subject", x.Subject, "message", x.Message)
			}
		} else {
			fmt.Fprintf(st.stderr, "hfmerge: cannot merge: %d problem(s):\n", len(p.Problems))
			for _, x := range p.Problems {
				fmt.Fprintf(st.stderr, "  - %s\n", st.redact(x.String()))
			}
		}
		return &exitError{exitProblems, errReported}
	}
	for _, w := range p.Warnings {
		st.logger().Warn(w.Message, "subject", w.Subject)
	}
	return nil
}
