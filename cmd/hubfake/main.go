// Command hubfake runs the fake Hugging Face Hub of package hub/hubtest on local
// ports, so a pipeline can be tested offline:
//
//	hubfake --addr 127.0.0.1:8080 --state ~/.hubfake --seed ./repos --token hf_dev=alice:write
//	HF_ENDPOINT=http://127.0.0.1:8080 HF_TOKEN=hf_dev hfmerge push ...
//
// The API listens on --addr and the CDN/storage host on --cdn-addr (default: the same
// host name, next port; prefer another loopback address such as 127.0.0.2 so that
// clients treat it as another host). --state keeps repos, commits and objects across
// runs. --seed commits DIR/<owner>/<name>/** (and DIR/datasets/..., DIR/spaces/...)
// at start, *.safetensors and other .gitattributes patterns and files over
// --lfs-threshold as LFS; files already identical on the branch are skipped.
//
// --down-rate and --up-rate model the user's link: one download rate shared by every
// CDN and resolve body, one upload rate shared by every upload PUT and commit body
// (e.g. --down-rate 50MB --up-rate 25MB; MB is 10^6 bytes, MiB 2^20), and --latency
// delays every request. On shutdown it prints "stats {json}" with bytes_down,
// bytes_up, requests, commits and faults_fired.
//
// Tokens: --token VALUE=[USER:]SCOPE with SCOPE read, write, app (an OAuth/app token:
// whoami has no accessToken) or fineGrained:ENTITY=PERM+PERM,... where ENTITY is
// user/NAME, org/NAME or model/OWNER/NAME, e.g.
// --token hf_fg=alice:fineGrained:user/alice=repo.content.read+repo.write.
// --xet gives the Hub Xet storage: the LFS batch answers "xet" to clients that offer
// it, and the Xet CAS host listens on --cas-addr (default: the same host, the port
// after the CDN's). --state keeps xorbs and shards too; CAS tokens do not survive a
// restart (clients get new ones from the Hub).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// listFlag collects a repeated flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// run is main without the process: it returns the exit status (0 after a clean
// shutdown, 1 on failure, 2 on a usage error).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("hubfake", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8080", "`host:port` of the Hub API (port 0 picks one)")
	cdnAddr := fs.String("cdn-addr", "", "`host:port` of the CDN/storage host (default: same host, next port)")
	xet := fs.Bool("xet", false, "give the Hub Xet storage, with its CAS host on --cas-addr")
	casAddr := fs.String("cas-addr", "", "`host:port` of the Xet CAS host (default: same host, port after the CDN's)")
	xetLifetime := fs.Duration("xet-token-lifetime", time.Hour, "lifetime of Xet CAS tokens")
	state := fs.String("state", "", "`dir` to load state from and save it to after every change")
	seed := fs.String("seed", "", "`dir` of repos to commit at start: DIR/<owner>/<name>/...")
	user := fs.String("user", "user", "account of tokens given without one")
	lfsThreshold := fs.Int64("lfs-threshold", 10<<20, "size in `bytes` from which files are LFS")
	chunk := fs.Int64("chunk-size", 64<<20, "multipart chunk size in `bytes`")
	pageSize := fs.Int("page-size", 1000, "tree page size (expand=true pages hold 50 or fewer)")
	verbose := fs.Bool("v", false, "log every request")
	var downRate, upRate byteRate
	fs.Var(&downRate, "down-rate", "shared download `rate` per second (e.g. 50MB, 40MiB; 0 unlimited)")
	fs.Var(&upRate, "up-rate", "shared upload `rate` per second (e.g. 25MB; 0 unlimited)")
	latency := fs.Duration("latency", 0, "`delay` added to every request (e.g. 20ms)")
	var tokens, orgs listFlag
	fs.Var(&tokens, "token", "`VALUE=[USER:]SCOPE` token to accept, SCOPE read, write, app or fineGrained:ENTITY=PERM+PERM,... (repeatable)")
	fs.Var(&orgs, "org", "`ORG=USER,USER` organization members (repeatable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "hubfake: unexpected arguments %q\n", fs.Args())
		return 2
	}
	opts := []hubtest.Option{
		hubtest.WithLFSThreshold(*lfsThreshold),
		hubtest.WithMultipartChunkSize(*chunk),
		hubtest.WithTreePageSize(*pageSize, min(*pageSize, 50)),
		hubtest.WithLink(int64(downRate), int64(upRate)),
		hubtest.WithLatency(*latency),
	}
	for _, t := range tokens {
		o, err := parseToken(t, *user)
		if err != nil {
			fmt.Fprintf(stderr, "hubfake: --token %s: %v\n", t, err)
			return 2
		}
		opts = append(opts, o)
	}
	for _, o := range orgs {
		name, members, ok := strings.Cut(o, "=")
		if !ok || name == "" {
			fmt.Fprintf(stderr, "hubfake: --org %s: want ORG=USER,USER\n", o)
			return 2
		}
		opts = append(opts, hubtest.WithOrg(name, strings.Split(members, ",")...))
	}
	if *state != "" {
		opts = append(opts, hubtest.WithStateDir(*state))
	}
	if *xet {
		opts = append(opts, hubtest.WithXet(), hubtest.WithXetTokenLifetime(*xetLifetime))
	} else if *casAddr != "" {
		fmt.Fprintf(stderr, "hubfake: --cas-addr needs --xet\n")
		return 2
	}
	logger := log.New(stderr, "hubfake: ", log.LstdFlags)
	if *verbose {
		opts = append(opts, hubtest.WithLogf(logger.Printf))
	}
	if err := serve(ctx, opts, *addr, *cdnAddr, *casAddr, *xet, *seed, stdout); err != nil {
		logger.Print(err)
		return 1
	}
	return 0
}

func serve(ctx context.Context, opts []hubtest.Option, addr, cdnAddr, casAddr string, xet bool, seedDir string, stdout io.Writer) (err error) {
	// New panics on unreadable state: turn that into an error message.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	h := hubtest.New(opts...)
	hubLn, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if cdnAddr == "" {
		cdnAddr = nextPort(hubLn.Addr().(*net.TCPAddr), addr)
	}
	cdnLn, err := net.Listen("tcp", cdnAddr)
	if err != nil {
		hubLn.Close()
		return fmt.Errorf("listen on CDN address: %w", err)
	}
	var casLn net.Listener
	if xet {
		if casAddr == "" {
			casAddr = nextPort(cdnLn.Addr().(*net.TCPAddr), cdnAddr)
		}
		if casLn, err = net.Listen("tcp", casAddr); err != nil {
			hubLn.Close()
			cdnLn.Close()
			return fmt.Errorf("listen on CAS address: %w", err)
		}
	}
	if seedDir != "" {
		repos, err := seedRepos(h, seedDir)
		if err != nil {
			hubLn.Close()
			cdnLn.Close()
			if casLn != nil {
				casLn.Close()
			}
			return err
		}
		for _, r := range repos {
			fmt.Fprintf(stdout, "seeded %s\n", r)
		}
	}
	fmt.Fprintf(stdout, "hub %s\n", "http://"+hubLn.Addr().String())
	casDone := make(chan error, 1)
	if casLn != nil {
		fmt.Fprintf(stdout, "cas %s\n", "http://"+casLn.Addr().String())
		h.SetCASURL("http://" + casLn.Addr().String()) // before any client can ask for a token
		cctx, cancel := context.WithCancel(ctx)
		defer func() { cancel(); err = errors.Join(err, <-casDone) }()
		go func() { casDone <- h.ServeCAS(cctx, casLn) }()
	}
	fmt.Fprintf(stdout, "cdn %s\n", "http://"+cdnLn.Addr().String())
	fmt.Fprintf(stdout, "export HF_ENDPOINT=http://%s\n", hubLn.Addr())
	err = h.Serve(ctx, hubLn, cdnLn)
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	printStats(stdout, h.Stats())
	return err
}

// printStats writes one line "stats {json}" with what crossed the user's link, for
// scripts that compare a run with the link's floor.
func printStats(w io.Writer, st hubtest.Stats) {
	requests, commits := 0, 0
	for _, n := range st.Requests {
		requests += n
	}
	for _, n := range st.Commits {
		commits += n
	}
	b, _ := json.Marshal(map[string]int64{"bytes_down": st.BytesDown, "bytes_up": st.BytesUp,
		"requests": int64(requests), "commits": int64(commits), "faults_fired": int64(st.FaultsFired)})
	fmt.Fprintf(w, "stats %s\n", b)
}

// nextPort is the default CDN address: the Hub's host, next port (or any port when
// the Hub's was chosen by the system).
func nextPort(bound *net.TCPAddr, asked string) string {
	host, port, _ := net.SplitHostPort(asked)
	if port == "0" {
		return net.JoinHostPort(host, "0")
	}
	return net.JoinHostPort(host, strconv.Itoa(bound.Port+1))
}

// parseToken reads VALUE=[USER:]SCOPE.
func parseToken(s, defaultUser string) (hubtest.Option, error) {
	value, rest, ok := strings.Cut(s, "=")
	if !ok || value == "" {
		return nil, errors.New("want VALUE=[USER:]SCOPE")
	}
	user, scope, ok := strings.Cut(rest, ":")
	if !ok || strings.HasPrefix(rest, string(hubtest.ScopeFineGrained)) {
		user, scope = defaultUser, rest
	}
	kind, perms, _ := strings.Cut(scope, ":")
	switch hubtest.Scope(kind) {
	case hubtest.ScopeRead, hubtest.ScopeWrite:
		return hubtest.WithToken(value, user, hubtest.Scope(kind)), nil
	case hubtest.ScopeApp:
		return hubtest.WithAppToken(value, user), nil
	case hubtest.ScopeFineGrained:
		fg, err := parseFineGrained(perms)
		if err != nil {
			return nil, err
		}
		return hubtest.WithFineGrainedToken(value, user, fg), nil
	}
	return nil, fmt.Errorf("scope %q: want read, write, app or fineGrained:ENTITY=PERM+PERM,...", scope)
}

// parseFineGrained reads ENTITY=PERM+PERM,... with ENTITY user/NAME, org/NAME,
// model/OWNER/NAME (dataset/, space/) or "global".
func parseFineGrained(s string) (hubtest.FineGrained, error) {
	var fg hubtest.FineGrained
	if s == "" {
		return fg, errors.New("fineGrained: want ENTITY=PERM+PERM,... (e.g. user/alice=repo.write)")
	}
	for _, part := range strings.Split(s, ",") {
		entity, perms, ok := strings.Cut(part, "=")
		list := strings.Split(perms, "+")
		if !ok || perms == "" {
			return fg, fmt.Errorf("fineGrained: %q: want ENTITY=PERM+PERM", part)
		}
		if entity == "global" {
			fg.Global = append(fg.Global, list...)
			continue
		}
		kind, name, ok := strings.Cut(entity, "/")
		switch {
		case !ok || name == "":
			return fg, fmt.Errorf("fineGrained: entity %q: want user/NAME, org/NAME, model/OWNER/NAME or global", entity)
		case kind == "user" || kind == "org" || kind == "model" || kind == "dataset" || kind == "space":
			fg.Scoped = append(fg.Scoped, hubtest.Scoped{EntityType: kind, Entity: name, Permissions: list})
		default:
			return fg, fmt.Errorf("fineGrained: entity kind %q: want user, org, model, dataset or space", kind)
		}
	}
	return fg, nil
}

// byteRate is a flag of bytes per second: a number with an optional unit, decimal (KB,
// MB, GB) or binary (KiB, MiB, GiB); "/s" may follow.
type byteRate int64

func (b *byteRate) String() string { return strconv.FormatInt(int64(*b), 10) }

func (b *byteRate) Set(s string) error {
	t := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	units := []struct {
		suffix string
		mult   float64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mult := 1.0
	for _, u := range units {
		if rest, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || f*mult > 1e15 || f != f {
		return fmt.Errorf("%q: want a rate such as 50MB or 40MiB", s)
	}
	*b = byteRate(f * mult)
	return nil
}
