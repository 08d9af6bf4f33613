"""The engine's Aligner (its text side + libqwen's qwen_align) against the official package, end to end:

- `Aligner.align(pcm, text, language)` gives the official `Qwen3ForcedAligner.align` words and
  seconds (the official items carry the cleaned word; ours the word as written, whose cleaned
  form must be the official one) in English, Chinese and German;
- the whole official `Qwen3ASRModel.transcribe(..., return_time_stamps=True)` on audio long enough
  to be chunked (the official cuts at 180 s when aligning) equals `Engine.transcribe` with the
  same chunk length followed by `Aligner.align_transcription`: the same text per chunk, the same
  words and the same times with the chunk offsets.

The encoders run with the official window mask on both sides (qwen_serve/testing/reference.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_serve.engine import Aligner, Engine
from qwen_serve.engine.alignment import clean_word
from qwen_serve.testing.clips import speech_like

pytestmark = pytest.mark.reference
pytest.importorskip("torch")
pytest.importorskip("qwen_asr")
reference = pytest.importorskip("qwen_serve.testing.reference")

TEXTS = {
    "English": "Hello world, this is the forced aligner's test: 42 words, or fewer.",
    "Chinese": "今天天气很好，我们去公园散步吧。AI 模型",
    "German": "Guten Morgen! Wie geht es Ihnen heute, Frau Müller?",
}


@pytest.fixture(scope="module")
def aligner(tiny_aligner_dir: Path):
    with Aligner(tiny_aligner_dir, threads=2) as a:
        yield a


@pytest.mark.parametrize("language", list(TEXTS))
def test_align_equals_official(aligner: Aligner, tiny_aligner_dir: Path, language: str) -> None:
    pcm = speech_like(9.0, seed=11)
    ref = reference.align(tiny_aligner_dir, pcm, TEXTS[language], language)["items"]
    words = aligner.align(pcm, TEXTS[language], language)
    assert [(clean_word(w.word), w.start, w.end) for w in words] == ref
    assert all(TEXTS[language][w.span[0] : w.span[1]] == w.word for w in words)


def test_transcribe_with_time_stamps_equals_official(tiny_dir: Path, tiny_aligner_dir: Path) -> None:
    import torch
    from qwen_asr.inference.qwen3_asr import Qwen3ASRModel
    from qwen_asr.inference.utils import MAX_FORCE_ALIGN_INPUT_SECONDS

    pcm = speech_like(MAX_FORCE_ALIGN_INPUT_SECONDS + 20.0, seed=4)  # two chunks when aligning
    official = Qwen3ASRModel.from_pretrained(
        str(tiny_dir), forced_aligner=str(tiny_aligner_dir), dtype=torch.float32, max_new_tokens=24,
        forced_aligner_kwargs={"dtype": torch.float32},
    )  # fmt: skip
    with (
        torch.inference_mode(),
        reference.windowed_encoder(official.model),
        reference.windowed_encoder(official.forced_aligner.model),
    ):
        [ref] = official.transcribe(audio=(pcm, 16000), language="English", return_time_stamps=True)
    ref_items = [(it.text, it.start_time, it.end_time) for it in ref.time_stamps]

    with (
        Engine(tiny_dir, threads=2, max_chunk_seconds=MAX_FORCE_ALIGN_INPUT_SECONDS) as engine,
        Aligner(tiny_aligner_dir, threads=2) as aligner,
    ):
        result = engine.transcribe(pcm, language="English", max_new_tokens=24)
        words = aligner.align_transcription(pcm, result)
    assert len(result.segments) == 2 and all(s.text for s in result.segments)  # both chunks have words
    assert "".join(s.text for s in result.segments) == ref.text  # the official joins chunks with ""
    assert ref_items
    assert [(clean_word(w.word), w.start, w.end) for w in words] == ref_items
