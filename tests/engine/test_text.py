"""Output parsing, language names and long-audio splitting, against the official package."""

from __future__ import annotations

import numpy as np
import pytest

from qwen_serve.engine.chunking import SAMPLE_RATE, split_long_audio
from qwen_serve.engine.text import (
    SUPPORTED_LANGUAGES,
    merge_languages,
    normalize_language,
    parse_output,
)

RAW_OUTPUTS = [
    "language English<asr_text>Hello world.",
    "language Chinese<asr_text>你好，世界。",
    "  language english<asr_text>  spaced out  ",
    "language None<asr_text>",
    "language None<asr_text>still something",
    "language English\n<asr_text>newline before tag",
    "language English\nextra line\n<asr_text>two meta lines",
    "no tag at all",
    "",
    "   ",
    "<asr_text>tag without language",
    "language <asr_text>empty name",
    "language English<asr_text>a<asr_text>b",
]


@pytest.mark.parametrize("raw", RAW_OUTPUTS)
def test_parse_matches_examples(raw: str) -> None:
    language, text = parse_output(raw)
    assert text == text.strip()
    if "<asr_text>" in raw and "None" not in raw and raw.strip().startswith("language E"):
        assert language == "English"


def test_parse_cases() -> None:
    assert parse_output("language English<asr_text>Hello world.") == ("English", "Hello world.")
    assert parse_output("language None<asr_text>") == ("", "")
    assert parse_output("no tag at all") == ("", "no tag at all")
    assert parse_output("anything<asr_text>x", forced_language="German") == ("German", "anything<asr_text>x")
    assert parse_output("language cantonese<asr_text>佢") == ("Cantonese", "佢")


@pytest.mark.reference
@pytest.mark.parametrize("raw", RAW_OUTPUTS)
@pytest.mark.parametrize("forced", [None, "English"])
def test_parse_equals_official(raw: str, forced: str | None) -> None:
    utils = pytest.importorskip("qwen_asr.inference.utils")
    assert parse_output(raw, forced) == utils.parse_asr_output(raw, user_language=forced)


def test_languages() -> None:
    assert normalize_language("cHINese") == "Chinese"
    assert normalize_language(" english ") == "English"
    for bad in ["", "Klingon", "en"]:
        with pytest.raises(ValueError):
            normalize_language(bad)
    assert merge_languages(["Chinese", "English", "English", "", "Chinese"]) == "Chinese,English,Chinese"


@pytest.mark.reference
def test_language_list_equals_official() -> None:
    utils = pytest.importorskip("qwen_asr.inference.utils")
    assert list(SUPPORTED_LANGUAGES) == list(utils.SUPPORTED_LANGUAGES)


def _speechy(seconds: float, seed: int = 0) -> np.ndarray:
    """Bursts of tone with quiet gaps, so there are quiet points to find."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    envelope = (np.sin(2 * np.pi * 0.37 * t) > -0.2).astype(np.float32)
    return (envelope * 0.3 * np.sin(2 * np.pi * 180 * t) + 0.001 * rng.standard_normal(n)).astype(np.float32)


def test_split_short_is_one_chunk() -> None:
    pcm = _speechy(3.0)
    chunks = split_long_audio(pcm, 10.0)
    assert len(chunks) == 1 and chunks[0][1] == 0.0 and chunks[0][0] is pcm


def test_split_tiles_input_and_cuts_quiet() -> None:
    pcm = _speechy(95.0)
    chunks = split_long_audio(pcm, 20.0)
    assert len(chunks) >= 5
    joined = np.concatenate([c for c, _ in chunks])
    assert np.array_equal(joined[: pcm.size], pcm)
    for (c, off), (_, next_off) in zip(chunks, chunks[1:], strict=False):
        assert c.size <= 25 * SAMPLE_RATE
        assert next_off == pytest.approx(off + c.size / SAMPLE_RATE)
        cut = int(round(next_off * SAMPLE_RATE))
        assert abs(pcm[cut]) < 0.01  # a quiet point, not the middle of a tone burst


@pytest.mark.reference
def test_split_equals_official() -> None:
    utils = pytest.importorskip("qwen_asr.inference.utils")
    pcm = _speechy(130.0, seed=3)
    ours = split_long_audio(pcm, 30.0)
    theirs = utils.split_audio_into_chunks(pcm, SAMPLE_RATE, 30.0)
    assert [round(o, 6) for _, o in ours] == [round(o, 6) for _, o in theirs]
    for (a, _), (b, _) in zip(ours, theirs, strict=False):
        assert np.array_equal(a, b)


REPEATS = [
    "fuse" * 24,
    "a" * 25 + "b",
    "x" * 20,
    "hello " + "ab" * 30 + " end",
    "no repeats here at all, just a sentence that is long enough to be checked",
    "啊" * 40,
    "one two " * 25,
    "abcdefghijklmnopqrstu" * 21 + "tail",
    "z" * 21 + "y" * 30 + "ab" * 19,
]


@pytest.mark.parametrize("text", REPEATS)
def test_repetition_fix(text: str) -> None:
    from qwen_serve.engine.text import fix_repetitions

    fixed = fix_repetitions(text)
    assert len(fixed) <= len(text)
    if text == "fuse" * 24:
        assert fixed == "fuse"


@pytest.mark.reference
@pytest.mark.parametrize("text", REPEATS)
def test_repetition_fix_equals_official(text: str) -> None:
    utils = pytest.importorskip("qwen_asr.inference.utils")
    from qwen_serve.engine.text import fix_repetitions

    assert fix_repetitions(text) == utils.detect_and_fix_repetitions(text)
    assert parse_output("language English<asr_text>" + text) == utils.parse_asr_output(
        "language English<asr_text>" + text
    )


class _CharTokenizer:
    """Decodes ids as characters: enough to drive IncrementalText."""

    def __init__(self, alphabet: str):
        self.alphabet = alphabet

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.alphabet[i] for i in ids)


@pytest.mark.parametrize("text", ["language English<asr_text>" + t for t in REPEATS] + REPEATS)
@pytest.mark.parametrize("forced", [None, "English"])
def test_incremental_deltas_concatenate_to_final(text: str, forced: str | None) -> None:
    from qwen_serve.engine.text import IncrementalText

    alphabet = "".join(sorted(set(text)))
    inc = IncrementalText(_CharTokenizer(alphabet), forced)  # type: ignore[arg-type]
    deltas = [inc.push(alphabet.index(ch)) for ch in text]
    language, final, last = inc.finish()
    assert "".join(deltas) + last == final
    assert (language, final) == parse_output(text, forced)
    assert "<asr_text>" not in "".join(deltas) or forced
