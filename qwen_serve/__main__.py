"""Command line.

python -m qwen_serve transcribe --model-dir DIR FILE ...   # transcribe files with a local checkpoint
python -m qwen_serve transcribe --model-dir DIR --precision exact FILE   # ... the official's tokens (f32)
python -m qwen_serve transcribe --model-dir DIR --aligner-dir ALIGNER --words FILE   # ... with word times
python -m qwen_serve transcribe --model-dir DIR --logprobs FILE   # ... with each token's log-probability
python -m qwen_serve download [MODEL ...] [--if-missing]   # fetch Qwen/Qwen3-ASR-* into ./models
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def read_audio(path: Path) -> np.ndarray:
    """A file as 16 kHz mono float32 (the service's decoder when installed, else soundfile)."""
    try:
        from qwen_serve.audio_decoding import decode_audio  # PyAV-backed: M4A, WebM, ... (the serve extra)
    except ImportError:
        pass
    else:
        return decode_audio(path.read_bytes())
    import soundfile as sf
    import soxr

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if rate != 16000:
        mono = soxr.resample(mono, rate, 16000)
    return np.ascontiguousarray(mono, dtype=np.float32)


def cmd_transcribe(args: argparse.Namespace) -> int:
    import contextlib

    from qwen_serve.engine import Aligner, Engine

    if args.words and not args.aligner_dir:
        raise ValueError("--words needs --aligner-dir (a Qwen3-ForcedAligner checkpoint)")
    with contextlib.ExitStack() as stack:
        engine = stack.enter_context(
            Engine(args.model_dir, threads=args.threads, isa=args.isa, precision=args.precision)
        )
        aligner = (
            stack.enter_context(
                Aligner(args.aligner_dir, threads=args.threads, isa=args.isa, precision=args.precision)
            )
            if args.words
            else None
        )
        for name in args.files:
            pcm = read_audio(Path(name))
            if args.stream:
                stream = engine.stream(
                    pcm,
                    language=args.language,
                    context=args.context,
                    max_new_tokens=args.max_new_tokens,
                    logprobs=args.logprobs,
                )
                for delta in stream:
                    print(delta, end="", flush=True)
                print()
                result = stream.result
            else:
                result = engine.transcribe(
                    pcm,
                    language=args.language,
                    context=args.context,
                    max_new_tokens=args.max_new_tokens,
                    logprobs=args.logprobs,
                )
            assert result is not None
            words = aligner.align_transcription(pcm, result) if aligner is not None else None
            if args.json:
                print(
                    json.dumps(
                        {
                            "file": name,
                            "text": result.text,
                            "language": result.language,
                            "duration": result.duration,
                            "usage": {
                                "input_tokens": result.usage.input_tokens,
                                "output_tokens": result.usage.output_tokens,
                            },
                            "timings_ms": vars(result.timings),
                            **(
                                {"words": [{"word": w.word, "start": w.start, "end": w.end} for w in words]}
                                if words is not None
                                else {}
                            ),
                            **(
                                {
                                    "logprobs": [
                                        {"token": t.token, "logprob": t.logprob} for t in result.logprobs
                                    ]
                                }
                                if result.logprobs is not None
                                else {}
                            ),
                        },
                        ensure_ascii=False,
                    )
                )
            elif not args.stream:
                print(result.text)
            if words is not None and not args.json:
                for w in words:
                    print(f"{w.start:8.3f} {w.end:8.3f}  {w.word}")
            if result.logprobs is not None and not args.json:
                for t in result.logprobs:
                    print(f"{t.logprob:10.5f}  {t.token!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["download"]:  # its own parser: qwen_serve.download
        from qwen_serve.download import main as download_main

        return download_main(argv[1:])
    if argv[:1] == ["serve"]:  # its own parser: qwen_serve.app
        from qwen_serve.app import main as serve_main

        return serve_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="qwen-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("download", help="fetch the checkpoints from Hugging Face (see `download --help`)")
    sub.add_parser("serve", help="start the service from serve_config.yaml (see `serve --help`)")
    t = sub.add_parser("transcribe", help="transcribe audio files with a local checkpoint")
    t.add_argument("--model-dir", required=True, help="Hugging Face checkpoint directory")
    t.add_argument("--language", default=None, help='force a language, e.g. "English"')
    t.add_argument("--context", default="", help="context / prompt text for the model")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument(
        "--isa", default="auto", choices=["auto", "scalar", "avx2", "avx512", "avx512bf16", "neon"]
    )
    t.add_argument(
        "--precision",
        default="fast",
        choices=["fast", "exact"],
        help="fast (the service's default: int8 decoder weights, bf16 encoder where the CPU has it) "
        "or exact (f32: the official implementation's tokens)",
    )
    t.add_argument("--max-new-tokens", type=int, default=None)
    t.add_argument("--stream", action="store_true", help="print text as it is decoded")
    t.add_argument("--json", action="store_true", help="print one JSON object per file")
    t.add_argument(
        "--aligner-dir", default=None, help="Qwen3-ForcedAligner checkpoint directory (for --words)"
    )
    t.add_argument("--words", action="store_true", help="word timestamps (start, end in seconds, word)")
    t.add_argument(
        "--logprobs", action="store_true", help="each text token's log-probability (logprob, token)"
    )
    t.add_argument("files", nargs="+")
    t.set_defaults(func=cmd_transcribe)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
