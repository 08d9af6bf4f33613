"""The text side of the forced aligner (engine/alignment.py), against the official package.

The `reference` tests compare with qwen_asr's Qwen3ForceAlignProcessor (word
lists, aligner text, fix_timestamp, parse_timestamp) and its Qwen3ASRProcessor
(prompt ids); importing them pulls torch.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from qwen_serve.engine import alignment
from qwen_serve.engine.alignment import (
    TIMESTAMP_TOKEN,
    AlignedWord,
    AlignerText,
    MissingDependencyError,
    TextWord,
    align_words,
    aligner_input_text,
    aligner_prompt_ids,
    clean_word,
    fix_timestamps,
    load_aligner_tokenizer,
    split_words,
)
from qwen_serve.engine.text import load_tokenizer

SENTENCES = {
    "English": [
        "Hello, world! It's 9:30 — e-mail me at noon.",
        "  Mr. O'Brien said:\t\"don't\" stop...\nRight? (Yes.) 3.14 and 1,000,000 people ",
        "McDonald's iPhone JavaScript OpenAI ChatGPT HELLOworld",
    ],
    "Chinese": [
        "我们用AI技术，Hello世界。",
        "今天天气很好！我们去公园玩吧 OK？GPT-4o和Qwen3都是模型。",
        "「你好」他说，“再见”。2026年12月3日",
    ],
    "German": ["Grüß Gott! Die Straße ist schön, nicht wahr? Äpfel und Öl kosten 3,50 €."],
    "French": ["L'été dernier, j'ai vu « Amélie » au cinéma ; c'était génial !"],
    "Japanese": [
        "今日はいい天気ですね。東京タワーに行きましょう！",
        "私はＡＩとPythonが好きです。ｶﾀｶﾅも、「引用」も。",
    ],
    "Korean": ["안녕하세요, 저는 학생입니다. 오늘 날씨가 정말 좋네요!", "서울특별시에서 AI 기술을 배웁니다."],
    "Hindi": ["नमस्ते दुनिया, आप कैसे हैं?"],
    "Thai": ["สวัสดีครับ ผมชื่อสมชาย"],
    "Arabic": ["مرحبا بالعالم، كيف حالك؟"],
}


def _spaced_words(text: str) -> list[str]:
    return [w.cleaned for w in split_words(text, "English")]


# ==== Word splitting =================================================================


def test_space_language_words_and_spans() -> None:
    text = "Hello, world! It's 9:30 — e-mail me."
    words = split_words(text, "English")
    assert [w.cleaned for w in words] == ["Hello", "world", "It's", "930", "email", "me"]
    assert [text[a:b] for a, b in (w.span for w in words)] == [
        "Hello",
        "world",
        "It's",
        "9:30",
        "e-mail",
        "me",
    ]


def test_chinese_splits_ideographs_and_keeps_latin_runs() -> None:
    text = "我们用AI技术，Hello世界。 OK"
    assert [w.cleaned for w in split_words(text, "Chinese")] == list("我们用") + ["AI"] + list("技术") + [
        "Hello",
        "世",
        "界",
        "OK",
    ]
    # cleaning happens per whitespace piece before the ideographs are split out: "A,I" -> "AI"
    assert _spaced_words("用A,I做") == ["用", "AI", "做"]


def test_spans_keep_trailing_combining_marks() -> None:
    text = "नमस्ते दुनिया"
    words = split_words(text, "Hindi")
    assert [w.cleaned for w in words] == ["नमसत", "दनय"]  # the aligner sees letters only
    assert [text[a:b] for a, b in (w.span for w in words)] == ["नमस्ते", "दुनिया"]


@pytest.mark.parametrize("language", ["English", "Chinese", "German", "Hindi", None, ""])
def test_spans_are_ordered_and_clean_to_the_word(language: str | None) -> None:
    rng = np.random.default_rng(7)
    pool = list("abcXYZ019'’.,!?-—「」（）《》 \t\n我们的AIé") + ["\u0301", "\u093f", "ß", "ǅ", "Ⅻ"]
    for _ in range(300):
        text = "".join(rng.choice(pool, size=int(rng.integers(0, 40))))
        words = split_words(text, language)
        end = 0
        for w in words:
            a, b = w.span
            assert end <= a < b <= len(text)
            assert clean_word(text[a:b]) == w.cleaned
            assert not text[a:b][0].isspace() and not text[a:b][-1].isspace()
            end = b


def test_empty_and_punctuation_only_text() -> None:
    assert split_words("", "English") == []
    assert split_words(" ... — !! ", "Chinese") == []
    assert aligner_input_text([], 2) == "<|audio_start|><|audio_pad|><|audio_pad|><|audio_end|>"


def test_japanese_words_map_back_to_the_original_text() -> None:
    pytest.importorskip("nagisa")  # the align extra (a test dependency)
    text = "私はＡＩとPythonが好きです。ｶﾀｶﾅも！"
    words = split_words(text, "Japanese")
    cleaned = [w.cleaned for w in words]
    assert "AI" in cleaned and "Python" in cleaned  # nagisa works on NFKC text
    by_word = {w.cleaned: text[w.span[0] : w.span[1]] for w in words}
    assert by_word["AI"] == "ＡＩ"  # ...the span is the text as written
    assert "".join(cleaned) == "私はAIとPythonが好きですカタカナも"
    end = 0
    for w in words:
        assert end <= w.span[0] < w.span[1] <= len(text)
        end = w.span[1]


def test_korean_words_with_a_word_list(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("soynlp")
    dictionary = tmp_path / "ko.dict"
    dictionary.write_text("학생 10 n\n날씨 10 n\n", encoding="utf-8")
    monkeypatch.setattr(alignment, "korean_dictionary_path", lambda: dictionary)
    alignment._korean_tokenizer.cache_clear()
    try:
        text = "저는 학생입니다. 날씨가 좋네요!"
        words = split_words(text, "Korean")
        assert [w.cleaned for w in words] == ["저는", "학생", "입니다", "날씨", "가", "좋네요"]
        assert [text[a:b] for a, b in (w.span for w in words)] == [w.cleaned for w in words]
    finally:
        alignment._korean_tokenizer.cache_clear()


def test_a_token_that_cannot_be_placed_keeps_its_word() -> None:
    text = "ab cd"
    origin = [(i, i + 1) for i in range(len(text))]
    words = alignment._locate_tokens(text, ["ab", "zz", "cd"], text, origin)
    assert words == [TextWord("ab", (0, 2)), TextWord("zz", (2, 2)), TextWord("cd", (3, 5))]
    assert [w.word for w in align_words(text, words, [0, 1, 2, 3, 4, 5])] == ["ab", "zz", "cd"]


def test_missing_japanese_splitter_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nagisa", None)  # import nagisa -> ImportError
    with pytest.raises(MissingDependencyError, match=r"nagisa==0\.2\.11"):
        split_words("今日は", "japanese")
    assert split_words("今日は", "Chinese")  # other languages need nothing


def test_missing_korean_splitter_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    alignment._korean_tokenizer.cache_clear()
    monkeypatch.setitem(sys.modules, "soynlp.tokenizer", None)
    try:
        with pytest.raises(MissingDependencyError, match=r"soynlp==0\.0\.493"):
            split_words("안녕하세요", "Korean")
    finally:
        alignment._korean_tokenizer.cache_clear()


def test_missing_korean_word_list_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata
    import importlib.util

    def no_dist(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(importlib.metadata, "distribution", no_dist)
    with pytest.raises(MissingDependencyError, match="qwen-asr"):
        alignment.korean_dictionary_path()


# ==== fix_timestamps and words from classes =========================================


@pytest.mark.parametrize(
    ("ms", "fixed"),
    [
        ([], []),
        ([5.0], [5]),
        ([0.0, 80.0, 80.0, 160.0], [0, 80, 80, 160]),  # plateaus are in order
        ([0.0, 800.0, 160.0, 240.0], [0, 0, 160, 240]),  # one outlier: the nearer neighbour (left on a tie)
        ([0, 50, 40, 30, 20, 100], [0, 50, 62, 75, 87, 100]),  # three: linear, cut to whole ms
        ([100.0, 5.0, 6.0, 7.0, 500.0], [5, 5, 6, 7, 500]),  # at an edge: the one neighbour
        ([400.0, 300.0, 200.0, 100.0], [400, 400, 400, 400]),  # all decreasing: the first one stays
    ],
)
def test_fix_timestamps_examples(ms: list[float], fixed: list[int]) -> None:
    assert fix_timestamps(ms) == fixed
    assert fix_timestamps(np.asarray(ms, dtype=np.float32)) == fixed


def test_align_words_times_offsets_and_spans() -> None:
    text = "Hi there."
    words = split_words(text, "English")
    got = align_words(text, words, np.array([0, 3, 4, 10], dtype=np.int32))
    assert got == [AlignedWord("Hi", 0.0, 0.24, (0, 2)), AlignedWord("there", 0.32, 0.8, (3, 8))]
    shifted = align_words(text, words, [0, 3, 4, 10], time_offset=59.987, char_offset=10)
    assert [(w.start, w.end, w.span) for w in shifted] == [
        (59.987, 60.227, (10, 12)),
        (60.307, 60.787, (13, 18)),
    ]
    with pytest.raises(ValueError, match="2 per word"):
        align_words(text, words, [0, 1, 2])


def test_align_words_repairs_and_keeps_order() -> None:
    text = "one two three four"
    words = split_words(text, "English")
    got = align_words(text, words, [1, 2, 30, 3, 4, 5, 6, 7])
    times = [t for w in got for t in (w.start, w.end)]
    assert times == sorted(times)
    assert got[1].start == 0.16  # the outlier 30 took its left neighbour (2 x 80 ms)


# ==== Prompt ids =====================================================================


def _aligner_dir(src: Path, dst: Path, transformers_version: str | None) -> Path:
    """A forced-aligner tokenizer: the checkpoint's plus a special <timestamp> token."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, dst / f.name)
    tc = json.loads((dst / "tokenizer_config.json").read_text(encoding="utf-8"))
    tc["added_tokens_decoder"]["151705"] = {
        "content": TIMESTAMP_TOKEN,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }
    (dst / "tokenizer_config.json").write_text(json.dumps(tc), encoding="utf-8")
    config = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    config["timestamp_token_id"] = 151705
    config["timestamp_segment_time"] = 80
    if transformers_version is None:
        config.pop("transformers_version", None)
    else:
        config["transformers_version"] = transformers_version
    (dst / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return dst


def test_prompt_ids_layout(tiny_dir: Path, tmp_path: Path) -> None:
    d = _aligner_dir(tiny_dir, tmp_path / "aligner", "4.57.6")
    tok = load_aligner_tokenizer(d)
    words = [w.cleaned for w in split_words("Hello, world! 你好", "Chinese")]
    ids = aligner_prompt_ids(tok, words, 3)
    ts, pad = tok.token_to_id(TIMESTAMP_TOKEN), tok.token_to_id("<|audio_pad|>")
    assert ts == 151705
    assert ids[:5] == [tok.token_to_id("<|audio_start|>"), pad, pad, pad, tok.token_to_id("<|audio_end|>")]
    assert ids.count(ts) == 2 * len(words) and ids[-2:] == [ts, ts]
    between = [i for i, t in enumerate(ids) if t == ts]
    assert tok.decode(ids[5 : between[0]]) == "Hello"
    with pytest.raises(ValueError, match="timestamp"):
        aligner_prompt_ids(load_tokenizer(tiny_dir)[0], words, 3)


def test_aligner_text_for_one_chunk(tiny_dir: Path, tmp_path: Path) -> None:
    d = _aligner_dir(tiny_dir, tmp_path / "aligner", "4.57.6")
    aligner = AlignerText(d)
    assert (aligner.timestamp_token_id, aligner.segment_ms) == (151705, 80.0)
    assert aligner.prompt(" ... ", "English", 4) == ([], [])  # nothing to align
    text = " then, Bob left."  # the second chunk's text, after "Hi there." (9 characters)
    words, ids = aligner.prompt(text, "English", 4)
    assert ids == aligner_prompt_ids(aligner.tokenizer, ["then", "Bob", "left"], 4)
    got = aligner.words(text, words, [0, 2, 3, 5, 5, 9], time_offset=60.0, char_offset=9)
    assert [(w.word, w.start, w.end, w.span) for w in got] == [
        ("then", 60.0, 60.16, (10, 14)),
        ("Bob", 60.24, 60.4, (16, 19)),
        ("left", 60.4, 60.72, (20, 24)),
    ]
    assert ("Hi there." + text)[10:14] == "then"
    config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    config["timestamp_token_id"] = 151704
    (d / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ValueError, match="timestamp_token_id"):
        AlignerText(d)


def test_split_fix_follows_the_checkpoints_transformers_version(tiny_dir: Path, tmp_path: Path) -> None:
    words = ["iPhone", "JavaScript"]
    ids = {
        v: aligner_prompt_ids(load_aligner_tokenizer(_aligner_dir(tiny_dir, tmp_path / str(v), v)), words, 1)
        for v in ("4.57.1", "4.57.6", "5.0.0", None)
    }
    assert ids["4.57.6"] == ids[None] != ids["4.57.1"] == ids["5.0.0"]


# ==== Against the official package ===================================================


@pytest.fixture(scope="module")
def official():
    mod = pytest.importorskip("qwen_asr.inference.qwen3_forced_aligner")
    return mod.Qwen3ForceAlignProcessor()


def _official_words(official, text: str, language: str) -> list[str]:
    return list(official.encode_timestamp(text, language)[0])


@pytest.mark.reference
@pytest.mark.parametrize(
    ("language", "text"), [(lang, t) for lang, texts in SENTENCES.items() for t in texts]
)
def test_words_equal_official(official, language: str, text: str) -> None:
    words, input_text = official.encode_timestamp(text, language)
    ours = [w.cleaned for w in split_words(text, language)]
    assert ours == list(words)
    assert aligner_input_text(ours, 1) == input_text


@pytest.mark.reference
def test_words_equal_official_on_random_text(official) -> None:
    rng = np.random.default_rng(11)
    pool = list("abcdeXYZ0129'’.,!?-—「」（）。，《》 \t\n我们的好AIéàüßİ") + [
        "\u0301",
        "\u093f",
        "Ⅻ",
        "ｶ",
        "ﾞ",
        "①",
    ]
    ja = list("今日はいい天気ですねカタカナ、。「」ＡＢ１２ 　") + ["ｶ", "ﾞ", "①", "㍿"]
    ko = list("안녕하세요저는학생입니다날씨가 정말좋네요AI12.,!?")
    for _ in range(400):
        text = "".join(rng.choice(pool, size=int(rng.integers(0, 30))))
        for lang in ("English", "Chinese", "Hindi"):
            assert [w.cleaned for w in split_words(text, lang)] == _official_words(official, text, lang), text
    for _ in range(60):
        text = "".join(rng.choice(ja, size=int(rng.integers(0, 25))))
        words = split_words(text, "Japanese")
        assert [w.cleaned for w in words] == _official_words(official, text, "Japanese"), text
        assert all(a < b for a, b in (w.span for w in words))
        text = "".join(rng.choice(ko, size=int(rng.integers(0, 25))))
        assert [w.cleaned for w in split_words(text, "Korean")] == _official_words(
            official, text, "Korean"
        ), text


def _random_classes(rng: np.random.Generator) -> np.ndarray:
    n = int(rng.choice([1, 2, 3, 4, 5, 8, 16, 40, 120, 400]))
    kind = rng.integers(0, 6)
    if kind == 0:  # noise
        return rng.integers(0, 50, size=n)
    if kind == 1:  # plateaus: few distinct values
        return np.sort(rng.integers(0, 6, size=n)) if rng.random() < 0.5 else rng.integers(0, 4, size=n)
    if kind == 2:  # all decreasing
        return np.sort(rng.integers(0, 1000, size=n))[::-1]
    base = np.sort(rng.integers(0, 2000, size=n))
    if kind == 3:  # sparse outliers
        hit = rng.random(n) < 0.15
        base[hit] = rng.integers(0, 2000, size=int(hit.sum()))
    elif kind == 4:  # long anomaly runs at both edges
        k = int(rng.integers(0, n // 2 + 1))
        base[:k] = rng.integers(1500, 3000, size=k)
        base[n - k :] = rng.integers(0, 100, size=k)
    else:  # runs of outliers of every length inside
        i = int(rng.integers(0, n))
        j = min(n, i + int(rng.integers(1, 12)))
        base[i:j] = rng.integers(0, 3000)
    return base


@pytest.mark.reference
def test_fix_timestamps_equals_official(official) -> None:
    rng = np.random.default_rng(2026)
    for _ in range(4000):
        classes = _random_classes(rng)
        ms = classes.astype(np.float32) * np.float32(80.0)  # what the official gets from torch
        assert fix_timestamps(ms) == official.fix_timestamp(ms), classes.tolist()
        ints = rng.integers(0, 100, size=int(rng.integers(1, 30)))  # other inputs go the same way
        assert fix_timestamps(ints) == official.fix_timestamp(ints), ints.tolist()


@pytest.mark.reference
def test_align_words_equal_official_parse(official) -> None:
    import torch

    rng = np.random.default_rng(5)
    text = "我们用AI技术，Hello世界。 It's a test, isn't it?"
    words = split_words(text, "Chinese")
    for _ in range(300):
        classes = _random_classes(rng)[: 2 * len(words)]
        if len(classes) < 2 * len(words):
            classes = np.concatenate([classes, rng.integers(0, 500, size=2 * len(words) - len(classes))])
        offset = float(rng.choice([0.0, 60.0, 179.987]))
        ms = (torch.from_numpy(classes.astype(np.int64)) * 80.0).numpy()
        ref = official.parse_timestamp([w.cleaned for w in words], ms)
        want = [
            (
                round(round(r["start_time"] / 1000.0, 3) + offset, 3),
                round(round(r["end_time"] / 1000.0, 3) + offset, 3),
            )
            for r in ref
        ]
        got = align_words(text, words, classes.astype(np.int32), time_offset=offset)
        assert [(w.start, w.end) for w in got] == want


@pytest.mark.reference
@pytest.mark.parametrize("version", ["4.57.6", "4.57.1", None])
def test_prompt_ids_equal_official_processor(tiny_dir: Path, tmp_path: Path, version: str | None) -> None:
    transformers_backend = pytest.importorskip("qwen_asr.core.transformers_backend")
    from qwen_serve.testing.clips import speech_like

    d = _aligner_dir(tiny_dir, tmp_path / "aligner", version)
    processor = transformers_backend.Qwen3ASRProcessor.from_pretrained(str(d), fix_mistral_regex=True)
    tok = load_aligner_tokenizer(d)
    mod = pytest.importorskip("qwen_asr.inference.qwen3_forced_aligner")
    official = mod.Qwen3ForceAlignProcessor()
    pcm = speech_like(2.3, seed=4)
    pad = tok.token_to_id("<|audio_pad|>")
    for language, texts in SENTENCES.items():
        for text in texts:
            words, input_text = official.encode_timestamp(text, language)
            ref = processor(text=[input_text], audio=[pcm], return_tensors="pt", padding=True)
            ref_ids = ref["input_ids"][0].tolist()
            ours = aligner_prompt_ids(
                tok, [w.cleaned for w in split_words(text, language)], ref_ids.count(pad)
            )
            assert ours == ref_ids, (language, text)
