package hfmerge_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/hfmerge/hfmerge"
	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/upload"
)

// Merge the bundled tiny model and adapter into a directory, as `hfmerge merge` does.
func ExampleMergeDir() {
	ctx := context.Background()
	var src hfmerge.Sources // local directories only; set Client to reach the Hub
	base, err := src.Base(ctx, "testdata/tiny-llama")
	if err != nil {
		log.Fatal(err)
	}
	adapter, err := src.Adapter(ctx, "testdata/tiny-lora")
	if err != nil {
		log.Fatal(err)
	}
	in, err := hfmerge.Load(ctx, base, adapter, mergeplan.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer in.Close()
	plan := in.Plan() // headers only: every problem is in plan.Problems
	out, _ := os.MkdirTemp("", "merged")
	defer os.RemoveAll(out)
	if err := hfmerge.MergeDir(ctx, in, plan, out, hfmerge.MergeOptions{}); err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(plan.Shards), "shards merged")
	// Output: 2 shards merged
}

// Publish a merge to the Hub in one commit, as `hfmerge push` does, with progress.
func ExamplePush() {
	ctx := context.Background()
	client, err := hub.New(hub.Options{Token: os.Getenv("HF_TOKEN")})
	if err != nil {
		log.Fatal(err)
	}
	src := hfmerge.Sources{Client: client}
	base, err := src.Base(ctx, "org/model")
	if err != nil {
		log.Fatal(err)
	}
	adapter, err := src.Adapter(ctx, "./lora")
	if err != nil {
		log.Fatal(err)
	}
	in, err := hfmerge.Load(ctx, base, adapter, mergeplan.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer in.Close()
	target := upload.Target{Client: client, Repo: hub.Repo{Type: "model", ID: "me/model-merged"}}
	if err := hfmerge.CheckAccess(ctx, target); err != nil {
		log.Fatal(err)
	}
	res, err := hfmerge.Push(ctx, in, in.Plan(), hfmerge.PushOptions{Target: target, DiskBudget: -1,
		Progress: func(e hfmerge.Event) {
			if e.Type == hfmerge.ShardDone {
				fmt.Println(e.Stage, e.Shard, e.Note)
			}
		}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Commit.URL, res.Uploaded, "shards sent,", hfmerge.Human(res.BytesUp))
}
