package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/hfmerge/hfmerge"
)

// verifyFlags are verify's own flags, after the common ones.
func verifyFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "merged", Usage: "the published merge to check: Hub repo `OWNER/NAME[@REVISION]`"},
		&cli.StringFlag{Name: "tolerance", Value: "0", Usage: "accept elements this many ulp from the exact merge (another tool's rounding), e.g. 1 or 1ulp; 0 asks for identical tensors"},
		&cli.BoolFlag{Name: "json", Usage: "print the verdict as JSON"},
	}
}

// parseTolerance reads "1", "1ulp" or "1 ulp".
func parseTolerance(s string) (uint64, error) {
	t := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(strings.ToLower(s)), "ulp"))
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: want a whole number of ulp, such as 1 or 1ulp", s)
	}
	return n, nil
}

func verifyCmd(c *cli.Context, st *state) error {
	o, err := readOptions(c, st)
	if err != nil {
		return err
	}
	repo, rev, err := repoFlag(c, "merged")
	if err != nil {
		return err
	}
	tol, err := parseTolerance(c.String("tolerance"))
	if err != nil {
		return usageErr("--tolerance %v", err)
	}
	if o.offline {
		return usageErr("verify reads the published repo on the Hub; it cannot run offline")
	}
	l, p, err := st.planned(c.Context, o)
	if err != nil {
		return err
	}
	defer l.Close()
	m := st.meter(o.progress)
	res, err := hfmerge.Verify(c.Context, l, p, hfmerge.VerifyOptions{Client: o.sources.Client, Repo: repo, Revision: rev,
		Tolerance: tol, Merge: o.merge, Log: st.log, Progress: m.event})
	m.finish()
	if err != nil {
		return err
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else {
		printVerify(c.App.Writer, res)
	}
	if !res.Verified {
		return &exitError{exitProblems, errReported}
	}
	st.done(fmt.Sprintf("verified %s at %s: %d shards, %s of them downloaded", res.Repo, short(res.Commit), len(res.Shards), hfmerge.Human(res.ShardBytes)),
		"verified", "repo", res.Repo, "commit", res.Commit, "exact", res.Exact, "shards", len(res.Shards), "shard_bytes_downloaded", res.ShardBytes,
		"tolerance_ulp", res.Tolerance, "seconds", seconds(res.Elapsed))
	return nil
}

func short(commit string) string { return commit[:min(12, len(commit))] }

// printVerify writes the verdict for people: one line per shard and file, the tensors
// that differ under their shard.
func printVerify(w io.Writer, r *hfmerge.VerifyResult) {
	fmt.Fprintf(w, "%s@%s (commit %s)\n", r.Repo, r.Revision, short(r.Commit))
	for _, s := range r.Shards {
		switch {
		case s.Identical:
			fmt.Fprintf(w, "  %-44s identical (sha256 %s)\n", s.Name, s.Expected[:16])
			continue
		case s.OK && r.Tolerance == 0:
			fmt.Fprintf(w, "  %-44s the same tensors, other bytes (sha256 %s, expected %s)\n", s.Name, short16(s.OnHub), short16(s.Expected))
		case s.OK:
			fmt.Fprintf(w, "  %-44s within %d ulp (sha256 %s, expected %s)\n", s.Name, r.Tolerance, short16(s.OnHub), short16(s.Expected))
		default:
			fmt.Fprintf(w, "  %-44s DIFFERS (sha256 %s, expected %s)\n", s.Name, short16(s.OnHub), short16(s.Expected))
		}
		for _, p := range s.Problems {
			fmt.Fprintf(w, "      %s\n", p)
		}
		for _, n := range s.Notes {
			fmt.Fprintf(w, "      note: %s\n", n)
		}
		for _, t := range s.Tensors {
			if t.Problem != "" {
				fmt.Fprintf(w, "      %s: %s\n", t.Name, t.Problem)
				continue
			}
			fmt.Fprintf(w, "      %s: %d of %d elements differ (%d compared), max %s; %s\n", t.Name, t.Differing, t.Elements, t.Compared,
				ulpString(t.MaxULP), histogram(t.Histogram))
			if t.BitsOnly > 0 {
				fmt.Fprintf(w, "      %s: %d elements of the same value in other bits (+0/-0, NaN payloads)\n", t.Name, t.BitsOnly)
			}
		}
		how := "every tensor read by range (LFS gives no finer digest)"
		if s.Method == "xet" {
			how = fmt.Sprintf("through Xet chunk hashes, %s not known identical", hfmerge.Human(s.Unknown))
		}
		fmt.Fprintf(w, "      examined %s; %s downloaded\n", how, hfmerge.Human(s.Downloaded))
		if len(s.Histogram) > 0 {
			fmt.Fprintf(w, "      all %d elements compared: %s\n", s.Compared, histogram(s.Histogram))
		}
	}
	for _, f := range r.Files {
		state := "ok"
		if !f.OK {
			state = "DIFFERS"
		}
		fmt.Fprintf(w, "  %-44s %s: %s\n", f.Name, state, f.Note)
	}
	switch {
	case r.Verified && r.Exact:
		fmt.Fprintf(w, "verified: %s is this merge; %s of its shards downloaded\n", r.Repo, hfmerge.Human(r.ShardBytes))
	case r.Verified && r.Tolerance == 0:
		fmt.Fprintf(w, "verified: %s has this merge's tensors bit for bit (%d of %d shards in other bytes: their headers differ); %s of its shards downloaded\n",
			r.Repo, inexact(r), len(r.Shards), hfmerge.Human(r.ShardBytes))
	case r.Verified:
		fmt.Fprintf(w, "verified within %d ulp: %s is this merge but for rounding (%d of %d shards not bit-identical); %s of its shards downloaded\n",
			r.Tolerance, r.Repo, inexact(r), len(r.Shards), hfmerge.Human(r.ShardBytes))
	default:
		fmt.Fprintf(w, "NOT verified: %s is not this merge (tolerance %d ulp); %s of its shards downloaded\n", r.Repo, r.Tolerance, hfmerge.Human(r.ShardBytes))
	}
}

// inexact counts the shards whose sha256 is not the expected one.
func inexact(r *hfmerge.VerifyResult) int {
	n := 0
	for _, s := range r.Shards {
		if !s.Identical {
			n++
		}
	}
	return n
}

func short16(s string) string { return s[:min(16, len(s))] }

func ulpString(u uint64) string {
	if u == ^uint64(0) {
		return "NaN/unordered"
	}
	return fmt.Sprintf("%d ulp", u)
}

func histogram(bs []hfmerge.ULPBucket) string {
	var parts []string
	for _, b := range bs {
		parts = append(parts, fmt.Sprintf("%s ×%d", b, b.Count))
	}
	return strings.Join(parts, ", ")
}
