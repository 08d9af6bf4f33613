"""Live transcription's engine side on the tiny checkpoint: a decode forced with a prefix of
its own answer, `fix_prefix`, and a growing turn whose texts add up (see
qwen_serve/api/realtime/session.py for the session that drives it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qwen_serve.engine import Engine
from qwen_serve.engine._native import exact_isas
from qwen_serve.testing.clips import speech_like

HOLD_BACK = 5


def loud_start(pcm: np.ndarray) -> np.ndarray:
    """The turn's loudest moment in its first half second: the log-mel is clamped to 8 below its
    loudest frame, so a louder sound later would change every earlier frame (and window)."""
    pcm = pcm.copy()
    pcm[:8000] *= 3.0
    return pcm


@pytest.fixture(scope="module")
def engine(tiny_dirs: dict[str, Path]):
    with Engine(tiny_dirs["tiny-1.7b"], threads=2) as e:  # its random weights give varied text
        yield e


@pytest.mark.parametrize("isa", exact_isas())
@pytest.mark.parametrize(("preset", "language"), [("tiny-0.6b", "English"), ("tiny-1.7b", None)])
def test_a_forced_prefix_of_its_own_answer_decodes_on_exactly(
    tiny_dirs: dict[str, Path], isa: str, preset: str, language: str | None
) -> None:
    """Prefilled instead of decoded, the ids of the answer's start give the same next ids: the
    prefix's KV cache is the same whichever way it was computed (every exact kernel set)."""
    pcm = speech_like(4.0, seed=31)
    with Engine(tiny_dirs[preset], threads=2, isa=isa) as engine:
        free = engine.transcribe(pcm, language=language, max_new_tokens=30)
        assert len(free.token_ids) == 30
        for k in (1, 7, 20):
            forced = engine.transcribe(
                pcm, language=language, max_new_tokens=30, prefix_ids=free.token_ids[:k]
            )
            assert forced.token_ids == free.token_ids, k
            assert forced.text == free.text
            assert forced.usage.output_tokens == 30 - k  # only what it generated
            assert forced.usage.input_tokens == free.usage.input_tokens + k


def test_fix_prefix_holds_back_and_never_gives_back(engine: Engine) -> None:
    pcm = speech_like(3.0, seed=32)
    answer = engine.transcribe(pcm, language="English", max_new_tokens=12).token_ids
    fixed, text = engine.fix_prefix(answer, 0, HOLD_BACK, "English")
    assert fixed == answer[: 12 - HOLD_BACK] and text == engine.stable_text(fixed, "English")
    assert engine.fix_prefix(answer[:3], 0, HOLD_BACK)[0] == []  # too short to fix anything
    assert engine.fix_prefix(answer[:6], 4, HOLD_BACK)[0] == answer[:4]  # never fewer than before
    eos = engine.eos_ids[0]
    assert engine.fix_prefix([*answer[:8], eos], 0, 0)[0] == answer[:8]  # a stop token is never fixed


@pytest.mark.parametrize("language", [None, "Chinese"])
def test_a_growing_turn_sends_text_that_adds_up(engine: Engine, language: str | None) -> None:
    """What the session does: decode the turn so far after the fixed ids, fix all but the last
    few, send their text; the final decode's deltas continue that text to the transcript."""
    turn = speech_like(7.0, seed=33)
    fixed: list[int] = []
    sent = ""
    for seconds in (2.0, 3.0, 4.0, 5.0, 6.0):
        pcm = turn[: int(seconds * 16000)]
        stream = engine.stream(pcm, language=language, max_new_tokens=24, prefix_ids=fixed)
        new_text = "".join(stream)
        assert stream.result is not None
        assert sent + new_text == stream.result.text
        assert stream.result.token_ids[: len(fixed)] == fixed
        fixed, text = engine.fix_prefix(stream.result.token_ids, len(fixed), HOLD_BACK, language)
        assert text.startswith(sent)
        sent = text
    assert fixed and len(sent) > 0
    final = engine.stream(turn, language=language, prefix_ids=fixed, max_new_tokens=40)
    rest = "".join(final)
    assert final.result is not None
    assert sent + rest == final.result.text
    assert final.result.token_ids[: len(fixed)] == fixed


def test_stats_tell_sequences_in_admission_from_decoding_ones(engine: Engine) -> None:
    """Live decodes yield to other requests' encoders and prefills ("admitting"; ModelServer.live)."""
    stream = engine.stream(speech_like(3.0, seed=34), max_new_tokens=40)
    next(stream)  # a delta: its encoder and prefill are done
    stats = engine.stats()
    assert stats["active"] == 1 and stats["admitting"] == 0 and stats["waiting"] == 0
    for _ in stream:
        pass
    assert engine.stats()["active"] == engine.stats()["admitting"] == 0


def test_a_growing_turn_reuses_its_complete_encoder_windows(tiny_dirs: dict[str, Path]) -> None:
    """Each decode of a long turn starts again from the turn's whole audio; its complete 8 s
    encoder windows come from libqwen's cache the second time, and the results are exactly
    those of an engine without the cache."""
    turn = loud_start(speech_like(20.0, seed=34))
    with (
        Engine(tiny_dirs["tiny-1.7b"], threads=2) as cached,
        Engine(tiny_dirs["tiny-1.7b"], threads=2, encoder_cache_windows=-1) as uncached,
    ):
        for seconds, hits in ((17.0, 0), (20.0, 2)):  # 17 s: two complete windows, then the same two
            pcm = turn[: int(seconds * 16000)]
            a = cached.transcribe(pcm, max_new_tokens=12)
            b = uncached.transcribe(pcm, max_new_tokens=12)
            assert a.token_ids == b.token_ids and a.text == b.text
            assert cached.stats()["encoder_cache_hits"] == hits
            assert cached.stats()["encoder_cache_misses"] == 2
        assert uncached.stats()["encoder_cache_hits"] == uncached.stats()["encoder_cache_misses"] == 0


@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_a_growing_turn_prefills_only_what_changed(tiny_dirs: dict[str, Path], precision: str) -> None:
    """The next decode of a growing turn starts its prefill after the kept KV of the prompt up to
    its last, incomplete window (libqwen's prefix cache), with the results of an engine without
    the caches: the same ids and text, also when forced with fixed ids as the session does."""
    turn = loud_start(speech_like(26.0, seed=35))
    with (
        Engine(tiny_dirs["tiny-1.7b"], threads=2, precision=precision) as cached,
        Engine(
            tiny_dirs["tiny-1.7b"],
            threads=2,
            precision=precision,
            encoder_cache_windows=-1,
            prefix_cache_tokens=-1,
        ) as uncached,
    ):
        fixed: list[int] = []
        for seconds in (9.0, 12.0, 17.0, 26.0):
            pcm = turn[: int(seconds * 16000)]
            a = cached.transcribe(pcm, max_new_tokens=12, prefix_ids=fixed)
            b = uncached.transcribe(pcm, max_new_tokens=12, prefix_ids=fixed)
            assert a.token_ids == b.token_ids and a.text == b.text
            fixed = a.token_ids[:3]
        stats = cached.stats()
        assert stats["prefix_cache_hits"] == 3 and stats["prefix_cache_tokens_reused"] >= 3 * 64
        assert uncached.stats()["prefix_cache_hits"] == 0
