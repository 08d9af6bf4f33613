"""Output parsing, language names and long-audio splitting, against the official package."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from qwen_serve.engine.chunking import SAMPLE_RATE, split_long_audio
from qwen_serve.engine.text import (
    SUPPORTED_LANGUAGES,
    merge_languages,
    normalize_language,
    parse_output,
)
from qwen_serve.testing.tokenizer.convert_tiktoken import bytes_to_unicode

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


# --- IncrementalText against the straightforward whole-text algorithm --------------------------


class _ReferenceIncrementalText:
    """IncrementalText as it was: the whole text decoded and re-checked on every token."""

    def __init__(self, tokenizer: Any, forced_language: str | None):
        self._tok = tokenizer
        self._forced = forced_language
        self.ids: list[int] = []
        self.raw = ""
        self.emitted = ""

    def _visible(self) -> str:
        from qwen_serve.engine.text import ASR_TEXT_TAG, LANG_PREFIX, fix_repetitions, stable_length

        raw = self.raw.strip()
        if not raw:
            return ""
        stable = raw[: stable_length(raw)]
        fixed = fix_repetitions(stable)
        if not fix_repetitions(raw).startswith(fixed):
            return self.emitted
        if self._forced:
            text = fixed
        elif ASR_TEXT_TAG in fixed:
            text = fixed.split(ASR_TEXT_TAG, 1)[1]
        elif fixed.lower().startswith(LANG_PREFIX.strip()) or LANG_PREFIX.strip().startswith(fixed.lower()):
            return ""
        else:
            text = fixed
        return text.strip()

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        raw = self._tok.decode(self.ids, skip_special_tokens=True)
        if raw.endswith("\ufffd"):
            return ""
        self.raw = raw
        visible = self._visible()
        if not visible.startswith(self.emitted):
            return ""
        delta = visible[len(self.emitted) :]
        self.emitted = visible
        return delta

    def finish(self) -> tuple[str, str, str]:
        self.raw = self._tok.decode(self.ids, skip_special_tokens=True)
        language, text = parse_output(self.raw, self._forced)
        delta = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text if delta or text == self.emitted else self.emitted
        return language, text, delta


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny checkpoints' tokenizer (Qwen2 byte-level BPE with the Qwen3-ASR added tokens)."""
    import gzip
    import json
    import shutil

    from qwen_serve.engine.text import load_tokenizer
    from qwen_serve.testing import checkpoint

    d = tmp_path_factory.mktemp("tokenizer")
    (d / "config.json").write_text(json.dumps(checkpoint.make_config("tiny-0.6b")))
    (d / "tokenizer_config.json").write_text(json.dumps(checkpoint._tokenizer_config()))
    for name in ("vocab.json", "merges.txt"):
        with gzip.open(checkpoint.TOKENIZER_DATA / f"{name}.gz", "rb") as src, open(d / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return load_tokenizer(d)[0]


_PIECES = [
    "Hello world. ",
    "你好，世界。",
    "こんにちは",
    "😀👍🏽 ",
    "🇩🇪",
    "naïve café ",
    "  ",
    "\n",
    "Ünïcödé ",
    "language",
    "language ",
    "English",
    "Chinese",
    "<asr_text>",
    "language None",
    " spaced ",
    "x",
    "ab",
    "one two ",
    "啊",
    "fuse",
    "\t",
    "e\u0301",
    "Σ",
    "İ",
    "\ufffd",
]
_SPECIAL = [151643, 151644, 151645, 151669, 151670, 151676]  # endoftext, im_start/end, audio ones


def _random_ids(tok: Any, rng: random.Random) -> list[int]:
    parts: list[str] = []
    r = rng.random()
    if r < 0.3:
        parts.append(f"language {rng.choice(['English', 'Chinese', 'None', 'english', ''])}<asr_text>")
    elif r < 0.4:
        parts.append(rng.choice(["lang", "  language English", "language English\n<asr_text>", "Language"]))
    for _ in range(rng.randint(1, 12)):
        if rng.random() < 0.08:
            unit = "".join(
                rng.choice(_PIECES[:6] + ["a", "b", " ", "ab ", "😀"]) for _ in range(rng.randint(1, 3))
            )
            unit = unit[: rng.randint(1, 20)]
            count = rng.choice([rng.randint(2, 45), rng.randint(19, 23)])  # below, at and over the threshold
            parts.append(unit * min(count, 160 // len(unit)))
        else:
            parts.append(rng.choice(_PIECES))
    ids: list[int] = []
    for part in parts:
        ids.extend(tok.encode(part, add_special_tokens=False).ids)
        if rng.random() < 0.1:
            ids.append(rng.choice(_SPECIAL))
    if rng.random() < 0.2 and ids:  # split some tokens into single bytes (emoji cut mid-character)
        i = rng.randrange(len(ids))
        raw = tok.decode([ids[i]]).encode()
        byte_ids = [tok.token_to_id(_BYTE_CHARS[b]) for b in raw]
        if all(b is not None for b in byte_ids):
            ids[i : i + 1] = byte_ids
    if rng.random() < 0.1:  # a stray byte token: an invalid sequence that is never completed
        ids.insert(
            rng.randrange(len(ids) + 1), tok.token_to_id(_BYTE_CHARS[rng.choice([0x80, 0xE4, 0xF0, 0xBD])])
        )
    return ids


_BYTE_CHARS = bytes_to_unicode()  # byte -> the byte-level BPE char of its token


def _run_both(tok: Any, ids: list[int], forced: str | None) -> None:
    from qwen_serve.engine.text import IncrementalText

    new, ref = IncrementalText(tok, forced), _ReferenceIncrementalText(tok, forced)
    for i, token in enumerate(ids):
        assert new.push(token) == ref.push(token), (ids, forced, i)
        assert (new.raw, new.emitted) == (ref.raw, ref.emitted), (ids, forced, i)
    assert new.finish() == ref.finish(), (ids, forced)
    assert new.raw == tok.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("seed", range(8))
def test_incremental_equals_reference_random(tokenizer: Any, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(250):
        ids = _random_ids(tokenizer, rng)
        _run_both(tokenizer, ids, rng.choice([None, None, "English"]))


@pytest.mark.parametrize(
    "unit", ["a", "ab", "好", "😀", "fuse ", "one two ", "abcdefghijklmnopqrst", "abcdefghijklmnopqrstu"]
)
@pytest.mark.parametrize("forced", [None, "English"])
def test_incremental_equals_reference_runaway(tokenizer: Any, unit: str, forced: str | None) -> None:
    """A runaway repetition that crosses the threshold mid-stream, then stops (or not)."""
    for before, count, after in [
        ("language English<asr_text>Start ", 30, " and then it stops."),
        ("", 22, ""),
        ("x ", 19, "y"),
    ]:
        ids = tokenizer.encode(before + unit * count + after, add_special_tokens=False).ids
        _run_both(tokenizer, ids, forced)


def test_incremental_decodes_a_constant_per_token(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each push decodes a bounded number of ids and never scans the whole text for repetitions."""
    from qwen_serve.engine import text as text_mod

    calls: list[int] = []

    class Counting:
        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            calls.append(len(ids))
            return str(tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

    def no_whole_pass(s: str) -> Any:
        raise AssertionError("whole-string pass on text without repetitions")

    monkeypatch.setattr(text_mod, "_periodic_streaks", no_whole_pass)
    rng = random.Random(0)
    words = ["Hello", "world,", "你好", "😀", "this", "is", "fine.", "naïve", "café", "the", "a", "of"]
    text = " ".join(rng.choice(words) for _ in range(1500))
    ids = tokenizer.encode("language English<asr_text>" + text, add_special_tokens=False).ids
    assert len(ids) > 1500
    inc = text_mod.IncrementalText(Counting(), None)  # type: ignore[arg-type]
    for token in ids:
        before = len(calls)
        inc.push(token)
        assert len(calls) - before <= 2
    assert max(calls) <= 8
    assert sum(calls) <= 4 * len(ids)
