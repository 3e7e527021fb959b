// Command genmodel writes a Llama-shaped model with random weights and a LoRA adapter on
// every projection (or the -targets given, the embedding among them; DoRA with -dora), for
// benchmarks. Values are generated while the files are written, so
// a model of any size needs little memory. The same flags always give the same bytes.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
)

func main() {
	out := flag.String("out", "", "directory to write base/ and adapter/ into")
	hidden := flag.Int("hidden", 2048, "hidden size")
	inter := flag.Int("intermediate", 5632, "MLP size")
	layers := flag.Int("layers", 8, "decoder layers")
	vocab := flag.Int("vocab", 32000, "vocabulary")
	shard := flag.Int64("shard-mb", 450, "largest shard in MB (10⁶ bytes), as Transformers' max_shard_size")
	rank := flag.Int("rank", 16, "LoRA rank")
	seed := flag.Uint64("seed", 1, "random seed")
	fp8 := flag.String("fp8", "", "quantize the projections to block FP8 with scales of this dtype (F32, BF16, F16 or F8_E8M0)")
	block := flag.Int64("block", 128, "the block FP8 block size (both dimensions)")
	adapterOnly := flag.Bool("adapter-only", false, "write only the adapter (the base is the same for every rank)")
	targets := flag.String("targets", strings.Join(projections, ","), "modules the adapter trains: projections and embed_tokens, comma-separated")
	dora := flag.Bool("dora", false, "a DoRA adapter: a magnitude vector on every target")
	mxExperts := flag.Int("mxfp4-experts", 0, "write a gpt-oss-shaped MXFP4 model with this many experts a layer instead, and an expert LoRA on every layer's gate_up_proj and down_proj (-targets and -fp8 do not apply)")
	flag.Parse()
	if *mxExperts > 0 {
		if *out == "" {
			fmt.Fprintln(os.Stderr, "genmodel: -out is required")
			os.Exit(2)
		}
		mxfp4(*out, *hidden, *inter, *layers, *vocab, *mxExperts, *rank, *seed, *shard)
		return
	}
	want := strings.Split(*targets, ",")
	for _, t := range want {
		if !slices.Contains(projections, t) && t != "embed_tokens" {
			fmt.Fprintf(os.Stderr, "genmodel: -targets: no module %q (have %s and embed_tokens)\n", t, strings.Join(projections, ", "))
			os.Exit(2)
		}
	}
	if *out == "" {
		fmt.Fprintln(os.Stderr, "genmodel: -out is required")
		os.Exit(2)
	}
	m := fixture.Llama(fixture.LlamaSpec{Hidden: *hidden, Intermediate: *inter, Layers: *layers, Vocab: *vocab,
		KV: *hidden / 4, DType: safetensors.BF16, Seed: *seed, Lazy: true})
	if *fp8 != "" {
		m.BlockFP8([2]int64{*block, *block}, safetensors.DType(*fp8), *seed+2)
	}
	var total int64
	for _, t := range m.Tensors {
		total += t.Bytes()
	}
	m.SplitMax(*shard * 1000 * 1000)
	a := fixture.NewAdapter(*rank, float64(2**rank), want...)
	a.Config["base_model_name_or_path"] = "bench/llama"
	a.Config["use_dora"] = *dora
	r := fixture.NewRand(*seed + 1)
	lazy := func(key string, std float64, shape ...int64) {
		a.Tensors = append(a.Tensors, &fixture.Tensor{Name: key, DType: safetensors.F32, Shape: shape, Std: std, Seed: r.Uint64()})
	}
	if slices.Contains(want, "embed_tokens") {
		// lora_embedding_A is (r, vocab), lora_embedding_B (dim, r); DoRA's magnitude is
		// one per column of the (vocab, dim) weight.
		w := m.Tensor("model.embed_tokens.weight")
		lazy(fixture.Key("model.embed_tokens", "lora_embedding_A"), 0.02, int64(*rank), w.Shape[0])
		lazy(fixture.Key("model.embed_tokens", "lora_embedding_B"), 0.02, w.Shape[1], int64(*rank))
		if *dora {
			lazy(fixture.Key("model.embed_tokens", "lora_magnitude_vector"), 0.02, w.Shape[1])
		}
	}
	for l := 0; l < *layers; l++ {
		for _, p := range []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"} {
			if !slices.Contains(want, p[strings.IndexByte(p, '.')+1:]) {
				continue
			}
			mod := fmt.Sprintf("model.layers.%d.%s", l, p)
			w := m.Tensor(mod + ".weight")
			lazy(fixture.Key(mod, "lora_A.weight"), 0.02, int64(*rank), w.Shape[1])
			lazy(fixture.Key(mod, "lora_B.weight"), 0.02, w.Shape[0], int64(*rank))
			if *dora {
				lazy(fixture.Key(mod, "lora_magnitude_vector"), 0.02, w.Shape[0])
			}
		}
	}
	if *adapterOnly {
		if err := a.Write(filepath.Join(*out, "adapter")); err != nil {
			fmt.Fprintln(os.Stderr, "genmodel:", err)
			os.Exit(1)
		}
		fmt.Printf("wrote %s: LoRA rank %d on %s\n", *out, *rank, *targets)
		return
	}
	if err := m.Write(filepath.Join(*out, "base")); err != nil {
		fmt.Fprintln(os.Stderr, "genmodel:", err)
		os.Exit(1)
	}
	if err := a.Write(filepath.Join(*out, "adapter")); err != nil {
		fmt.Fprintln(os.Stderr, "genmodel:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s: %d tensors in %d shards, %.2f GB; LoRA rank %d on %s\n",
		*out, len(m.Tensors), len(m.Shards), float64(total)/1e9, *rank, *targets)
}

var projections = []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

// mxfp4 writes a gpt-oss-shaped base (fixture.MoE, Interleaved, with MXFP4 experts)
// and an expert LoRA on both expert parameters of every layer, as PEFT 0.20 nests them
// (gate_up_proj wrapped first).
func mxfp4(out string, hidden, inter, layers, vocab, experts, rank int, seed uint64, shardMB int64) {
	m := fixture.MoE(fixture.MoESpec{Hidden: hidden, Intermediate: inter, Experts: experts, Layers: layers, Vocab: vocab,
		Layout: fixture.Interleaved, DType: safetensors.BF16, Seed: seed, Lazy: true})
	m.MXFP4(seed + 2)
	var total int64
	for _, t := range m.Tensors {
		total += t.Bytes()
	}
	m.SplitMax(shardMB * 1000 * 1000)
	a := fixture.NewExpertAdapter(rank, float64(2*rank), "0.20.0", "mlp.experts.gate_up_proj", "mlp.experts.down_proj")
	a.Config["base_model_name_or_path"] = "bench/gpt-oss"
	r := fixture.NewRand(seed + 1)
	h, i := int64(hidden), int64(inter)
	for l := 0; l < layers; l++ {
		a.Experts(fixture.ExpertsModule(l), 1, experts, rank, h, 2*i, safetensors.F32, r)
		a.Experts(fixture.ExpertsModule(l), 0, experts, rank, i, h, safetensors.F32, r)
	}
	for _, w := range []func() error{func() error { return m.Write(filepath.Join(out, "base")) },
		func() error { return a.Write(filepath.Join(out, "adapter")) }} {
		if err := w(); err != nil {
			fmt.Fprintln(os.Stderr, "genmodel:", err)
			os.Exit(1)
		}
	}
	fmt.Printf("wrote %s: MXFP4 model, %d experts a layer, %d tensors in %d shards, %.2f GB; expert LoRA rank %d\n",
		out, experts, len(m.Tensors), len(m.Shards), float64(total)/1e9, rank)
}
