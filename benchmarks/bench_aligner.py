"""Forced-aligner speed: libqwen's Aligner against the official Qwen3ForcedAligner, same run.

    .venv/bin/python benchmarks/bench_aligner.py                       # full-size random aligner, 10 s and 60 s
    .venv/bin/python benchmarks/bench_aligner.py --seconds 10,60,180 --precision exact,fast
    .venv/bin/python benchmarks/bench_aligner.py --model-dir models/qwen3-forcedaligner-0.6b   # real weights

One forward pass per clip: mel, encoder, the decoder over the audio tokens and
the transcript with its `<timestamp>` markers, and the head at the markers.
The transcript is English-like text at 2.5 words a second (what speech has);
both sides get the same audio, text and language. Each side runs in its own
subprocess (peak RSS is its own), best of --repeat runs. Weights are random
(the real dimensions of Qwen3-ForcedAligner-0.6B, bf16), so the times mean
nothing as timestamps; the work is the real model's. The CPU is printed first:
name it next to every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench_engine import test_audio
from bench_serve import cpu_model

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "bright", "stars", "shine", "above", "quiet", "hills", "and", "people", "talk", "about", "music", "weather", "travel", "plans", "friends", "dinner", "books", "science", "history"]


def transcript(seconds: float) -> str:
    n = max(1, int(seconds * 2.5))
    return " ".join(WORDS[i % len(WORDS)] for i in range(n)) + "."


def run_side(args: argparse.Namespace) -> dict[str, float]:
    seconds = args.one_seconds
    pcm = test_audio(seconds)
    text = transcript(seconds)
    best = float("inf")
    if args.side == "official":
        import torch
        from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForcedAligner

        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        model = Qwen3ForcedAligner.from_pretrained(str(args.model_dir), dtype=torch.float32)
        load = time.perf_counter() - t0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            items = model.align(audio=(pcm, 16000), text=text, language="English")
            best = min(best, time.perf_counter() - t0)
        n_words = len(items[0])
    else:
        from qwen_serve.engine import Aligner

        t0 = time.perf_counter()
        aligner = Aligner(args.model_dir, threads=args.threads, precision=args.side)
        load = time.perf_counter() - t0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            words = aligner.align(pcm, text, "English")
            best = min(best, time.perf_counter() - t0)
        n_words = len(words)
        aligner.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"align_ms": best * 1e3, "load_s": load, "rss_mb": rss, "words": n_words}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "qwen-bench")
    p.add_argument("--seconds", default="10,60", help="clip lengths, comma-separated (at most 180)")
    p.add_argument("--precision", default="exact,fast", help="libqwen precisions, comma-separated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2, help="runs per side; the best is kept")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--side", default=None, help=argparse.SUPPRESS)
    p.add_argument("--one-seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:  # a subprocess: one side, one clip length
        print(json.dumps(run_side(args)))
        return

    if args.model_dir is None:
        from qwen_serve.testing.checkpoint import make_checkpoint

        args.model_dir = args.cache_dir / "full-aligner-0.6b"
        if not (args.model_dir / "config.json").exists():
            print(f"generating full-aligner-0.6b into {args.model_dir} ...", flush=True)
            make_checkpoint(args.model_dir, preset="full-aligner-0.6b", seed=0, dtype="bf16")
    sides = args.precision.split(",") + ([] if args.skip_reference else ["official"])
    lengths = [float(s) for s in args.seconds.split(",")]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; {args.threads} threads; checkpoint {args.model_dir}")
    rows: dict[tuple[str, float], dict[str, float]] = {}
    for seconds in lengths:
        for side in sides:
            cmd = [
                sys.executable, __file__, "--side", side, "--one-seconds", str(seconds),
                "--model-dir", str(args.model_dir), "--threads", str(args.threads), "--repeat", str(args.repeat),
            ]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows[(side, seconds)] = json.loads(out.stdout.strip().splitlines()[-1])
            r = rows[(side, seconds)]
            print(f"  {side:8s} {seconds:5.0f} s: {r['align_ms']:8.0f} ms, {r['words']} words, "
                  f"peak RSS {r['rss_mb']:.0f} MB, load {r['load_s']:.1f} s", flush=True)  # fmt: skip
    names = {"exact": "libqwen exact", "fast": "libqwen fast", "official": "official (PyTorch f32)"}
    print("\n| audio (words) | " + " | ".join(names.get(s, s) for s in sides) + " |")
    print("|---|" + "---|" * len(sides))
    for seconds in lengths:
        cells = []
        for side in sides:
            r = rows[(side, seconds)]
            ratio = ""
            if side != "official" and ("official", seconds) in rows:
                ratio = f" ({rows[('official', seconds)]['align_ms'] / r['align_ms']:.1f}x)"
            cells.append(f"{r['align_ms']:.0f} ms{ratio}")
        words = int(rows[(sides[0], seconds)]["words"])
        print(f"| {seconds:.0f} s ({words}) | " + " | ".join(cells) + " |")
    print("\n| peak RSS, load | " + " | ".join(
        f"{rows[(s, lengths[-1])]['rss_mb']:.0f} MB, {rows[(s, lengths[-1])]['load_s']:.1f} s" for s in sides
    ) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
