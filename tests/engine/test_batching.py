"""The batching engine on tiny checkpoints: many requests at once, each with exactly the result it
gets alone; long audio's chunks in parallel; cancellation; EngineBusy; the native sequence API."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from qwen_serve.engine import Engine, EngineBusy
from qwen_serve.engine._native import QWEN_DONE, AbortedError, BusyError, NativeModel, exact_isas
from qwen_serve.testing.clips import speech_like

# Clips of mixed lengths: under one second, a few seconds, two encoder windows (> 8 s).
CLIPS = [(0.7, 0), (2.0, 1), (3.5, 2), (9.0, 3), (1.2, 4), (5.0, 5), (2.5, 6), (4.0, 7)]


def _wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def alone(tiny_dir: Path) -> dict[tuple[float, int], list[int]]:
    """Each clip's token ids, one request at a time, one slot."""
    with Engine(tiny_dir, threads=1, max_batch=1) as e:
        return {c: e.transcribe(speech_like(*c), max_new_tokens=20).token_ids for c in CLIPS}


@pytest.mark.parametrize("isa", exact_isas())
def test_concurrent_requests_get_their_alone_results(
    tiny_dir: Path, alone: dict[tuple[float, int], list[int]], isa: str
) -> None:
    with Engine(tiny_dir, threads=2, isa=isa, max_batch=4) as e:
        with ThreadPoolExecutor(len(CLIPS)) as pool:  # twice the slots: some wait for one
            results = pool.map(lambda c: e.transcribe(speech_like(*c), max_new_tokens=20), CLIPS)
            got = dict(zip(CLIPS, results, strict=True))
        assert {c: r.token_ids for c, r in got.items()} == alone
        stats = e.stats()
        steps, step_sequences = stats.pop("steps"), stats.pop("step_sequences")
        assert stats == {
            "encoder_cache_hits": 0,
            "encoder_cache_misses": 1,  # the 9 s clip's complete 8 s window
            "prefix_cache_hits": 0,  # no two clips start alike
            "prefix_cache_tokens_reused": 0,
            "max_batch": 4,
            "active": 0,
            "peak_active": 4,
            "waiting": 0,
            "admitting": 0,
        }  # really batched
        assert 1 < step_sequences / steps <= 4  # the mean batch size the metrics report


def test_streams_interleave_and_match(tiny_dir: Path, alone: dict[tuple[float, int], list[int]]) -> None:
    with Engine(tiny_dir, threads=2, max_batch=8) as e:
        streams = {c: e.stream(speech_like(*c), max_new_tokens=20) for c in CLIPS}  # all queued at once
        texts = {c: "" for c in CLIPS}
        live = dict(streams)
        while live:  # one delta from each in turn, from this one thread
            for c, s in list(live.items()):
                try:
                    texts[c] += next(s)
                except StopIteration:
                    del live[c]
        for c, s in streams.items():
            assert s.result is not None
            assert s.result.token_ids == alone[c]
            assert texts[c] == s.result.text


def test_long_audio_chunks_decode_in_parallel(tiny_dir: Path) -> None:
    pcm = speech_like(20.0, seed=9)
    with Engine(tiny_dir, threads=2, max_chunk_seconds=4.0, max_batch=1) as one:
        sequential = one.transcribe(pcm, max_new_tokens=10)
    with Engine(tiny_dir, threads=2, max_chunk_seconds=4.0, max_batch=8) as e:
        stream = e.stream(pcm, max_new_tokens=10)
        deltas = list(stream)
        assert stream.result is not None
        peak = e.stats()["peak_active"]
    assert len(sequential.segments) >= 5
    assert stream.result.token_ids == sequential.token_ids
    assert stream.result.text == sequential.text == "".join(deltas)
    assert [s.token_ids for s in stream.result.segments] == [s.token_ids for s in sequential.segments]
    assert peak == len(sequential.segments)  # every chunk held a slot at once


def test_cancel_frees_the_slot_and_spares_the_others(
    tiny_dir: Path, alone: dict[tuple[float, int], list[int]]
) -> None:
    with Engine(tiny_dir, threads=2, max_batch=4) as e:
        victim = e.stream(speech_like(9.0, seed=3), max_new_tokens=4000)
        others = [e.stream(speech_like(*c), max_new_tokens=20) for c in CLIPS[:3]]
        _wait_until(lambda: e.stats()["active"] >= 1)  # decoding (tiny models' text is mostly hidden)
        errors: list[BaseException] = []

        def consume() -> None:
            try:
                for _ in victim:
                    pass
            except AbortedError as err:
                errors.append(err)

        t = threading.Thread(target=consume)
        t.start()
        victim.close()  # from another thread than the one iterating
        t.join(timeout=30)
        assert not t.is_alive() and len(errors) == 1
        for c, s in zip(CLIPS[:3], others, strict=True):
            list(s)
            assert s.result is not None and s.result.token_ids == alone[c]
        _wait_until(lambda: e.stats()["active"] == 0)
        # A dropped, half-read stream ends too.
        dropped = e.stream(speech_like(9.0, seed=3), max_new_tokens=4000)
        _wait_until(lambda: e.stats()["active"] == 1)
        del dropped
        _wait_until(lambda: e.stats()["active"] == 0)


def test_busy_when_the_queue_is_full(tiny_dir: Path) -> None:
    with Engine(tiny_dir, threads=2, max_batch=1, max_waiting=0, kv_budget_tokens=0) as e:  # 0: no budget
        first = e.stream(speech_like(9.0, seed=3), max_new_tokens=4000)
        _wait_until(lambda: e.stats()["active"] == 1)
        with pytest.raises(EngineBusy):
            e.stream(speech_like(1.0), max_new_tokens=8)
        first.close()
        _wait_until(lambda: e.stats()["active"] == 0)
        assert e.transcribe(speech_like(1.0), max_new_tokens=4).token_ids  # serves again


def test_busy_when_one_chunk_exceeds_the_kv_budget(tiny_dir: Path) -> None:
    with Engine(tiny_dir, threads=2, kv_budget_tokens=64) as e:
        with pytest.raises(EngineBusy, match="budget"):
            e.transcribe(speech_like(5.0), max_new_tokens=32)  # 65 audio tokens + prompt + 32
        assert e.transcribe(speech_like(1.0), max_new_tokens=8).token_ids  # 13 + prompt + 8 fits


def test_kv_budget_queues_instead_of_failing(
    tiny_dir: Path, alone: dict[tuple[float, int], list[int]]
) -> None:
    """A budget for one request at a time: the others wait for it, then run; none fails."""
    with Engine(tiny_dir, threads=2, max_batch=4, kv_budget_tokens=200) as e:
        clips = CLIPS[:4]
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda c: e.transcribe(speech_like(*c), max_new_tokens=20).token_ids, clips))
        assert got == [alone[c] for c in clips]


def test_native_sequences(tiny_dir: Path) -> None:
    """The sequence API directly: slots, busy, abort, events, per-sequence logits and timings."""
    with NativeModel(tiny_dir, threads=2, max_sequences=2) as m:
        pcm = speech_like(1.0)
        n_audio = m.audio_token_count(pcm.size)
        prompt = (
            [m.info("audio_start_token_id")] + [m.audio_token_id] * n_audio + [m.info("audio_end_token_id")]
        )
        a = m.seq_add(pcm, prompt, max_new_tokens=5, eos_ids=[-1])
        b = m.seq_add(pcm, prompt, max_new_tokens=3, eos_ids=[-1])
        assert {a, b} == {0, 1} and m.context_info("free_slots") == 0
        with pytest.raises(BusyError):
            m.seq_add(pcm, prompt, max_new_tokens=3)
        tokens: dict[int, list[int]] = {a: [], b: []}
        ended: dict[int, int] = {}
        while (events := m.step()) is not None:
            for seq, token, status, _ in events:
                assert status in (0, QWEN_DONE)
                logits = m.seq_logits(seq)
                assert logits is not None and int(np.argmax(logits)) == token
                tokens[seq].append(token)
                if status == QWEN_DONE:
                    ended[seq] = len(tokens[seq])
        assert ended == {a: 5, b: 3} and tokens[a][:3] == tokens[b]  # same input, same ids
        assert m.seq_timing(a, "n_decoded") == 5 and m.seq_timing(a, "encoder") > 0
        assert m.context_info("active") == 0 and m.context_info("kv_reserved") == 0
        c = m.seq_add(pcm, prompt, max_new_tokens=5)
        m.seq_abort(c)
        assert m.context_info("active") == 0 and m.step() is None


@pytest.mark.parametrize(("windows", "tokens", "misses", "prefix_hits"), [(32, 1024, 1, 1), (0, 0, 0, 0)])
def test_the_cache_settings_reach_libqwen(
    tiny_dir: Path, windows: int, tokens: int, misses: int, prefix_hits: int
) -> None:
    """QWEN_ENCODER_CACHE_WINDOWS and QWEN_PREFIX_CACHE_TOKENS as the replica builds its engine: 0 is
    off (no window looked up, no prefix kept)."""
    from qwen_serve.model.server import load_engine

    engine = load_engine(
        tiny_dir,
        threads=1,
        isa="auto",
        precision="exact",
        max_batch=1,
        kv_budget_tokens=None,
        max_waiting=None,
        encoder_cache_windows=windows,
        prefix_cache_tokens=tokens,
        weight_cache="",
    )
    try:
        for _ in range(2):  # the same audio twice: the second finds its window and its prefix
            for _ in engine.stream(speech_like(9.0, seed=3), max_new_tokens=2):
                pass
        assert engine.stats()["encoder_cache_misses"] == misses
        assert engine.stats()["prefix_cache_hits"] == prefix_hits  # the second request
    finally:
        engine.close()
