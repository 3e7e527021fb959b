package main

import (
	"fmt"
	"runtime"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/hfmerge/hfmerge"
	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
)

func commonFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "base", Usage: "the base model: a local `DIR`, or a Hub repo owner/name[@revision]"},
		&cli.StringSliceFlag{Name: "adapter", Usage: "the LoRA adapter: a local `DIR` or a Hub repo, holding adapter_config.json and adapter_model.safetensors; " +
			"give it more than once to merge several in one pass, each as SRC[:WEIGHT]"},
		&cli.StringFlag{Name: "token", Usage: "Hugging Face access `TOKEN` (default: HF_TOKEN, HUGGING_FACE_HUB_TOKEN, then the token file)"},
		&cli.BoolFlag{Name: "offline", Usage: "use only the HF cache; never contact the Hub (also HF_HUB_OFFLINE=1)"},
		&cli.StringFlag{Name: "cache-dir", Usage: "the HF hub cache `DIR` (default: HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub)"},
		&cli.StringFlag{Name: "local-dir", Usage: "read and keep the Hub base in `DIR` laid out as hf download --local-dir does, instead of the HF cache"},
		&cli.BoolFlag{Name: "keep-base", Usage: "keep the base's files this run downloads (default: stream them and keep nothing)"},
		&cli.StringFlag{Name: "dtype", Value: "keep", Usage: "output dtype of float tensors: keep, bf16, fp16 or fp32"},
		&cli.StringFlag{Name: "quantized", Value: "bf16", Usage: "for a quantized base (block FP8, compressed-tensors FP8, MXFP4): bf16 (every weight dequantized exactly, in BF16), keep (touched weights requantized in the base's format) or mixed (touched weights in BF16, the rest as they are)"},
		&cli.StringFlag{Name: "tied-embeddings", Value: "untie", Usage: "when the adapter changes one side of tied embeddings: untie (the merged model computes what base + adapter did) or fold (add into the shared tensor, as PEFT does)"},
		&cli.StringFlag{Name: "expert-layout", Usage: "how to read square expert parameters of an adapter trained on MoE experts (target_parameters) when neither the shapes nor the PEFT version settle it: out-in (PEFT 0.19.1 and later) or in-out (PEFT 0.18 and earlier)"},
		&cli.IntFlag{Name: "jobs", Value: runtime.NumCPU(), Usage: "cores to merge with"},
		&cli.StringFlag{Name: "progress", Value: "auto", Usage: "auto, bar, plain or none (HF_HUB_DISABLE_PROGRESS_BARS=1 turns bars off)"},
		&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json"},
	}
}

func mergeFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "out", Usage: "write the merged model into `DIR`"},
		&cli.BoolFlag{Name: "force", Usage: "write into a directory that already holds files, replacing an earlier model's weights"},
	}
}

func pushFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "repo", Usage: "publish to the Hub repo `OWNER/NAME` (created if missing)"},
		&cli.BoolFlag{Name: "private", Usage: "create the repo private"},
		&cli.StringFlag{Name: "revision", Value: "main", Usage: "commit to `BRANCH`"},
		&cli.BoolFlag{Name: "pr", Usage: "open a pull request instead of committing to the branch"},
		&cli.StringFlag{Name: "message", Usage: "the commit's title"},
		&cli.StringFlag{Name: "card", Value: "keep", Usage: "the model card on the Hub: keep (unless it is the one hfmerge wrote) or replace"},
		&cli.StringFlag{Name: "disk-budget", Usage: "disk the run may use for merged shards, e.g. 20GB (default: the largest shard and 5%, at most the free space)"},
		&cli.StringFlag{Name: "work-dir", Usage: "`DIR` for merged shards and the journal (default: HF_HOME/hfmerge)"},
		&cli.StringFlag{Name: "xet", Value: "auto", Usage: "upload through Xet storage, sending only the chunks the Hub lacks: auto (where the Hub offers it; HF_HUB_DISABLE_XET=1 turns it off), on (fail if the Hub offers none) or off (LFS)"},
	}
}

// options are the command-line choices every command shares, checked.
type options struct {
	base      string
	adapters  []string
	plan      mergeplan.Options
	merge     merge.Options
	progress  string
	logFormat string
	token     string // as given or found
	tokenFrom string // where it came from, for messages
	offline   bool
	sources   hfmerge.Sources
}

func readOptions(c *cli.Context, st *state) (*options, error) {
	o := &options{
		base:     c.String("base"),
		adapters: c.StringSlice("adapter"),
		plan: mergeplan.Options{DType: mergeplan.DTypeChoice(c.String("dtype")), Tied: mergeplan.Tied(c.String("tied-embeddings")),
			Experts: mergeplan.ExpertLayout(c.String("expert-layout")), Quantized: mergeplan.QuantMode(c.String("quantized"))},
		merge:     merge.Options{Jobs: c.Int("jobs")},
		progress:  c.String("progress"),
		logFormat: c.String("log-format"),
		token:     c.String("token"),
		tokenFrom: "--token",
		offline:   c.Bool("offline") || hub.OfflineFromEnv(),
	}
	switch o.logFormat {
	case "text", "json":
	default:
		return nil, usageErr("--log-format %q: want text or json", o.logFormat)
	}
	st.setLog(o.logFormat)
	if o.token == "" {
		o.token, o.tokenFrom = hub.TokenFromEnv()
	}
	st.token = o.token
	switch {
	case c.String("local-dir") != "" && c.String("cache-dir") != "":
		return nil, usageErr("--local-dir and --cache-dir cannot be used together")
	case o.base == "":
		return nil, usageErr("--base is required")
	case len(o.adapters) == 0 && !webhookRun(c): // a webhook event can name the adapter
		return nil, usageErr("--adapter is required")
	case o.merge.Jobs < 1:
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
	switch o.plan.Experts {
	case "", mergeplan.ExpertOutIn, mergeplan.ExpertInOut:
	default:
		return nil, usageErr("--expert-layout %q: want out-in or in-out", o.plan.Experts)
	}
	switch o.progress {
	case "auto", "bar", "plain", "none":
	default:
		return nil, usageErr("--progress %q: want auto, bar, plain or none", o.progress)
	}
	o.sources = hfmerge.Sources{CacheDir: c.String("cache-dir"), LocalDir: c.String("local-dir"), KeepBase: c.Bool("keep-base"), Log: st.log}
	if !o.offline {
		ho := hub.Options{Token: o.token, UserAgent: "hfmerge/" + hfmerge.Version(), Logger: st.log}
		if err := hub.OptionsFromEnv(&ho); err != nil {
			return nil, &exitError{exitUsage, err}
		}
		client, err := hub.New(ho)
		if err != nil {
			return nil, err
		}
		o.sources.Client, o.sources.Anonymous = client, o.token == ""
	}
	return o, nil
}

// suggestFlag adds "did you mean --x?" to an unknown-flag error.
func suggestFlag(c *cli.Context, err error) string {
	msg := err.Error()
	_, name, ok := strings.Cut(msg, "flag provided but not defined: -")
	if !ok || c.Command == nil {
		return ""
	}
	name = strings.TrimLeft(name, "-")
	if s := cli.SuggestFlag(c.Command.Flags, name, true); s != "" {
		return fmt.Sprintf(" (did you mean %s?)", s)
	}
	return ""
}

// suggestCommand adds "did you mean x?" to an unknown command.
func suggestCommand(c *cli.Context, name string) string {
	if s := cli.SuggestCommand(c.App.Commands, name); s != "" {
		return " (" + s + ")"
	}
	return ""
}

// repoFlag reads a required flag naming a Hub repo, OWNER/NAME[@REVISION].
func repoFlag(c *cli.Context, name string) (hub.Repo, string, error) {
	if c.String(name) == "" {
		return hub.Repo{}, "", usageErr("--%s is required", name)
	}
	repo, rev, err := hub.ParseRepo(c.String(name))
	if err != nil {
		return hub.Repo{}, "", usageErr("--%s: %v", name, err)
	}
	return repo, rev, nil
}
