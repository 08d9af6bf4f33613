"""The LM head's screen (precision "fast"): what it changes and what it saves.

A greedy step of `fast` takes its LM head from a 4-bit copy of the int8 head: the copy ranks the
vocabulary's blocks of 16 tokens, the best `head_screen` blocks (default 32) are rescored on the
int8 head, and the step's token is the best of those (native/src/quant.h, ops.c). It is the int8
head's own token unless the screen ranked that token's block below 32 others. This measures both
sides, each against `head_screen=-1` (the whole int8 head every step) in the same process:

  tokens  per clip, greedy decoding with the screen at each block count and with the whole head:
          the clips whose tokens are all the same, and the tokens compared. Few blocks (1, 2, 4)
          show how much room the default leaves. Random weights give flatter logits than trained
          ones (more near ties), which makes the screen's job harder here, not easier.
  time    decode per token and the prefill of a 10 s clip (its last row's head), whole head and
          screened, in alternating rounds: medians.

    python benchmarks/bench_head_screen.py --model tiny
    python benchmarks/bench_head_screen.py --model full-0.6b --clips 8 --tokens 32
    python benchmarks/bench_head_screen.py --model full-1.7b --clips 2 --rounds 3
    python benchmarks/bench_head_screen.py --model full-0.6b --isa avx2
"""

from __future__ import annotations

import argparse
import statistics

from bench_precision import add_checkpoint_args, checkpoint_dir
from bench_serve import cpu_model

from qwen_serve.engine._native import NativeModel
from qwen_serve.engine.engine import Engine
from qwen_serve.testing.clips import speech_like


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--blocks", default="1,2,4,32", help="head_screen block counts to compare")
    p.add_argument("--rounds", type=int, default=5, help="timing rounds (whole, screened), alternating")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--isa", default="auto", help="kernel set (avx2: the AVX2 / AVX-VNNI int8 tables' screens)"
    )
    args = p.parse_args()
    model_dir = checkpoint_dir(args.model, args.cache_dir)
    with Engine(model_dir, threads=args.threads, precision="fast") as e:
        prompt_ids = e.prompt_ids
        models = {
            hs: NativeModel(
                model_dir,
                threads=args.threads,
                isa=args.isa,
                precision="fast",
                head_screen=hs,
                prefix_cache_tokens=-1,
            )
            for hs in [-1] + [int(b) for b in args.blocks.split(",")]
        }
        whole = models[-1]
        print(
            f"CPU: {cpu_model()}; model {model_dir.name}; {whole.kernels}; "
            f"screen blocks: {[m.context_info('head_blocks') for m in models.values()]}"
        )
        if not models[int(args.blocks.split(",")[-1])].context_info("head_blocks"):
            print("this int8 table has no screen: nothing to compare")
            return

        same = {hs: 0 for hs in models if hs != -1}
        compared = 0
        for c in range(args.clips):
            pcm = speech_like(args.seconds, seed=100 + c)
            prompt = prompt_ids(pcm.size)
            ref = [t for t, _ in whole.generate(pcm, prompt, max_new_tokens=args.tokens, eos_ids=[-2])]
            compared += len(ref)
            for hs, m in models.items():
                if hs != -1:
                    same[hs] += [
                        t for t, _ in m.generate(pcm, prompt, max_new_tokens=args.tokens, eos_ids=[-2])
                    ] == ref
        for hs, n in same.items():
            print(
                f"tokens  {hs:3d} blocks: {n}/{args.clips} clips the same as the whole head ({compared} tokens each way)"
            )

        pcm = speech_like(10.0, seed=7)
        prompt = prompt_ids(pcm.size)
        screened = (
            models[0]
            if 0 in models
            else NativeModel(
                model_dir, threads=args.threads, isa=args.isa, precision="fast", prefix_cache_tokens=-1
            )
        )
        times: dict[str, list[float]] = {"whole": [], "screened": []}
        prefill: dict[str, list[float]] = {"whole": [], "screened": []}
        for _ in range(args.rounds):
            for name, m in (("whole", whole), ("screened", screened)):
                list(m.generate(pcm, prompt, max_new_tokens=33, eos_ids=[-2]))
                times[name].append(m.timing("decode") / 32)
                prefill[name].append(m.timing("prefill"))
        for name in times:
            print(
                f"time    {name:8s}: decode {statistics.median(times[name]):.2f} ms a token "
                f"(min {min(times[name]):.2f}), prefill {statistics.median(prefill[name]):.1f} ms"
            )
        for m in models.values():
            m.close()


if __name__ == "__main__":
    main()
