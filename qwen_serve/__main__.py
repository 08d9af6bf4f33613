"""Command line.

python -m qwen_serve transcribe --model-dir DIR FILE ...   # transcribe files with a local checkpoint
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
    from qwen_serve.engine import Engine

    with Engine(args.model_dir, threads=args.threads, isa=args.isa) as engine:
        for name in args.files:
            pcm = read_audio(Path(name))
            if args.stream:
                stream = engine.stream(
                    pcm, language=args.language, context=args.context, max_new_tokens=args.max_new_tokens
                )
                for delta in stream:
                    print(delta, end="", flush=True)
                print()
                result = stream.result
            else:
                result = engine.transcribe(
                    pcm, language=args.language, context=args.context, max_new_tokens=args.max_new_tokens
                )
            assert result is not None
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
                        },
                        ensure_ascii=False,
                    )
                )
            elif not args.stream:
                print(result.text)
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
    t.add_argument("--isa", default="auto", choices=["auto", "scalar", "avx2", "avx512", "avx512bf16", "neon"])
    t.add_argument("--max-new-tokens", type=int, default=None)
    t.add_argument("--stream", action="store_true", help="print text as it is decoded")
    t.add_argument("--json", action="store_true", help="print one JSON object per file")
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
