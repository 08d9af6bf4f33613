"""How far precision "fast" is from "exact": logits and greedy tokens, teacher-forced.

For each clip, qwen_serve.testing.precision.teacher_forced: the exact context decodes greedily and
keeps every step's logits; the fast context walks the same token sequence, restarted from the exact
prefix where its token differs, so that every step compares the two precisions on the same input.
Per step:

  error   max |fast - exact| over the vocabulary, divided by the spread of the exact logits
          (their standard deviation);
  margin  exact top-1 minus top-2 logit, in the same units;
  agree   whether both pick the same token.

Printed: the error's median / p99 / max, agreement over all steps, and over the steps whose exact
margin is clear (more than twice the p99 error: a flip there would not be a near tie). Random
weights give flatter logits than trained ones, so near ties are more common here than on a real
checkpoint; the error figures carry over, the agreement share is a lower bound in that sense.

    python benchmarks/bench_precision.py --model tiny          # the tiny checkpoint (made if missing)
    python benchmarks/bench_precision.py --model full-0.6b --clips 6 --tokens 24
    python benchmarks/bench_precision.py --model full-0.6b --isa avx512   # the int8 decoder's share alone
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from bench_serve import cpu_model

from qwen_serve.engine.engine import Engine
from qwen_serve.testing.checkpoint import make_checkpoint
from qwen_serve.testing.clips import speech_like
from qwen_serve.testing.precision import Step, teacher_forced

PRESETS = {"tiny": "tiny-0.6b", "full-0.6b": "full-0.6b", "full-1.7b": "full-1.7b"}


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """--model and --cache-dir, what checkpoint_dir takes."""
    p.add_argument("--model", default="tiny", help="tiny, full-0.6b, full-1.7b, or a checkpoint directory")
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "qwen-bench")


def checkpoint_dir(model: str, cache_dir: Path) -> Path:
    """--model: a preset's generated checkpoint under cache_dir (made if missing), else a directory."""
    if model not in PRESETS:
        return Path(model)
    model_dir = cache_dir / PRESETS[model]
    if not (model_dir / "config.json").exists():
        make_checkpoint(model_dir, preset=PRESETS[model])
    return model_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--isa", default="auto", help="kernel set of the fast side (avx512: f32 encoder, int8 decoder)"
    )
    args = p.parse_args()
    model_dir = checkpoint_dir(args.model, args.cache_dir)
    exact = Engine(model_dir, threads=args.threads, precision="exact")
    fast = Engine(model_dir, threads=args.threads, precision="fast", isa=args.isa)
    print(
        f"CPU: {cpu_model()}; model {model_dir.name}; exact: {exact.native.kernels}; fast: {fast.native.kernels}"
    )
    steps: list[Step] = []
    for i in range(args.clips):
        pcm = speech_like(args.seconds * (0.6 + 0.8 * (i % 4) / 3), seed=100 + i)
        steps += teacher_forced(exact.native, fast.native, pcm, exact.prompt_ids(pcm.size), args.tokens)
    err = np.array([s.error for s in steps])
    margin = np.array([s.margin for s in steps])
    agree = np.array([s.agree for s in steps])
    clear = margin > 2 * np.percentile(err, 99)
    print(f"steps {len(steps)} over {args.clips} clips")
    print(
        f"logit error / spread: median {np.median(err):.4f}  p99 {np.percentile(err, 99):.4f}  max {err.max():.4f}"
    )
    print(f"exact top-2 margin / spread: median {np.median(margin):.3f}")
    print(f"greedy agreement: all steps {agree.mean():.1%} ({agree.sum()}/{agree.size})")
    if clear.any():
        print(
            f"greedy agreement where the margin is clear (> 2 x p99 error): {agree[clear].mean():.1%} "
            f"({agree[clear].sum()}/{clear.sum()}, {clear.mean():.0%} of the steps)"
        )
    exact.close()
    fast.close()


if __name__ == "__main__":
    main()
