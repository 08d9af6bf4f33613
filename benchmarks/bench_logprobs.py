"""What `include[]=logprobs` costs: a decode step with and without log-probabilities.

    .venv/bin/python benchmarks/bench_logprobs.py                      # full-size random 0.6B, 2 threads
    .venv/bin/python benchmarks/bench_logprobs.py --preset full-1.7b --precision fast

A sequence that asks for its tokens' log-probabilities costs a softmax over the vocabulary each
token, and with `fast` the whole int8 LM head for its row (the step's screened head looks at the
best blocks only); the rows of one step that ask share one pass over the head. Per precision and
batch size (10 s clips, 32 timed steps each), the median step with no row asking, one row, and
every row; the runs take turns over --rounds, each ratio against its own round's plain step.
Name the CPU next to every figure (printed first).
"""

from __future__ import annotations

import argparse
import statistics

from bench_engine import add_checkpoint_args, batch_step_ms, checkpoint_dir, test_audio
from bench_serve import cpu_model

from qwen_serve.engine import Engine
from qwen_serve.engine._native import NativeModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="exact,fast")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    model_dir = checkpoint_dir(args)
    batches = [int(b) for b in args.batches.split(",")]
    pcm = test_audio(10.0)
    print(f"CPU: {cpu_model()}, {args.threads} threads, {model_dir.name}")
    for precision in args.precision.split(","):
        with Engine(model_dir, threads=1, max_batch=1, precision=precision) as e:
            prompt = e.prompt_ids(pcm.size)
        native = NativeModel(
            model_dir,
            threads=args.threads,
            precision=precision,
            max_sequences=max(batches),
            prefix_cache_tokens=-1,
        )
        try:
            kinds = {b: [0, 1, b] if b > 1 else [0, 1] for b in batches}
            times: dict[tuple[int, int], list[float]] = {}
            ratios: dict[tuple[int, int], list[float]] = {}
            for _ in range(args.rounds):
                for b in batches:
                    plain = 0.0
                    for asking in kinds[b]:
                        ms = batch_step_ms(native, pcm, prompt, b, args.steps, logprobs=asking)
                        plain = ms if asking == 0 else plain
                        times.setdefault((b, asking), []).append(ms)
                        ratios.setdefault((b, asking), []).append(ms / plain)
        finally:
            native.close()
        print(
            f"\n{precision}: decode step, median of {args.rounds} rounds (each a median of {args.steps} steps)"
        )
        print("| batch | rows asking | step ms | vs no row asking |")
        print("|---|---|---|---|")
        for b in batches:
            for asking in kinds[b]:
                t, r = times[(b, asking)], ratios[(b, asking)]
                print(
                    f"| {b} | {asking} | {statistics.median(t):.2f} ({min(t):.2f}-{max(t):.2f}) "
                    f"| {statistics.median(r):.3f}x |"
                )


if __name__ == "__main__":
    main()
