"""Two libqwen builds in one process: their decode steps (or encoder and prefill) in interleaved
blocks, and the ratio.

    lib=$(benchmarks/build_rev.sh main)
    .venv/bin/python benchmarks/bench_ab.py "$lib"                   # the working tree's build against main's
    .venv/bin/python benchmarks/bench_ab.py "$lib" --batches 8 --logprobs
    .venv/bin/python benchmarks/bench_ab.py "$lib" --stage prefill   # a 10 s clip's encoder and prefill

A shared VM's memory and core placement move 10-30% from one minute (and one process) to the
next, so builds timed in turns of whole processes differ by more than most changes do. Here
both builds (A: --a, default the installed library; B: the path given) load the checkpoint in
one process, each with its own B sequences (--clip-seconds clips, all admitted first), and take
turns of --steps decode steps, --blocks times (A then B, then B then A, ...). Each block's
ratio A / B compares two neighbouring stretches of a few hundred milliseconds; the median and
quartiles of those ratios are the result. The contexts grow by the same steps on both sides.
--stage prefill: a block is --steps requests of one --clip-seconds clip (default 10 s) with one
token each on the official prompt, libqwen's encoder-window and prompt-prefix caches off (as in
bench_engine.py); the ratios are of the blocks' mean encoder and prefill times (qwen_timing).
Name the CPU next to every figure (printed first).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

from bench_engine import add_checkpoint_args, checkpoint_dir, test_audio
from bench_serve import cpu_model

from qwen_serve.engine._native import NativeModel, library_path


def turns(blocks: int) -> list[str]:
    """The builds' turns: A then B, then B then A, ... for `blocks` blocks."""
    return [name for k in range(blocks) for name in (("A", "B") if k % 2 == 0 else ("B", "A"))]


def row(label: str, a: list[float], b: list[float], digits: int) -> str:
    """A table row: both sides' median and the median ratio A / B of the blocks (quartiles)."""
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    ma, mb = statistics.median(a), statistics.median(b)
    return f"| {label} | {ma:.{digits}f} | {mb:.{digits}f} | {statistics.median(ratios):.3f} ({q1:.3f}-{q3:.3f}) |"


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


def prefill_ratios(builds: dict[str, Path], model_dir: Path, args: argparse.Namespace) -> None:
    """--stage prefill: blocks of --steps whole requests a side; the encoder's and prefill's ratios."""
    from qwen_serve.engine import Engine

    pcm = test_audio(args.clip_seconds)
    # the official prompt, as bench_engine.py's (an exact Engine: its weights map, nothing is quantized)
    with contextlib.closing(Engine(model_dir, threads=args.threads)) as engine:
        prompt = engine.prompt_ids(pcm.size)
    models = {
        name: NativeModel(
            model_dir,
            threads=args.threads,
            precision="fast",
            library=path,
            encoder_cache_windows=-1,
            prefix_cache_tokens=-1,
        )
        for name, path in builds.items()
    }
    stages = ("encoder", "prefill")
    times: dict[str, dict[str, list[float]]] = {name: {s: [] for s in stages} for name in builds}
    try:

        def block(m: NativeModel, runs: int) -> dict[str, float]:
            got: dict[str, list[float]] = {s: [] for s in stages}
            for _ in range(runs):
                assert len(list(m.generate(pcm, prompt, max_new_tokens=1, eos_ids=[-1]))) == 1
                for s in stages:
                    got[s].append(m.timing(s))
            return {s: statistics.fmean(v) for s, v in got.items()}

        for m in models.values():  # warm, as a server is
            block(m, 2)
        for name in turns(args.blocks):
            for s, v in block(models[name], args.steps).items():
                times[name][s].append(v)
    finally:
        for m in models.values():
            m.close()
    print(f"| stage ({len(prompt)}-token prompt) | A ms | B ms | A / B, median of blocks (quartiles) |")
    print("|---|---|---|---|")
    for s in stages:
        print(row(s, times["A"][s], times["B"][s], 1))
    print(f"{args.blocks} blocks of {args.steps} requests each side, {args.clip_seconds:g} s clips")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("b", type=Path, help="build B: a libqwen path (benchmarks/build_rev.sh REV prints one)")
    p.add_argument("--a", type=Path, default=None, help="build A (default: the installed library)")
    add_checkpoint_args(p)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stage", choices=("decode", "prefill"), default="decode")
    p.add_argument("--batches", default="1,8", help="decode: the batch sizes")
    p.add_argument("--blocks", type=int, default=None, help="default: decode 40, prefill 20")
    p.add_argument(
        "--steps", type=int, default=None, help="decode steps a block (10), or requests (prefill, 2)"
    )
    p.add_argument("--clip-seconds", type=float, default=None, help="default: decode 5, prefill 10")
    p.add_argument("--logprobs", action="store_true", help="every sequence asks for log-probabilities")
    args = p.parse_args()
    prefill = args.stage == "prefill"
    args.blocks = args.blocks or (20 if prefill else 40)
    args.steps = args.steps or (2 if prefill else 10)
    args.clip_seconds = args.clip_seconds or (10.0 if prefill else 5.0)
    model_dir = checkpoint_dir(args)
    builds = {"A": (args.a or library_path()).resolve(), "B": args.b.resolve()}
    print(f"CPU: {cpu_model()}, {args.threads} threads, {model_dir.name}, precision fast")
    for name, path in builds.items():
        print(f"{name}: {path}")
    if prefill:
        prefill_ratios(builds, model_dir, args)
        return
    print("| batch | A ms a step | B ms a step | A / B, median of blocks (quartiles) |")
    print("|---|---|---|---|")
    for batch in [int(b) for b in args.batches.split(",")]:
        models = {name: admitted(path, model_dir, args, batch) for name, path in builds.items()}
        times: dict[str, list[float]] = {name: [] for name in builds}
        try:
            for name in turns(args.blocks):
                m = models[name]
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    m.step()
                times[name].append((time.perf_counter() - t0) * 1e3 / args.steps)
        finally:
            for m in models.values():
                m.close()
        print(row(str(batch), times["A"], times["B"], 2))
    print(f"{args.blocks} blocks of {args.steps} steps each side, {args.clip_seconds:g} s clips")


if __name__ == "__main__":
    main()
