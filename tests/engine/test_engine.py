"""Engine on tiny checkpoints: results, streaming, usage, errors, life cycle."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from qwen_serve.engine import Engine
from qwen_serve.engine._native import (
    AbortedError,
    NativeModel,
    best_isa,
    exact_isas,
    library_path,
    load_library,
)
from qwen_serve.testing.clips import speech_like
from qwen_serve.testing.precision import greedy, teacher_forced


@pytest.fixture(scope="module")
def engine(tiny_dir: Path):
    with Engine(tiny_dir, threads=2) as e:
        yield e


def test_transcribe_shape(engine: Engine) -> None:
    pcm = speech_like(2.0)
    r = engine.transcribe(pcm, max_new_tokens=16)
    assert 1 <= len(r.token_ids) <= 16
    assert r.usage.output_tokens == len(r.token_ids)
    assert r.usage.audio_tokens == engine.native.audio_token_count(pcm.size) == 26
    assert r.usage.input_tokens == len(engine.prompt_ids(pcm.size))
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.duration == pytest.approx(2.0)
    assert len(r.segments) == 1 and r.segments[0].end == pytest.approx(2.0)
    assert r.timings.encoder_ms > 0 and r.timings.prefill_ms > 0 and r.timings.total_ms > 0
    # The text is the decoded, parsed answer.
    raw = engine.tokenizer.decode(r.token_ids, skip_special_tokens=True)
    from qwen_serve.engine.text import parse_output

    assert (r.language or "", r.text) == parse_output(raw)


def test_stream_equals_transcribe(engine: Engine) -> None:
    pcm = speech_like(3.0, seed=1)
    whole = engine.transcribe(pcm, max_new_tokens=24)
    stream = engine.stream(pcm, max_new_tokens=24)
    deltas = list(stream)
    assert stream.result is not None
    assert "".join(deltas) == stream.result.text == whole.text
    assert stream.result.token_ids == whole.token_ids
    assert all(d for d in deltas)  # no empty deltas


def test_deterministic_and_two_engines(tiny_dir: Path, engine: Engine) -> None:
    pcm = speech_like(1.5, seed=2)
    with Engine(tiny_dir, threads=1) as other:
        a = engine.transcribe(pcm, max_new_tokens=12)
        b = other.transcribe(pcm, max_new_tokens=12)
    assert a.token_ids == b.token_ids


def test_forced_language_prompt(engine: Engine) -> None:
    text = engine.prompt_text(3, context="ctx here", language="English")
    assert text.endswith("<|im_start|>assistant\nlanguage English<asr_text>")
    assert "<|im_start|>system\nctx here<|im_end|>" in text
    assert text.count("<|audio_pad|>") == 3
    r = engine.transcribe(speech_like(1.0), language="english", max_new_tokens=8)
    assert r.language == "English"
    with pytest.raises(ValueError, match="unsupported language"):
        engine.transcribe(speech_like(1.0), language="Klingon")


def test_context_changes_prompt(engine: Engine) -> None:
    assert len(engine.prompt_ids(16000, context="some words here")) > len(engine.prompt_ids(16000))


def test_bad_input(engine: Engine) -> None:
    with pytest.raises(ValueError):
        engine.transcribe(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(ValueError):
        engine.transcribe(np.array([0.0, np.nan] * 1000, dtype=np.float32))
    with pytest.raises(ValueError):
        engine.transcribe(speech_like(1.0), max_new_tokens=0)
    # Audio shorter than one mel frame has nothing to hear.
    r = engine.transcribe(np.zeros(100, dtype=np.float32))
    assert r.text == "" and r.token_ids == [] and r.usage.input_tokens == 0


def test_stream_close_stops_and_engine_recovers(engine: Engine) -> None:
    pcm = speech_like(2.0, seed=3)
    stream = engine.stream(pcm, max_new_tokens=32)
    stream.close()
    assert stream.result is None
    r = engine.transcribe(pcm, max_new_tokens=8)
    assert len(r.token_ids) >= 1


def test_abort_from_another_thread(tiny_dir: Path) -> None:
    with NativeModel(tiny_dir, threads=1) as m:
        pcm = speech_like(4.0)
        n = m.audio_token_count(pcm.size)
        ids = [m.info("audio_start_token_id")] + [m.audio_token_id] * n + [m.info("audio_end_token_id")]
        flag = threading.Event()
        flag.set()
        with pytest.raises(AbortedError):
            list(m.generate(pcm, ids, max_new_tokens=8, should_abort=flag.is_set))
        # The context is usable after an abort.
        assert len(list(m.generate(pcm, ids, max_new_tokens=3, eos_ids=[-1]))) == 3


def test_long_audio_is_chunked(tiny_dir: Path) -> None:
    with Engine(tiny_dir, threads=2, max_chunk_seconds=4.0) as e:
        pcm = speech_like(10.0, seed=4)
        r = e.transcribe(pcm, max_new_tokens=6)
        assert len(r.segments) >= 2
        assert r.segments[0].start == 0.0 and r.segments[-1].end == pytest.approx(10.0, abs=0.6)
        assert r.token_ids == [t for s in r.segments for t in s.token_ids]
        stream = e.stream(pcm, max_new_tokens=6)
        assert "".join(stream) == r.text


@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_encoder_windows_in_one_pass_give_the_same_bits(tiny_dir: Path, precision: str) -> None:
    """A pass over several encoder windows (a request alone) gives every window the bits it gets in
    a pass of its own (a request admitted while others decode), on every exact kernel set and fast."""
    pcm = speech_like(19.0, seed=5)  # 8 + 8 + 3 s
    for isa in exact_isas() if precision == "exact" else ["auto"]:
        got = []
        for per_pass in (1, 3):
            with NativeModel(
                tiny_dir, threads=2, isa=isa, precision=precision, encoder_windows_per_pass=per_pass
            ) as m:
                got.append(m.encode(pcm))
                shape = (m.audio_token_count(pcm.size), m.info("output_dim"))
        assert got[0].shape == shape, isa
        assert np.array_equal(got[0], got[1]), isa


def test_two_builds_in_one_process(tiny_dir: Path, tmp_path: Path) -> None:
    """NativeModel(library=) runs on the build at that path beside the default one (benchmarks/bench_ab.py
    times two builds this way): a copy of the library is loaded apart and decodes the same tokens; a
    path with no library is a FileNotFoundError that names it."""
    import shutil

    copy = tmp_path / "b" / library_path().name
    copy.parent.mkdir()
    shutil.copy(library_path(), copy)
    assert load_library(copy) is not load_library() and load_library(copy) is load_library(copy)
    pcm = speech_like(2.0, seed=7)
    tokens = []
    for library in (None, copy):
        with NativeModel(tiny_dir, threads=2, library=library) as m:
            prompt = [m.info("audio_start_token_id")] + [m.audio_token_id] * m.audio_token_count(pcm.size)
            tokens.append(greedy(m, pcm, prompt + [m.info("audio_end_token_id")], 8)[0])
    assert tokens[0] == tokens[1] and len(tokens[0]) == 8
    with pytest.raises(FileNotFoundError, match="nope"):
        NativeModel(tiny_dir, library=tmp_path / "nope" / "libqwen.so")


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Engine(tmp_path / "nope")


def test_stage_calls_after_runs(tiny_dir: Path) -> None:
    """A finished or closed run leaves no stale abort callback behind (this crashed once)."""
    import gc

    with Engine(tiny_dir, threads=2) as e:
        pcm = speech_like(1.0)
        e.transcribe(pcm, max_new_tokens=4)
        stream = e.stream(pcm, max_new_tokens=8)
        next(iter(stream), None)
        stream.close()
        del stream
        gc.collect()
        for _ in range(3):
            assert e.native.encode(speech_like(5.0)).shape[0] == 65
            assert e.native.mel(pcm).shape == (128, 100)


def test_stream_never_splits_utf8(tiny_dirs: dict[str, Path]) -> None:
    """tiny-1.7b answers with CJK, Thai and other multi-byte tokens: every delta is whole text."""
    with Engine(tiny_dirs["tiny-1.7b"], threads=2) as e:
        seen_multibyte = False
        for seed in range(3):
            pcm = speech_like(2.0 + seed, seed=seed)
            stream = e.stream(pcm, max_new_tokens=24)
            deltas = list(stream)
            assert stream.result is not None
            assert "".join(deltas) == stream.result.text
            assert all("\ufffd" not in d for d in deltas)
            seen_multibyte |= any(len(d.encode()) > len(d) for d in deltas)
        assert seen_multibyte  # the check above was exercised


def test_bf16_kernel_set_is_opt_in(tiny_dir: Path) -> None:
    """avx512bf16 is never chosen by auto; where the CPU lacks it, asking for it is a clear error,
    and where it has it, the encoder agrees with the f32 kernels to bf16 precision."""
    flags = Path("/proc/cpuinfo").read_text().split()
    with NativeModel(tiny_dir) as auto:
        assert auto.isa != "avx512bf16"
        reference = auto.encode(speech_like(5.0))
    if "avx512_bf16" not in flags or "avx512bw" not in flags:
        with pytest.raises(ValueError, match="not supported by this CPU"):
            NativeModel(tiny_dir, isa="avx512bf16")
        return
    with NativeModel(tiny_dir, isa="avx512bf16") as bf:
        assert bf.isa == "avx512bf16"
        out = bf.encode(speech_like(5.0))
    assert np.abs(out - reference).max() <= 2e-2 * np.abs(reference).max()


def test_kernel_sets_of_another_architecture_are_refused(tiny_dir: Path) -> None:
    """neon on x86-64 and the x86 sets on AArch64 are clear errors, never a crash."""
    other = "avx2" if best_isa() == "neon" else "neon"
    with pytest.raises(ValueError, match=f"kernel set '{other}' is not supported by this CPU"):
        NativeModel(tiny_dir, isa=other)
    with NativeModel(tiny_dir, isa="auto") as auto:
        assert auto.isa == best_isa() and auto.isa in exact_isas()


def test_fast_precision_is_close_to_exact(tiny_dir: Path, engine: Engine) -> None:
    """precision="fast" (int8 decoder linears and LM head) stays within quantization noise of "exact": every
    step's logits within 15% of the exact logits' spread (measured on 512 steps: at most 10%, README), and
    the same greedy token wherever the exact top-2 margin is clear of that noise. Teacher-forced:
    after a differing token the fast model restarts from the exact prefix."""
    with NativeModel(tiny_dir, precision="fast") as fast:
        assert fast.precision == "fast" and "int8" in fast.kernels
        assert engine.native.precision == "exact" and "int8" not in engine.native.kernels
        compared = clear = 0
        for i, seconds in enumerate((1.5, 4.0, 9.0)):  # 9 s: two encoder windows
            pcm = speech_like(seconds, seed=10 + i)
            for t, step in enumerate(
                teacher_forced(engine.native, fast, pcm, engine.prompt_ids(pcm.size), 12)
            ):
                assert step.error <= 0.15, (seconds, t)
                if step.margin > 0.3:
                    assert step.agree, (seconds, t)
                    clear += 1
                compared += 1
        assert compared == 36 and clear > 0


def test_fast_precision_int8_tables_agree(tiny_dir: Path) -> None:
    """With the encoder on the same exact kernels, every int8 table gives the scalar table's
    tokens, and logits that differ only by the f32 encoder's rounding (the int8 products are
    bitwise equal across tables: native/tests/test_quant.c). The int8 KV cache turns that
    rounding (~1e-6) into whole quantization steps where a value sits at a rounding boundary
    (a step is 1/127 of its block's largest value): 0.8% of the largest logit seen, so 2% here."""
    pcm = speech_like(3.0, seed=3)
    results = {}
    for isa in exact_isas():
        with NativeModel(tiny_dir, isa=isa, precision="fast") as m:
            prompt = [m.info("audio_start_token_id")] + [m.audio_token_id] * m.audio_token_count(pcm.size)
            prompt.append(m.info("audio_end_token_id"))
            results[isa] = greedy(m, pcm, prompt, 8)
    ref_tokens, ref_logits = results["scalar"]
    for isa, (tokens, logits) in results.items():
        assert tokens == ref_tokens, isa
        for a, b in zip(logits, ref_logits, strict=True):
            assert np.abs(a - b).max() <= 2e-2 * float(np.abs(b).max()), isa


@pytest.mark.parametrize("isa", ["scalar", "auto"])
def test_fast_head_screen_keeps_tokens_and_logits(tiny_dir: Path, isa: str) -> None:
    """fast screens a step's LM head (a 4-bit copy picks the best blocks, rescored on the int8
    head; native/src/quant.h): the same tokens as the whole int8 head, and the logits read back
    are the whole head's, bit for bit (computed when asked)."""
    pcm = speech_like(3.0, seed=5)
    with NativeModel(tiny_dir, isa=isa, precision="fast", head_screen=-1) as m:
        prompt = [m.info("audio_start_token_id")] + [m.audio_token_id] * m.audio_token_count(pcm.size)
        prompt.append(m.info("audio_end_token_id"))
        whole_tokens, whole_logits = greedy(m, pcm, prompt, 12)
        assert m.context_info("head_blocks") == 0 and m.context_info("head_screened_rows") == 0
    with NativeModel(tiny_dir, isa=isa, precision="fast") as m:
        assert m.context_info("head_blocks") == 32  # every int8 table has a screen kernel
        tokens = [t for t, _ in m.generate(pcm, prompt, max_new_tokens=12, eos_ids=[-2])]
        assert tokens == whole_tokens
        assert (
            m.context_info("head_screened_rows") == 12 and m.context_info("head_whole_rows") == 0
        )  # nothing read back
        screened_tokens, screened_logits = greedy(m, pcm, prompt, 12)
        assert screened_tokens == whole_tokens and m.context_info("head_whole_rows") == 12
        for a, b in zip(screened_logits, whole_logits, strict=True):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("isa", [i for i in exact_isas() if i != "scalar"])
def test_fast_head_screen_in_a_batch(tiny_dir: Path, isa: str) -> None:
    """A decode step of 8 sequences screens its 8 head rows where the int8 table's screen takes
    them (head_screen_rows 8: the x86-64 tables), else takes the whole head (4: the NEON ones);
    every sequence's tokens are the whole head's either way."""
    pcms = [speech_like(2.0, seed=20 + i) for i in range(8)]

    def run(head_screen: int) -> tuple[dict[int, list[int]], int, int]:
        with NativeModel(tiny_dir, isa=isa, precision="fast", max_sequences=8, head_screen=head_screen) as m:
            prompt = [m.info("audio_start_token_id")] + [m.audio_token_id] * m.audio_token_count(pcms[0].size)
            prompt.append(m.info("audio_end_token_id"))
            seqs = {m.seq_add(pcm, prompt, max_new_tokens=48, eos_ids=[-2]): i for i, pcm in enumerate(pcms)}
            tokens: dict[int, list[int]] = {i: [] for i in range(8)}

            def step() -> int:
                events = [(seq, t) for seq, t, *_ in (m.step() or []) if t >= 0]
                for seq, t in events:
                    tokens[seqs[seq]].append(t)
                return len(events)

            while any(not t for t in tokens.values()):  # admission: each sequence's first token
                step()
            before = m.context_info("head_screened_rows")
            for _ in range(6):
                assert step() == 8  # all 8 decoding, no prefill joining
            screened = m.context_info("head_screened_rows") - before
            while m.context_info("active"):
                step()
            return tokens, screened, m.context_info("head_screen_rows")

    whole, none, _ = run(-1)
    tokens, screened, rows = run(0)
    assert none == 0 and rows in (4, 8)
    assert screened == (6 * 8 if rows >= 8 else 0)
    assert tokens == whole and all(len(t) == 48 for t in tokens.values())


def test_unknown_precision_is_refused(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        NativeModel(tiny_dir, precision="int4")
    with pytest.raises(ValueError, match="precision must be one of"):
        Engine(tiny_dir, precision="half")
