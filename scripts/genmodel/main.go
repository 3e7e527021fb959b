// Command genmodel writes a Llama-shaped model with random weights and a LoRA adapter on
// every projection, for benchmarks. Values are generated while the files are written, so
// a model of any size needs little memory. The same flags always give the same bytes.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

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
	flag.Parse()
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
	a := fixture.NewAdapter(*rank, float64(2**rank), "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
	a.Config["base_model_name_or_path"] = "bench/llama"
	r := fixture.NewRand(*seed + 1)
	for l := 0; l < *layers; l++ {
		for _, p := range []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"} {
			mod := fmt.Sprintf("model.layers.%d.%s", l, p)
			w := m.Tensor(mod + ".weight")
			a.Tensors = append(a.Tensors,
				&fixture.Tensor{Name: fixture.Key(mod, "lora_A.weight"), DType: safetensors.F32, Shape: []int64{int64(*rank), w.Shape[1]}, Std: 0.02, Seed: r.Uint64()},
				&fixture.Tensor{Name: fixture.Key(mod, "lora_B.weight"), DType: safetensors.F32, Shape: []int64{w.Shape[0], int64(*rank)}, Std: 0.02, Seed: r.Uint64()})
		}
	}
	if *adapterOnly {
		if err := a.Write(filepath.Join(*out, "adapter")); err != nil {
			fmt.Fprintln(os.Stderr, "genmodel:", err)
			os.Exit(1)
		}
		fmt.Printf("wrote %s: LoRA rank %d on %d modules\n", *out, *rank, len(a.Tensors)/2)
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
	fmt.Printf("wrote %s: %d tensors in %d shards, %.2f GB; LoRA rank %d on %d modules\n",
		*out, len(m.Tensors), len(m.Shards), float64(total)/1e9, *rank, len(a.Tensors)/2)
}
