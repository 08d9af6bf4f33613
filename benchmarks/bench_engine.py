"""Engine speed and memory: libqwen against the official implementation, same run.

    .venv/bin/python benchmarks/bench_engine.py                     # full-size random 0.6B, 10 s, 2 threads
    .venv/bin/python benchmarks/bench_engine.py --preset full-1.7b
    .venv/bin/python benchmarks/bench_engine.py --model-dir models/qwen3-asr-0.6b   # real weights
    .venv/bin/python benchmarks/bench_engine.py --configs exact:avx2,fast:auto   # chosen columns
    .venv/bin/python benchmarks/bench_engine.py --configs "fast:auto,fast:auto@$(benchmarks/build_rev.sh main)" \
        --rounds 3 --skip-reference          # A/B: the working tree's library against main's

Columns: precision "exact" on every exact kernel set the CPU has, precision "fast" (int8 decoder
weights, bf16 encoder where the CPU has it), and the official implementation. Each runs in its own
subprocess (so peak RSS is its own) on the same checkpoint and the same audio, and reports mel,
encoder, prefill, per-token decode times at batch 1 and batch 8 (8 sequences advanced by one
step), the whole clip end to end (mel to the last of --tokens tokens), peak RSS and load time.
libqwen runs without its encoder-window and prompt-prefix caches, which would serve the repeats
from the first run. Each side first runs --warmup untimed passes: the official encoder of a 10 s
clip took 1.5-1.9 s in the first 2-4 calls of a process and 0.35-0.45 s from then on (2-core Xeon;
not explained: not denormals, not elapsed time), and timing it cold made it look 2-4x slower than
it runs in a server. The official encoder is timed inside the forward pass that also prefills
(hooks on its audio tower), so encoder and prefill split one measured pass. The official side is
qwen-asr's transformers backend in float32 (what runs on a CPU without bf16 matmul units); its
encoder attends across the whole clip (its sdpa path ignores the 8 s
windows), which for 10 s costs a little more than windows would.

--floor adds the bandwidth floor of `fast`'s batch-1 decode step, measured in the same process: the
bytes a step streams (the decoder's int8 linears with their scales, the LM head's 4-bit screen and
the blocks it rescores: fast_step_bytes) over the read rate of the int8 product of the LM head at M
= 1 on the engine's int8 table (bench_kernels, weights from DRAM), taken just before and just after
the timed runs (their mean), and decode / floor (issue 8's target without AMX: 1.2x). A shared
box's memory can move 2x within a minute (a Zen 5 read at 35-76 GB/s over 20 minutes), so the
floor has to come from the same seconds as the decode it judges. Beside each rate, how far apart
the two threads' cores were before and after the runs (bench_kernels -v cores: a cache line's
round trip): that Zen 5 read 57-75 GB/s when its two vCPUs sat on different CCDs (~400 ns apart),
where a step's hand-offs between its threads also cost more, and 35-46 GB/s on one CCD (~60-120
ns); two different figures mean the placement changed during the run.

A column `precision:isa@path` runs the libqwen at path (QWEN_LIBRARY; benchmarks/build_rev.sh builds
one of any git revision). With --rounds N every column runs N times, the columns taking turns
(A B A B ...: a busy minute of the machine falls on both), and each figure is the median of its N.
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
from typing import Any

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


def batch_step_ms(
    native: Any, pcm: np.ndarray, prompt: list[int], batch: int, steps: int, logprobs: int = 0
) -> float:
    """Median time of one decode step that advances `batch` sequences together (after all of
    them have been admitted: encoder and prefill done); the first `logprobs` of them ask for
    their tokens' log-probabilities."""
    seqs = [
        native.seq_add(pcm, prompt, max_new_tokens=4 * batch + steps + 8, eos_ids=[-1], logprobs=i < logprobs)
        for i in range(batch)
    ]
    started: set[int] = set()
    while len(started) < batch:  # admission: encoders and prefills, until each has its first token
        started.update(seq for seq, token, *_ in (native.step() or []) if token >= 0)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        events = native.step() or []
        times.append((time.perf_counter() - t0) * 1e3)
        assert len(events) == batch, "every sequence decodes in each step"
    for seq in seqs:
        native.seq_abort(seq)
    return sorted(times)[len(times) // 2]


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """--preset, --model-dir and --cache-dir: the checkpoint a benchmark runs on (checkpoint_dir)."""
    p.add_argument(
        "--preset", default="full-0.6b", help="checkpoint preset to generate (full-0.6b, full-1.7b)"
    )
    p.add_argument(
        "--model-dir", type=Path, default=None, help="use this checkpoint instead of generating one"
    )
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "qwen-bench")


def checkpoint_dir(args: argparse.Namespace) -> Path:
    """--model-dir, or the --preset generated once under --cache-dir (random weights, bf16)."""
    if args.model_dir is not None:
        return Path(args.model_dir)
    from qwen_serve.testing.checkpoint import make_checkpoint

    path = Path(args.cache_dir) / args.preset
    if not (path / "config.json").exists():
        print(f"generating {args.preset} into {path} ...", flush=True)
        make_checkpoint(path, preset=args.preset, seed=0, dtype="bf16")
    return path


def run_ours(args: argparse.Namespace) -> dict[str, float]:
    from qwen_serve.engine import Engine

    pcm = test_audio(args.seconds)
    precision, isa = args.config.split("@")[0].split(":")
    t0 = time.perf_counter()
    # No encoder-window or prompt-prefix cache: the repeats below would find the first run's
    # complete 8 s window and prompt prefix there and time only the rest (the official side
    # recomputes everything; with the caches a repeated 10 s clip's encoder took 41 ms, not 165).
    engine = Engine(
        args.model_dir,
        threads=args.threads,
        isa=isa,
        precision=precision,
        max_batch=8,
        encoder_cache_windows=-1,
        prefix_cache_tokens=-1,
    )
    load_s = time.perf_counter() - t0
    native = engine.native
    prompt = engine.prompt_ids(pcm.size)
    best: dict[str, float] = {}
    table = native.kernels.partition("int8 ")[2].split()[0] if "int8 " in native.kernels else ""
    rates: list[float] = []
    trips: list[float | None] = []
    for i in range(args.warmup + args.repeat):
        # --floor: the read rate just before the timed runs (and just after, below)
        if args.floor and table and i == args.warmup:
            rates.append(read_rate_gbs(args.threads, table))
            trips.append(cores_round_trip_ns(args.threads))
        # Never stop early: an id that cannot occur as the only stop token.
        t0 = time.perf_counter()
        tokens = list(native.generate(pcm, prompt, max_new_tokens=args.tokens, eos_ids=[-1]))
        wall_s = time.perf_counter() - t0
        assert len(tokens) == args.tokens
        run = {
            "end_to_end_s": wall_s,
            "mel_ms": native.timing("mel"),
            "encoder_ms": native.timing("encoder"),
            "prefill_ms": native.timing("prefill"),
            # the first token comes from the prefill logits; the rest are decode steps
            "decode_ms_per_token": native.timing("decode") / (args.tokens - 1),
        }
        if i >= args.warmup:
            best = {k: min(v, best.get(k, v)) for k, v in run.items()}
    if rates:
        rates.append(read_rate_gbs(args.threads, table))
        trips.append(cores_round_trip_ns(args.threads))
        best["read_rate_gbs"] = float(np.mean(rates))
        if trips[0] is not None and trips[1] is not None:  # before and after: a change between shows
            best["cores_ns_before"], best["cores_ns_after"] = trips[0], trips[1]
        best["step_gb"] = fast_step_bytes(args.model_dir, native.context_info("head_blocks")) / 1e9
        best["floor_ms"] = best["step_gb"] / best["read_rate_gbs"] * 1e3
        best["over_floor"] = best["decode_ms_per_token"] / best["floor_ms"]
    rss = peak_rss_mb()  # before the batch part: its 8 KV caches are not the single request's
    short = engine.prompt_ids(test_audio(5.0).size)
    best["decode8_ms_per_token"] = batch_step_ms(native, test_audio(5.0), short, 8, 8) / 8
    best.update(load_s=load_s, prompt_tokens=len(prompt), peak_rss_mb=rss, kernels=native.kernels)  # type: ignore[dict-item]
    library = args.config.partition("@")[2]
    best["label"] = f"{precision} {native.kernels}" + (f" @{library}" if library else "")  # type: ignore[assignment]
    engine.close()
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
    # The encoder is timed inside the forward pass that also prefills (hooks on the audio tower), so
    # encoder and prefill split one measured pass: timed as separate calls, this shared box's swings
    # between them once made the derived prefill negative.
    marks: list[float] = []
    tower = model.thinker.audio_tower
    tower.register_forward_pre_hook(lambda module, inputs: marks.append(time.perf_counter()))
    tower.register_forward_hook(lambda module, inputs, output: marks.append(time.perf_counter()))
    best: dict[str, float] = {}
    with torch.inference_mode():
        for i in range(args.warmup + args.repeat):
            t_start = t0 = time.perf_counter()
            inputs = processor(text=[text], audio=[pcm], return_tensors="pt", padding=True)
            mel_ms = (time.perf_counter() - t0) * 1e3
            # The forward pass generate() starts with: encoder + prefill of the whole prompt.
            marks.clear()
            t0 = time.perf_counter()
            out = model.thinker(**inputs, use_cache=True)
            forward_ms = (time.perf_counter() - t0) * 1e3
            encoder_ms = sum(end - start for start, end in zip(marks[::2], marks[1::2], strict=True)) * 1e3
            prefill_ms = forward_ms - encoder_ms
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
                "end_to_end_s": time.perf_counter() - t_start,
                "mel_ms": mel_ms,
                "encoder_ms": encoder_ms,
                "prefill_ms": prefill_ms,
                "decode_ms_per_token": decode_ms,
            }
            if i >= args.warmup:
                best = {k: min(v, best.get(k, v)) for k, v in run.items()}
    best.update(load_s=load_s, prompt_tokens=int(inputs["input_ids"].shape[1]), peak_rss_mb=peak_rss_mb())
    return best


def fast_step_bytes(model_dir: Path, head_blocks: int) -> int:
    """Bytes of weights one batch-1 decode step of `fast` reads (quant.h's layouts, qw_q8_sizes /
    qw_q4_sizes): every decoder linear in int8 (K padded to 4) with a bf16 scale per 64 k (its
    zsum is not read by steps of up to 16 rows), and the LM head through its 4-bit screen (half a
    byte a weight, the same scales) plus the head_blocks blocks of 16 rows it rescores in int8
    (the context's info "head_blocks"; 0: no screen, the whole int8 head every step).
    Norms, biases and the one embedding row are left out (a few KB)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    t = cfg.get("thinker_config", cfg).get("text_config", cfg)
    hidden, inter, vocab = t["hidden_size"], t["intermediate_size"], t["vocab_size"]
    hd = t.get("head_dim") or hidden // t["num_attention_heads"]
    nq, nkv = t["num_attention_heads"] * hd, t["num_key_value_heads"] * hd

    def scales(n: int, k: int) -> int:
        return -(-n // 16) * 16 * -(-k // 64) * 2

    def int8(n: int, k: int) -> int:
        return -(-n // 16) * 16 * ((k + 3) & ~3) + scales(n, k)

    shapes = [(nq, hidden), (nkv, hidden), (nkv, hidden), (hidden, nq), (inter, hidden), (inter, hidden)]
    layer = sum(int8(n, k) for n, k in shapes + [(hidden, inter)])
    if head_blocks:
        head = -(-vocab // 16) * 16 * hidden // 2 + scales(vocab, hidden) + int8(16 * head_blocks, hidden)
    else:
        head = int8(vocab, hidden)
    return t["num_hidden_layers"] * layer + head


KERNELS_BENCH = Path(__file__).resolve().parents[1] / "build" / "kernels-bench" / "bench_kernels"


def build_kernels_bench() -> None:
    """Builds benchmarks/bench_kernels.c (bench_kernels.sh, with a variant that times nothing)."""
    script = Path(__file__).with_name("bench_kernels.sh")
    subprocess.run(["bash", str(script), "-v", "none"], capture_output=True, text=True, check=True)


def read_rate_gbs(threads: int, table: str) -> float:
    """GB/s of the int8 product of the LM head at M = 1 on the engine's int8 table, weights from DRAM
    (bench_kernels -v int8 -m 1 -n 151936 -q table: about 5 s, the fastest of its rounds)."""
    cmd = [
        str(KERNELS_BENCH),
        "-t",
        str(threads),
        "-q",
        table,
        "-v",
        "int8",
        "-m",
        "1",
        "-n",
        "151936",
        "-s",
        "0.5",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rates = [float(x.split()[-2]) for x in out.splitlines() if x.startswith("int8 ")]
    if not rates:
        raise SystemExit("bench_kernels printed no int8 line:\n" + out[-2000:])
    return rates[0]


def cores_round_trip_ns(threads: int) -> float | None:
    """The round trip of a cache line between two threads (bench_kernels -v cores, ~0.2 s): ~50-120 ns
    where the cores share an L3, ~400 across the CCDs of an EPYC, where a step's hand-offs cost more."""
    if threads < 2:
        return None
    out = subprocess.run(
        [str(KERNELS_BENCH), "-t", "2", "-v", "cores"], capture_output=True, text=True
    ).stdout
    trips = [float(x.split()[3]) for x in out.splitlines() if x.startswith("cores  round trip")]
    return trips[0] if trips else None


def worker_main(args: argparse.Namespace) -> None:
    result = run_ours(args) if args.worker == "ours" else run_reference(args)
    print("RESULT " + json.dumps(result))


def spawn(args: argparse.Namespace, which: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", which, "--model-dir", str(args.model_dir)]
    cmd += ["--seconds", str(args.seconds), "--threads", str(args.threads), "--tokens", str(args.tokens)]
    cmd += ["--repeat", str(args.repeat), "--warmup", str(args.warmup), "--config", args.config]
    cmd += ["--floor"] if args.floor else []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    library = args.config.partition("@")[2] if which == "ours" else ""
    if library:
        env["QWEN_LIBRARY"] = library
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{which} worker failed")
    return json.loads(lines[-1][len("RESULT ") :])


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each numeric figure's median over a column's runs (the rest from its first run)."""
    out = dict(runs[0])
    for k, v in out.items():
        if isinstance(v, float):
            out[k] = float(np.median([r[k] for r in runs]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=32, help="decode steps to time")
    p.add_argument("--repeat", type=int, default=2, help="timed runs per side; the best is kept")
    p.add_argument(
        "--warmup",
        type=int,
        default=4,
        help="untimed runs per side first (the official encoder took 1.5-1.9 s in its first 2-4 calls "
        "of a process, then 0.35-0.45 s)",
    )
    p.add_argument(
        "--configs",
        default="all",
        help="precision:isa columns, comma-separated (exact:avx512,fast:auto); all = exact on every "
        "exact kernel set the CPU has, then fast:auto",
    )
    p.add_argument("--config", default="exact:auto", help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=1, help="runs of every column, taking turns; medians")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument(
        "--floor",
        action="store_true",
        help="time the int8 LM head product just before and after fast's timed runs (about 5 s each) "
        "and add fast's batch-1 decode floor and decode / floor",
    )
    p.add_argument("--worker", choices=["ours", "ref"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker_main(args)
        return
    args.model_dir = checkpoint_dir(args)
    print(
        f"checkpoint {args.model_dir}, {args.seconds:g} s audio, {args.threads} threads, {args.tokens} tokens"
    )
    if args.configs == "all":
        from qwen_serve.engine._native import exact_isas

        args.configs = ",".join([f"exact:{i}" for i in exact_isas() if i != "scalar"] + ["fast:auto"])
    from bench_serve import cpu_model

    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs")
    configs = args.configs.split(",")
    runs: list[list[dict[str, Any]]] = [[] for _ in configs]
    if args.floor:
        build_kernels_bench()
    for _ in range(args.rounds):  # one worker per column and round, the columns taking turns
        for i, config in enumerate(configs):
            runs[i].append(spawn(argparse.Namespace(**{**vars(args), "config": config}), "ours"))
    for r in runs:
        if "over_floor" in r[0]:
            print(
                f"{r[0]['label']}: a step reads {r[0]['step_gb']:.3f} GB; decode / floor "
                + ", ".join(
                    f"{x['decode_ms_per_token']:.2f} / {x['floor_ms']:.2f} ms ({x['read_rate_gbs']:.1f} GB/s"
                    + (
                        f", cores {x['cores_ns_before']:.0f}/{x['cores_ns_after']:.0f} ns apart)"
                        if "cores_ns_before" in x
                        else ")"
                    )
                    for x in r
                )
            )
    ours = [median_run(r) for r in runs]
    if args.rounds > 1:
        for o, r in zip(ours, runs, strict=True):
            print(f"{o['label']}: end to end " + ", ".join(f"{x['end_to_end_s']:.3f}" for x in r) + " s")
    ref = None if args.skip_reference else spawn(args, "ref")
    rows = [
        ("mel", "mel_ms", "ms"),
        ("encoder", "encoder_ms", "ms"),
        ("prefill", "prefill_ms", "ms"),
        ("decode / token", "decode_ms_per_token", "ms"),
        ("decode / tok, b8", "decode8_ms_per_token", "ms"),
        *(
            [("decode floor, b1", "floor_ms", "ms"), ("decode / floor", "over_floor", "x")]
            if args.floor
            else []
        ),
        ("end to end", "end_to_end_s", "s"),
        ("peak RSS", "peak_rss_mb", "MB"),
        ("load", "load_s", "s"),
    ]
    print(
        f"\nprompt {ours[0]['prompt_tokens']} tokens; speed-up = official / libqwen (official: batch 1 only)"
    )
    head = ["stage"] + [str(o["label"]) for o in ours]
    if ref is not None:
        head += ["official (PyTorch f32)"] + [f"speed-up, {o['label']}" for o in ours]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))

    def cell(v: Any, unit: str) -> str:
        if v is None:
            return "-"
        if unit == "x":
            return f"{float(v):.2f}x"
        return f"{float(v):.2f} {unit}" if unit == "s" else f"{float(v):.1f} {unit}"

    for label, key, unit in rows:
        cells = [label] + [cell(o.get(key), unit) for o in ours]
        if ref is not None:
            b = ref.get(key)
            cells += [cell(b, unit)]
            cells += [
                f"{float(b) / float(o[key]):.2f}x" if b is not None and o.get(key) else "-" for o in ours
            ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
