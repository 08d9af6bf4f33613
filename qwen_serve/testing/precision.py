"""Precision "fast" against "exact", teacher-forced: the comparison the engine tests assert on and
benchmarks/bench_precision.py reports.

The exact model decodes greedily and keeps every step's logits. The fast model then walks the
same token sequence: it decodes greedily too, and where its token differs from the exact one it is
restarted from the exact prefix (prompt + exact tokens so far), so that every step compares the two
precisions on the same input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qwen_serve.engine._native import NativeModel


@dataclass(frozen=True)
class Step:
    error: float
    """max |fast - exact| over the vocabulary, divided by the spread (standard deviation) of the
    exact logits."""
    margin: float
    """The exact top-1 minus top-2 logit, in the same units."""
    agree: bool
    """Both picked the same token."""


def greedy(
    model: NativeModel, pcm: np.ndarray, prompt: Sequence[int], n: int
) -> tuple[list[int], list[np.ndarray]]:
    """n greedy tokens (no stop token can occur) and the logits behind each."""
    steps = list(model.generate(pcm, list(prompt), max_new_tokens=n, eos_ids=[-2], with_logits=True))
    return [t for t, _ in steps], [lg for _, lg in steps if lg is not None]


def teacher_forced(
    exact: NativeModel, fast: NativeModel, pcm: np.ndarray, prompt: Sequence[int], n: int
) -> list[Step]:
    """One Step per token of the exact model's n greedy tokens."""
    ref_tokens, ref_logits = greedy(exact, pcm, prompt, n)
    steps: list[Step] = []
    t = 0
    while t < len(ref_tokens):
        tokens, logits = greedy(fast, pcm, list(prompt) + ref_tokens[:t], len(ref_tokens) - t)
        for tok, lg in zip(tokens, logits, strict=True):
            ref = ref_logits[t]
            spread = float(ref.std())
            top2 = np.sort(ref)[-2:]
            steps.append(
                Step(
                    float(np.abs(lg - ref).max()) / spread,
                    float(top2[1] - top2[0]) / spread,
                    tok == ref_tokens[t],
                )
            )
            t += 1
            if not steps[-1].agree:
                break  # restart from the exact prefix
    return steps
