"""The forced aligner through the ctypes binding (NativeModel.align, qwen_align): the checkpoint's facts,
each checkpoint kind refusing the other's calls, the longest chunk the official aligner takes
(180 s) within the default max_context, and abort. Parity with the official implementation is
tests/engine/test_aligner_parity.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qwen_serve.engine._native import AbortedError, NativeError, NativeModel
from qwen_serve.testing.clips import speech_like


def prompt(m: NativeModel, n_samples: int, words: list[list[int]]) -> list[int]:
    """<|audio_start|>, the placeholders, <|audio_end|>, then each word's tokens and two markers."""
    marker = m.info("timestamp_token_id")
    ids = [m.info("audio_start_token_id")] + [m.audio_token_id] * m.audio_token_count(n_samples)
    ids.append(m.info("audio_end_token_id"))
    for w in words:
        ids += [*w, marker, marker]
    return ids


@pytest.fixture(scope="module")
def aligner(tiny_aligner_dir: Path):
    with NativeModel(tiny_aligner_dir, threads=2) as m:
        yield m


def test_info_from_config(aligner: NativeModel, tiny_aligner_dir: Path, tiny_dir: Path) -> None:
    config = json.loads((tiny_aligner_dir / "config.json").read_text())
    assert aligner.is_aligner
    assert aligner.info("classify_num") == config["thinker_config"]["classify_num"] == 5000
    assert aligner.info("timestamp_token_id") == config["timestamp_token_id"] == 151705
    assert aligner.info("timestamp_segment_time") == config["timestamp_segment_time"] == 80
    assert aligner.info("vocab_size") == 152064
    with NativeModel(tiny_dir) as asr:
        assert not asr.is_aligner
        for key in ("classify_num", "timestamp_token_id", "timestamp_segment_time"):
            with pytest.raises(KeyError):
                asr.info(key)


def test_each_kind_refuses_the_other(aligner: NativeModel, tiny_dir: Path) -> None:
    pcm = speech_like(1.0)
    ids = prompt(aligner, pcm.size, [[9707], [1879]])
    with pytest.raises(NativeError, match="qwen_align"):
        aligner.seq_add(pcm, ids, max_new_tokens=4)
    with pytest.raises(NativeError, match="qwen_align"):
        list(aligner.generate(pcm, ids, max_new_tokens=4))
    with NativeModel(tiny_dir) as asr, pytest.raises(NativeError, match="not a forced aligner"):
        asr.align(pcm, ids[: ids.index(aligner.info("audio_end_token_id")) + 1])
    with pytest.raises(NativeError, match="placeholders"):
        aligner.align(speech_like(2.0), ids)


def test_classes_and_logits(aligner: NativeModel) -> None:
    pcm = speech_like(3.0, seed=2)
    ids = prompt(aligner, pcm.size, [[9707], [1879, 11], [1052]])
    classes, logits = aligner.align(pcm, ids, logits=True)
    assert classes.dtype == np.int32 and classes.shape == (6,)
    assert logits.shape == (6, aligner.info("classify_num"))
    assert classes.tolist() == logits.argmax(axis=-1).tolist()
    assert aligner.align(pcm, ids).tolist() == classes.tolist()
    assert aligner.align(pcm, ids[: ids.index(aligner.info("audio_end_token_id")) + 2]).shape == (0,)


def test_longest_aligner_chunk(aligner: NativeModel) -> None:
    """180 s (the official aligner's chunk) and 400 words fit the default max_context: one pass,
    with markers after every encoder window's audio."""
    pcm = speech_like(180.0, seed=3)
    rng = np.random.default_rng(0)
    words = [[int(t) for t in rng.integers(200, 100000, size=1 + i % 3)] for i in range(400)]
    ids = prompt(aligner, pcm.size, words)
    assert len(ids) > 2340 + 4 * 400
    classes = aligner.align(pcm, ids)
    assert classes.shape == (800,)
    assert ((classes >= 0) & (classes < aligner.info("classify_num"))).all()
    assert aligner.timing("n_prompt") == len(ids)


def test_abort(aligner: NativeModel) -> None:
    pcm = speech_like(9.0, seed=4)
    ids = prompt(aligner, pcm.size, [[9707], [1879]])
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(AbortedError):
        aligner.align(pcm, ids, should_abort=stop)
    assert len(calls) == 4
    assert aligner.context_info("kv_reserved") == 0
    assert aligner.align(pcm, ids).shape == (4,)  # usable again
