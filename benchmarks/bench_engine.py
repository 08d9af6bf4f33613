"""Engine speed and memory: libqwen against the official implementation, same run.

    .venv/bin/python benchmarks/bench_engine.py                     # full-size random 0.6B, 10 s, 2 threads
    .venv/bin/python benchmarks/bench_engine.py --preset full-1.7b
    .venv/bin/python benchmarks/bench_engine.py --model-dir models/qwen3-asr-0.6b   # real weights
    .venv/bin/python benchmarks/bench_engine.py --isa auto,avx512bf16   # several kernel sets, one column each

Each side runs in its own subprocess (so peak RSS is its own) on the same
checkpoint and the same audio, and reports mel, encoder, prefill and
per-token decode times. The official side is qwen-asr's transformers
backend in float32 (what runs on a CPU without bf16 matmul units); its
encoder attends across the whole clip (its sdpa path ignores the 8 s
windows), which for 10 s costs a little more than windows would.
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

import numpy as np

SAMPLE_RATE = 16000


def test_audio(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    voice = (
        np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 280 * t) + 0.25 * np.sin(2 * np.pi * 420 * t)
    )
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.2 * voice * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). ru_maxrss would include the parent's
    RSS at fork time: it survives execve."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_ours(args: argparse.Namespace) -> dict[str, float]:
    from qwen_serve.engine import Engine

    pcm = test_audio(args.seconds)
    t0 = time.perf_counter()
    engine = Engine(args.model_dir, threads=args.threads, isa=args.isa)
    load_s = time.perf_counter() - t0
    native = engine.native
    prompt = engine.prompt_ids(pcm.size)
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        # Never stop early: an id that cannot occur as the only stop token.
        tokens = list(native.generate(pcm, prompt, max_new_tokens=args.tokens, eos_ids=[-1]))
        assert len(tokens) == args.tokens
        run = {
            "mel_ms": native.timing("mel"),
            "encoder_ms": native.timing("encoder"),
            "prefill_ms": native.timing("prefill"),
            # the first token comes from the prefill logits; the rest are decode steps
            "decode_ms_per_token": native.timing("decode") / (args.tokens - 1),
        }
        best = {k: min(v, best.get(k, v)) for k, v in run.items()}
    best.update(load_s=load_s, prompt_tokens=len(prompt), peak_rss_mb=peak_rss_mb(), isa=native.isa)  # type: ignore[dict-item]
    return best


def run_reference(args: argparse.Namespace) -> dict[str, float]:
    import torch
    from qwen_asr.core.transformers_backend import (
        Qwen3ASRForConditionalGeneration,
        Qwen3ASRProcessor,
    )

    torch.set_num_threads(args.threads)
    pcm = test_audio(args.seconds)
    t0 = time.perf_counter()
    model = Qwen3ASRForConditionalGeneration.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    processor = Qwen3ASRProcessor.from_pretrained(args.model_dir)
    load_s = time.perf_counter() - t0
    messages = [
        {"role": "system", "content": ""},
        {"role": "user", "content": [{"type": "audio", "audio": ""}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    best: dict[str, float] = {}
    with torch.inference_mode():
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            inputs = processor(text=[text], audio=[pcm], return_tensors="pt", padding=True)
            mel_ms = (time.perf_counter() - t0) * 1e3
            feats = inputs["input_features"][0]
            n_frames = int(inputs["feature_attention_mask"].sum())
            t0 = time.perf_counter()
            model.thinker.audio_tower(feats[:, :n_frames], feature_lens=torch.tensor([n_frames]))
            encoder_ms = (time.perf_counter() - t0) * 1e3
            # The forward pass generate() starts with: encoder + prefill of the whole prompt.
            t0 = time.perf_counter()
            out = model.thinker(**inputs, use_cache=True)
            prefill_ms = (time.perf_counter() - t0) * 1e3 - encoder_ms
            # Then one forward per token on the KV cache, as generate() runs it.
            cache, n = out.past_key_values, int(inputs["input_ids"].shape[1])
            token = out.logits[:, -1:].argmax(-1)
            t0 = time.perf_counter()
            for i in range(args.tokens - 1):
                step = model.thinker(
                    input_ids=token,
                    past_key_values=cache,
                    use_cache=True,
                    cache_position=torch.tensor([n + i]),
                    attention_mask=torch.ones(1, n + i + 1, dtype=torch.long),
                )
                cache, token = step.past_key_values, step.logits[:, -1:].argmax(-1)
            decode_ms = (time.perf_counter() - t0) * 1e3 / (args.tokens - 1)
            run = {
                "mel_ms": mel_ms,
                "encoder_ms": encoder_ms,
                "prefill_ms": prefill_ms,
                "decode_ms_per_token": decode_ms,
            }
            best = {k: min(v, best.get(k, v)) for k, v in run.items()}
    best.update(load_s=load_s, prompt_tokens=int(inputs["input_ids"].shape[1]), peak_rss_mb=peak_rss_mb())
    return best


def worker_main(args: argparse.Namespace) -> None:
    result = run_ours(args) if args.worker == "ours" else run_reference(args)
    print("RESULT " + json.dumps(result))


def spawn(args: argparse.Namespace, which: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", which, "--model-dir", str(args.model_dir)]
    cmd += ["--seconds", str(args.seconds), "--threads", str(args.threads), "--tokens", str(args.tokens)]
    cmd += ["--repeat", str(args.repeat), "--isa", args.isa]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{which} worker failed")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset", default="full-0.6b", help="checkpoint preset to generate (full-0.6b, full-1.7b)"
    )
    p.add_argument(
        "--model-dir", type=Path, default=None, help="use this checkpoint instead of generating one"
    )
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "qwen-bench")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=32, help="decode steps to time")
    p.add_argument("--repeat", type=int, default=2, help="runs per side; the best is kept")
    p.add_argument("--isa", default="auto", help="kernel set(s), comma-separated: auto,avx512bf16")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--worker", choices=["ours", "ref"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker_main(args)
        return
    if args.model_dir is None:
        from qwen_serve.testing.checkpoint import make_checkpoint

        args.model_dir = args.cache_dir / args.preset
        if not (args.model_dir / "config.json").exists():
            print(f"generating {args.preset} into {args.model_dir} ...", flush=True)
            make_checkpoint(args.model_dir, preset=args.preset, seed=0, dtype="bf16")
    print(
        f"checkpoint {args.model_dir}, {args.seconds:g} s audio, {args.threads} threads, {args.tokens} tokens"
    )
    ours = []
    for isa in args.isa.split(","):  # one worker per kernel set, one after another
        ours.append(spawn(argparse.Namespace(**{**vars(args), "isa": isa}), "ours"))
    ref = None if args.skip_reference else spawn(args, "ref")
    rows = [
        ("mel", "mel_ms", "ms"),
        ("encoder", "encoder_ms", "ms"),
        ("prefill", "prefill_ms", "ms"),
        ("decode / token", "decode_ms_per_token", "ms"),
        ("peak RSS", "peak_rss_mb", "MB"),
        ("load", "load_s", "s"),
    ]
    print(f"\nprompt {ours[0]['prompt_tokens']} tokens; speed-up = official / libqwen")
    header = f"{'stage':<16}" + "".join(f"{'libqwen ' + str(o['isa']):>20}" for o in ours)
    if ref is not None:
        header += f"{'official':>14}" + "".join(f"{'speed-up':>10}" for _ in ours)
    print(header)
    for label, key, unit in rows:
        line = f"{label:<16}" + "".join(f"{float(o[key]):>17.1f} {unit:<2}" for o in ours)
        if ref is not None:
            b = float(ref[key])
            line += f"{b:>11.1f} {unit:<2}" + "".join(f"{b / float(o[key]):>9.2f}x" for o in ours)
        print(line)

if __name__ == "__main__":
    main()
