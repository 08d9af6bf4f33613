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

Then the whole transcripts (`Engine.transcribe`, free-running, long audio in chunks): the word
and character error rates of fast against exact, and where a clip has a reference transcript
(--audio FILE with FILE.txt beside it) each side's against it. On real weights and real speech
these are the figures that decide whether a change of `fast`'s numerics costs accuracy.

    python benchmarks/bench_precision.py --model tiny          # the tiny checkpoint (made if missing)
    python benchmarks/bench_precision.py --model full-0.6b --clips 6 --tokens 24
    python benchmarks/bench_precision.py --model full-0.6b --isa avx512   # the int8 decoder's share alone
    python benchmarks/bench_precision.py --model models/qwen3-asr-0.6b --audio speech/*.wav [--language en]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import jiwer
import numpy as np
from bench_serve import cpu_model

from qwen_serve.audio_decoding import SAMPLE_RATE, decode_audio
from qwen_serve.engine.engine import Engine
from qwen_serve.languages import to_model_language
from qwen_serve.testing.checkpoint import make_checkpoint
from qwen_serve.testing.clips import speech_like
from qwen_serve.testing.precision import Step, teacher_forced

PRESETS = {"tiny": "tiny-0.6b", "full-0.6b": "full-0.6b", "full-1.7b": "full-1.7b"}


TEACHER_FORCED_SECONDS = 30
"""Audio the teacher-forced part takes of each clip (the start of a longer file)."""

_CLEAN = [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()]
NORMALIZE = jiwer.Compose([*_CLEAN, jiwer.ReduceToListOfListOfWords()])
NORMALIZE_CHARS = jiwer.Compose([*_CLEAN, jiwer.ReduceToListOfListOfChars()])
"""Case and punctuation ignored, then words (WER) or characters (CER)."""


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
    p.add_argument(
        "--audio",
        nargs="+",
        type=Path,
        help="audio files instead of generated clips (FILE.txt beside one: its reference transcript)",
    )
    p.add_argument("--language", help="ISO-639-1 code forced on both sides (default: the model detects it)")
    args = p.parse_args()
    model_dir = checkpoint_dir(args.model, args.cache_dir)
    exact = Engine(model_dir, threads=args.threads, precision="exact")
    fast = Engine(model_dir, threads=args.threads, precision="fast", isa=args.isa)
    print(
        f"CPU: {cpu_model()}; model {model_dir.name}; exact: {exact.native.kernels}; fast: {fast.native.kernels}"
    )
    language = to_model_language(args.language, exact.supported_languages) if args.language else None
    if args.audio:
        clips = [(decode_audio(f.read_bytes()), reference_text(f)) for f in args.audio]
    else:
        clips = [
            (speech_like(args.seconds * (0.6 + 0.8 * (i % 4) / 3), seed=100 + i), None)
            for i in range(args.clips)
        ]
    steps: list[Step] = []
    for pcm, _ in clips:
        pcm = pcm[: TEACHER_FORCED_SECONDS * SAMPLE_RATE]  # one sequence, no chunks
        prompt = exact.prompt_ids(pcm.size, language=language)
        steps += teacher_forced(exact.native, fast.native, pcm, prompt, args.tokens)
    err = np.array([s.error for s in steps])
    margin = np.array([s.margin for s in steps])
    agree = np.array([s.agree for s in steps])
    clear = margin > 2 * np.percentile(err, 99)
    print(f"steps {len(steps)} over {len(clips)} clips")
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
    compare_transcripts(exact, fast, clips, language)
    exact.close()
    fast.close()


def reference_text(audio: Path) -> str | None:
    """FILE.txt beside FILE.wav (any audio extension), if there is one."""
    path = audio.with_suffix(".txt")
    return path.read_text(encoding="utf-8").strip() if path.exists() else None


def error_rates(reference: list[str], hypothesis: list[str]) -> str:
    """Word and character error rates (case and punctuation ignored; CER is what counts for
    languages written without spaces). Empty references are skipped."""
    pairs = [(r, h) for r, h in zip(reference, hypothesis, strict=True) if NORMALIZE([r])[0]]
    if not pairs:
        return "no words to compare"
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    wer = jiwer.wer(refs, hyps, reference_transform=NORMALIZE, hypothesis_transform=NORMALIZE)
    cer = jiwer.cer(refs, hyps, reference_transform=NORMALIZE_CHARS, hypothesis_transform=NORMALIZE_CHARS)
    return f"WER {wer:.2%}, CER {cer:.2%} over {len(pairs)} clips"


def compare_transcripts(
    exact: Engine, fast: Engine, clips: list[tuple[np.ndarray, str | None]], language: str | None
) -> None:
    """The whole transcripts, free-running: fast against exact, and each against the references."""
    texts = {
        name: [engine.transcribe(pcm, language=language).text for pcm, _ in clips]
        for name, engine in (("exact", exact), ("fast", fast))
    }
    same = sum(a == b for a, b in zip(texts["exact"], texts["fast"], strict=True))
    print(f"transcripts: fast equals exact in {same}/{len(clips)} clips; fast against exact: ", end="")
    print(error_rates(texts["exact"], texts["fast"]))
    refs = [(i, ref) for i, (_, ref) in enumerate(clips) if ref is not None]
    if refs:
        for name in ("exact", "fast"):
            hyps = [texts[name][i] for i, _ in refs]
            print(f"{name} against the references: {error_rates([r for _, r in refs], hyps)}")


if __name__ == "__main__":
    main()
