"""Two libqwen builds in one process: their decode steps in interleaved blocks, and the ratio.

    lib=$(benchmarks/build_rev.sh main)
    .venv/bin/python benchmarks/bench_ab.py "$lib"                   # the working tree's build against main's
    .venv/bin/python benchmarks/bench_ab.py "$lib" --batches 8 --logprobs

A shared VM's memory and core placement move 10-30% from one minute (and one process) to the
next, so builds timed in turns of whole processes differ by more than most changes do. Here
both builds (A: --a, default the installed library; B: the path given) load the checkpoint in
one process, each with its own B sequences (--clip-seconds clips, all admitted first), and take
turns of --steps decode steps, --blocks times (A then B, then B then A, ...). Each block's
ratio A / B compares two neighbouring stretches of a few hundred milliseconds; the median and
quartiles of those ratios are the result. The contexts grow by the same steps on both sides.
Name the CPU next to every figure (printed first).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench_engine import add_checkpoint_args, checkpoint_dir, test_audio
from bench_serve import cpu_model

from qwen_serve.engine._native import NativeModel, library_path


def admitted(path: Path, model_dir: Path, args: argparse.Namespace, batch: int) -> NativeModel:
    """A model on the build at path with `batch` sequences past their prefill."""
    m = NativeModel(model_dir, threads=args.threads, precision="fast", max_sequences=batch, library=path)
    pcm = test_audio(args.clip_seconds)
    prompt = [m.info("audio_start_token_id")] + [m.audio_token_id] * m.audio_token_count(pcm.size)
    prompt.append(m.info("audio_end_token_id"))
    for _ in range(batch):
        m.seq_add(
            pcm, prompt, max_new_tokens=args.blocks * args.steps + 64, eos_ids=[-1], logprobs=args.logprobs
        )
    started: set[int] = set()
    while len(started) < batch:
        started.update(s for s, t, *_ in (m.step() or []) if t >= 0)
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("b", type=Path, help="build B: a libqwen path (benchmarks/build_rev.sh REV prints one)")
    p.add_argument("--a", type=Path, default=None, help="build A (default: the installed library)")
    add_checkpoint_args(p)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--blocks", type=int, default=40)
    p.add_argument("--steps", type=int, default=10, help="decode steps a block")
    p.add_argument("--clip-seconds", type=float, default=5.0)
    p.add_argument("--logprobs", action="store_true", help="every sequence asks for log-probabilities")
    args = p.parse_args()
    model_dir = checkpoint_dir(args)
    builds = {"A": (args.a or library_path()).resolve(), "B": args.b.resolve()}
    print(f"CPU: {cpu_model()}, {args.threads} threads, {model_dir.name}, precision fast")
    for name, path in builds.items():
        print(f"{name}: {path}")
    print("| batch | A ms a step | B ms a step | A / B, median of blocks (quartiles) |")
    print("|---|---|---|---|")
    for batch in [int(b) for b in args.batches.split(",")]:
        models = {name: admitted(path, model_dir, args, batch) for name, path in builds.items()}
        times: dict[str, list[float]] = {name: [] for name in builds}
        try:
            for k in range(args.blocks):
                for name in ("A", "B") if k % 2 == 0 else ("B", "A"):
                    m = models[name]
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        m.step()
                    times[name].append((time.perf_counter() - t0) * 1e3 / args.steps)
        finally:
            for m in models.values():
                m.close()
        ratios = [a / b for a, b in zip(times["A"], times["B"], strict=True)]
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        a, b = statistics.median(times["A"]), statistics.median(times["B"])
        print(f"| {batch} | {a:.2f} | {b:.2f} | {statistics.median(ratios):.3f} ({q1:.3f}-{q3:.3f}) |")
    print(f"{args.blocks} blocks of {args.steps} steps each side, {args.clip_seconds:g} s clips")


if __name__ == "__main__":
    main()
