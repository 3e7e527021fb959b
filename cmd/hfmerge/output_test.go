package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

// jsonLines decodes every line of out as one JSON object and returns them.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("not a JSON line: %q (%v)", line, err)
			continue
		}
		recs = append(recs, m)
	}
	if len(recs) == 0 {
		t.Fatalf("no JSON records in %q", out)
	}
	return recs
}

// TestPushJSONLog: with --log-format json every line of a successful push, of a rerun
// that finds it up to date and of a failing push is JSON, stdout has no text, and the
// last record is the run's summary with its exit status.
func TestPushJSONLog(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2)
	code, stdout, stderr := e.push(t, aliceWrite, "--log-format", "json")
	if code != 0 || stdout != "" {
		t.Fatalf("exit %d, stdout %q\n%s", code, stdout, stderr)
	}
	recs := jsonLines(t, stderr)
	last := recs[len(recs)-1]
	if last["exit_status"] != 0.0 || last["result"] != "committed" || !strings.Contains(last["url"].(string), "/commit/") ||
		last["shards"] != 2.0 || last["bytes_up"] == nil || last["bytes_down"] == nil || last["seconds"] == nil {
		t.Errorf("summary: %v", last)
	}
	run, _ := last["run"].(string)
	if len(run) != 16 || last["share"] != "" || last["scratch_branch"] != "" {
		t.Errorf("summary of a whole push: run %q, share %q, scratch_branch %q; want a 16-digit run id and no share", last["run"], last["share"], last["scratch_branch"])
	}
	_, stdout, stderr = e.push(t, aliceWrite, "--log-format", "json")
	recs = jsonLines(t, stderr)
	if last := recs[len(recs)-1]; stdout != "" || last["result"] != "up to date" || last["exit_status"] != 0.0 || last["run"] != run {
		t.Errorf("up to date: stdout %q, summary %v", stdout, last)
	}
	// A share says which it is and where it is recorded; commit names the same run.
	code, _, stderr = e.pushTo(t, "alice/sharded", "--log-format", "json", "--shards", "2/2")
	recs = jsonLines(t, stderr)
	sum := recs[len(recs)-1]
	srun, _ := sum["run"].(string)
	if code != 0 || sum["result"] != "uploaded share" || sum["share"] != "2/2" || len(srun) != 16 || sum["scratch_branch"] != "hfmerge/"+srun {
		t.Errorf("summary of push --shards 2/2: exit %d, %v", code, sum)
	}
	e.h.Fault(hubtest.Fault{Route: hubtest.RouteCommit, Status: 400, Times: -1})
	code, stdout, stderr = e.push(t, aliceWrite, "--log-format", "json", "--dtype", "fp32")
	recs = jsonLines(t, stdout+stderr)
	if last := recs[len(recs)-1]; code != 1 || last["exit_status"] != 1.0 || last["level"] != "ERROR" || last["error"] == nil {
		t.Errorf("failure: exit %d, summary %v", code, last)
	}
}

// TestTokenEchoed: a Hub error that echoes the token (and another hf_ token) never
// reaches the output, in text or JSON logs.
func TestTokenEchoed(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2)
	e.h.Fault(hubtest.Fault{Route: hubtest.RouteCommit, Status: 400, Times: -1,
		Message: "bad request from Bearer " + aliceWrite + " (also seen: hf_abcdefghijklmnopqrstu)"})
	for _, format := range []string{"text", "json"} {
		code, stdout, stderr := e.push(t, aliceWrite, "--log-format", format)
		out := stdout + stderr
		if code != 1 || !strings.Contains(out, "bad request from Bearer") {
			t.Errorf("%s: exit %d, the Hub's message is not shown:\n%s", format, code, out)
		}
		for _, secret := range []string{aliceWrite, "hf_abcdefghijklmnopqrstu"} {
			if strings.Contains(out, secret) {
				t.Errorf("%s: %s reached the output:\n%s", format, secret, out)
			}
		}
		if format == "json" {
			jsonLines(t, out)
		}
	}
}

// TestPushCommitRefused: a 412 on the commit (the branch moved) says that rerunning
// hfmerge resumes, and that the repo this push created is empty; the rerun commits.
func TestPushCommitRefused(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2)
	f := e.h.Fault(hubtest.Fault{Route: hubtest.RouteCommit, Status: 412, Message: "A commit has happened since. Please refresh and try again."})
	code, _, stderr := e.push(t, aliceWrite)
	if code != 1 || f.Fired() != 1 || !strings.Contains(stderr, "running the same push again resumes it") ||
		!strings.Contains(stderr, "alice/merged, which this push created, is empty") {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	if code, _, stderr := e.push(t, aliceWrite); code != 0 {
		t.Fatalf("rerun: exit %d\n%s", code, stderr)
	}
	e.checkPublished(t, "main")
}
