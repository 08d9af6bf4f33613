"""Word timestamps: the text side of Qwen3-ForcedAligner.

libqwen runs the aligner (audio + prompt ids in, the head's argmax class at
every `<timestamp>` marker out); everything that knows text lives here, and
follows the official `qwen-asr` 0.0.6 package (`Qwen3ForceAlignProcessor`):

    split_words(text, language)        the words the aligner times, each with its place in the text
    aligner_prompt_ids(tok, words, n)  <|audio_start|> n x <|audio_pad|> <|audio_end|> w1 <ts><ts> w2 <ts><ts> ...
    fix_timestamps(ms)                 the official repair of non-monotonic marker times
    align_words(text, words, classes)  marker classes -> AlignedWord(word, start, end, span)
    AlignerText(model_dir)             all of it for one aligner checkpoint (tokenizer, config keys)

For one chunk of audio (offset seconds into the request, its text starting
at character char_offset of the whole transcript):

    words, ids = aligner.prompt(chunk_text, language, n_audio_tokens)   # skip the chunk if no words
    classes = native.align(chunk_pcm, ids)
    aligned += aligner.words(chunk_text, words, classes, offset, char_offset)

Words. A word is cleaned to letters, digits and `'` (Unicode categories L*
and N*). Japanese is cut with nagisa, Korean with soynlp's LTokenizer scored
by the official word list; every other language (Chinese included: the
official `encode_timestamp` sends it down the same path) is cut on
whitespace, each piece cleaned, and CJK ideographs inside it split out one
by one (a Latin run between them stays whole: "用AI做" -> 用, AI, 做).

Places. Each word also keeps the span [a, b) of the transcript it came from:
from its first kept character to its last (plus combining marks right after
it), so `text[a:b]` is the word as written ("e-mail", "don't", "नमस्ते"), and
the punctuation and spaces between spans let the API rebuild display text
("Hello," / "world.") and find sentence ends. `AlignedWord.word` is that
written form, which is what OpenAI's `words[].word` carries (no surrounding
punctuation); the cleaned form only feeds the aligner.

Prompt. The official processor tokenizes the whole aligner text at once, so
does aligner_prompt_ids. The official loader passes fix_mistral_regex=True,
with which transformers 4.57.6 swaps the tokenizer's split pattern for one
that also cuts case changes ("iPhone" -> "i", "Phone") when the checkpoint's
config.json has no transformers_version or one in (4.57.2, 5.0.0);
load_aligner_tokenizer does the same, or the ids would differ.

Times. The aligner's classes times `timestamp_segment_time` (80 ms) give
milliseconds, computed in float32 as the official torch code does;
`fix_timestamps` keeps the longest non-decreasing subsequence and repairs
the rest; word i gets (fixed[2i], fixed[2i+1]) in seconds rounded to 3
decimals, plus the chunk's offset for long audio (rounded again, as the
official `transcribe(..., return_time_stamps=True)` does).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .text import load_tokenizer

TIMESTAMP_TOKEN = "<timestamp>"
AUDIO_START, AUDIO_PAD, AUDIO_END = "<|audio_start|>", "<|audio_pad|>", "<|audio_end|>"
DEFAULT_SEGMENT_MS = 80.0
"""`timestamp_segment_time` of the released checkpoint: milliseconds per class."""
MAX_ALIGN_SECONDS = 180.0
"""The official package aligns long audio in chunks of at most this many seconds."""

KOREAN_DICT = "inference/assets/korean_dict_jieba.dict"
"""The word list of the official package (inside the installed `qwen_asr` package)."""
ALIGN_EXTRA_HINT = "pip install 'qwen-serve[align]'"


class MissingDependencyError(ImportError):
    """A language's word splitter needs a package that is not installed (message names it)."""


@dataclass(frozen=True)
class TextWord:
    """One word of a transcript, as the aligner sees it and where it was written."""

    cleaned: str
    """Letters, digits and `'` only: what goes into the aligner's prompt."""
    span: tuple[int, int]
    """[start, end) of the word in the text it was split from."""


@dataclass(frozen=True)
class AlignedWord:
    """A word of the transcript with its time in the audio."""

    word: str
    """The word as written in the transcript (`text[span[0]:span[1]]`), without surrounding punctuation
    (the cleaned word in the unexpected case of an empty span)."""
    start: float
    """Seconds from the start of the audio, rounded to ms."""
    end: float
    """Seconds from the start of the audio, rounded to ms."""
    span: tuple[int, int]
    """[start, end) of the word in the transcript (character offsets)."""


# ==== Characters ====================================================================


def is_kept_char(ch: str) -> bool:
    """Letters, digits (Unicode L*, N*) and the apostrophe: what a cleaned word is made of."""
    return ch == "'" or unicodedata.category(ch)[0] in "LN"


def clean_word(token: str) -> str:
    """'Hello,' -> 'Hello' (the official clean_token)."""
    return "".join(ch for ch in token if is_kept_char(ch))


_CJK_RANGES = (
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0x3400, 0x4DBF),  # Extension A
    (0x20000, 0x2A6DF),  # Extension B
    (0x2A700, 0x2B73F),  # Extension C
    (0x2B740, 0x2B81F),  # Extension D
    (0x2B820, 0x2CEAF),  # Extension E
    (0xF900, 0xFAFF),  # Compatibility Ideographs
)


def is_cjk_ideograph(ch: str) -> bool:
    """The ideograph blocks the official processor splits one character at a time."""
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "M"


def _span(text: str, first: int, last: int, limit: int) -> tuple[int, int]:
    """[first, last] widened over the combining marks right after `last` (not past `limit`)."""
    end = last + 1
    while end < limit and _is_mark(text[end]):
        end += 1
    return first, end


def _words_of_kept(text: str, kept: Sequence[int], limit: int) -> Iterator[TextWord]:
    """One word from the kept characters at positions `kept` of text."""
    if kept:
        yield TextWord("".join(text[i] for i in kept), _span(text, kept[0], kept[-1], limit))


# ==== Word splitting ================================================================


def _nonspace_runs(text: str) -> Iterator[tuple[int, int]]:
    """[a, b) of each run of non-whitespace characters: the pieces of str.split()."""
    start = None
    for i, ch in enumerate(text):
        if ch.isspace():
            if start is not None:
                yield start, i
                start = None
        elif start is None:
            start = i
    if start is not None:
        yield start, len(text)


def _split_spaced(text: str) -> list[TextWord]:
    """Whitespace pieces, cleaned, with CJK ideographs split out (official tokenize_space_lang)."""
    words: list[TextWord] = []
    for a, b in _nonspace_runs(text):
        run: list[int] = []  # kept non-CJK characters since the last ideograph
        for i in range(a, b):
            ch = text[i]
            if not is_kept_char(ch):
                continue
            if is_cjk_ideograph(ch):
                words.extend(_words_of_kept(text, run, b))
                run = []
                words.extend(_words_of_kept(text, [i], b))
            else:
                run.append(i)
        words.extend(_words_of_kept(text, run, b))
    return words


def _locate_tokens(
    text: str, tokens: Sequence[str], view: str, origin: Sequence[tuple[int, int]]
) -> list[TextWord]:
    """Words of a tokenizer's output, placed in text.

    `tokens` are consecutive pieces of `view`, a normalised copy of text whose
    character k came from text[origin[k][0]:origin[k][1]]. A token that cannot
    be found (it should not happen) keeps its word with an empty span.
    """
    words: list[TextWord] = []
    cursor = 0
    for token in tokens:
        cleaned = clean_word(token)
        at = view.find(token, cursor) if token else -1
        if at < 0:
            if cleaned:
                here = origin[cursor][0] if cursor < len(origin) else len(text)
                words.append(TextWord(cleaned, (here, here)))
            continue
        cursor = at + len(token)
        kept = [k for k in range(at, cursor) if is_kept_char(view[k])]
        if not cleaned or not kept:
            continue
        a, b = origin[kept[0]][0], origin[kept[-1]][1]
        words.append(TextWord(cleaned, _span(text, a, b - 1, len(text))))
    return words


def _nagisa_view(text: str) -> tuple[str, list[tuple[int, int]]]:
    """The text as nagisa segments it (rstrip, NFKC, İ -> I, ' ' -> '　'), and where each
    of its characters came from. NFKC is applied per cluster (a character and what
    composes with it), which gives the same string as normalising the whole text."""
    stripped = text.rstrip()
    clusters: list[tuple[int, int]] = []
    for i, ch in enumerate(stripped):
        if clusters:
            a, _ = clusters[-1]
            prev = stripped[a:i]
            if unicodedata.normalize("NFKC", prev + ch) != unicodedata.normalize(
                "NFKC", prev
            ) + unicodedata.normalize("NFKC", ch):
                clusters[-1] = (a, i + 1)
                continue
        clusters.append((i, i + 1))
    view_parts: list[str] = []
    origin: list[tuple[int, int]] = []
    for a, b in clusters:
        part = unicodedata.normalize("NFKC", stripped[a:b])
        view_parts.append(part)
        origin.extend([(a, b)] * len(part))
    view = "".join(view_parts)
    if view != unicodedata.normalize("NFKC", stripped):  # composition across clusters: one cluster
        view = unicodedata.normalize("NFKC", stripped)
        origin = [(0, len(stripped))] * len(view)
    return view.replace("İ", "I").replace(" ", "\u3000"), origin


def _split_japanese(text: str) -> list[TextWord]:
    try:
        import nagisa  # noqa: PLC0415 (loads its model at import: only when Japanese comes)
    except ImportError as e:
        raise MissingDependencyError(
            f"Japanese word timestamps need nagisa==0.2.11 ({ALIGN_EXTRA_HINT})"
        ) from e
    view, origin = _nagisa_view(text)
    return _locate_tokens(text, list(nagisa.tagging(text).words), view, origin)


def korean_dictionary_path() -> Path:
    """The official Korean word list, found in the installed `qwen-asr` distribution
    without importing it (importing qwen_asr imports torch)."""
    spec = importlib.util.find_spec("qwen_asr")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for root in roots:
        if (root / KOREAN_DICT).is_file():
            return root / KOREAN_DICT
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        path = Path(str(distribution("qwen-asr").locate_file(f"qwen_asr/{KOREAN_DICT}")))
        if path.is_file():
            return path
    except PackageNotFoundError:
        pass
    raise MissingDependencyError(
        "Korean word timestamps need the official word list qwen_asr/"
        f"{KOREAN_DICT} from the qwen-asr package: pip install --no-deps qwen-asr==0.0.6"
    )


@functools.cache
def _korean_tokenizer() -> Any:
    try:
        from soynlp.tokenizer import LTokenizer
    except ImportError as e:
        raise MissingDependencyError(
            f"Korean word timestamps need soynlp==0.0.493 ({ALIGN_EXTRA_HINT})"
        ) from e
    scores: dict[str, float] = {}
    with open(korean_dictionary_path(), encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields:
                scores[fields[0]] = 1.0
    return LTokenizer(scores=scores)


def _split_korean(text: str) -> list[TextWord]:
    tokens = _korean_tokenizer().tokenize(text)
    return _locate_tokens(text, tokens, text, [(i, i + 1) for i in range(len(text))])


def split_words(text: str, language: str | None) -> list[TextWord]:
    """The words the aligner times, in order, each with its span in text.

    Same words as the official `encode_timestamp(text, language)`; language as
    the model names it ("English", "Japanese"; case-insensitive, None or ""
    for unknown). Raises MissingDependencyError for Japanese without nagisa
    and Korean without soynlp or the official word list.
    """
    lang = (language or "").lower()
    if lang == "japanese":
        return _split_japanese(text)
    if lang == "korean":
        return _split_korean(text)
    return _split_spaced(text)


# ==== Prompt =========================================================================


def aligner_input_text(words: Sequence[str], n_audio_tokens: int) -> str:
    """The aligner's prompt: audio placeholders, then each word followed by two markers."""
    markers = TIMESTAMP_TOKEN * 2
    return AUDIO_START + AUDIO_PAD * n_audio_tokens + AUDIO_END + "".join(w + markers for w in words)


def aligner_prompt_ids(tokenizer: Tokenizer, words: Sequence[str], n_audio_tokens: int) -> list[int]:
    """Token ids of the aligner's prompt (cleaned words; n_audio_tokens = the encoder's output
    length), as the official processor tokenizes encode_timestamp's text: the whole string at once."""
    marker = tokenizer.token_to_id(TIMESTAMP_TOKEN)
    if marker is None:
        raise ValueError(f"the tokenizer has no {TIMESTAMP_TOKEN} token: not a forced-aligner checkpoint")
    ids = tokenizer.encode(aligner_input_text(words, n_audio_tokens), add_special_tokens=False).ids
    if ids.count(marker) != 2 * len(words):
        raise ValueError(f"aligner prompt: {ids.count(marker)} markers for {len(words)} words")
    return list(ids)


def load_aligner_tokenizer(model_dir: str | Path) -> Tokenizer:
    """The aligner checkpoint's tokenizer as the official loader builds it (engine.text's loader,
    which applies the split pattern transformers substitutes under fix_mistral_regex=True)."""
    model_dir = Path(model_dir)
    tok, _ = load_tokenizer(model_dir)
    if tok.token_to_id(TIMESTAMP_TOKEN) is None:
        raise ValueError(f"{model_dir}: the tokenizer has no {TIMESTAMP_TOKEN} token")
    return tok


class AlignerText:
    """The text side of one forced-aligner checkpoint: its tokenizer and the two extra keys
    of its config.json (`timestamp_token_id`, `timestamp_segment_time`)."""

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        self.tokenizer = load_aligner_tokenizer(model_dir)
        with open(model_dir / "config.json", encoding="utf-8") as f:
            config = json.load(f)
        self.segment_ms = float(config.get("timestamp_segment_time", DEFAULT_SEGMENT_MS))
        """Milliseconds per class of the aligner's head."""
        self.timestamp_token_id = int(self.tokenizer.token_to_id(TIMESTAMP_TOKEN))
        declared = config.get("timestamp_token_id")
        if declared is not None and int(declared) != self.timestamp_token_id:
            raise ValueError(
                f"{model_dir}: config.json says timestamp_token_id {declared}, "
                f"the tokenizer has {TIMESTAMP_TOKEN} = {self.timestamp_token_id}"
            )

    def prompt(
        self, text: str, language: str | None, n_audio_tokens: int
    ) -> tuple[list[TextWord], list[int]]:
        """(words, prompt ids) for a chunk's text; no words (nothing to align) gives ([], [])."""
        words = split_words(text, language)
        if not words:
            return [], []
        return words, aligner_prompt_ids(self.tokenizer, [w.cleaned for w in words], n_audio_tokens)

    def words(
        self,
        text: str,
        words: Sequence[TextWord],
        classes: Sequence[int] | np.ndarray,
        time_offset: float = 0.0,
        char_offset: int = 0,
    ) -> list[AlignedWord]:
        """align_words with this checkpoint's milliseconds per class."""
        return align_words(text, words, classes, self.segment_ms, time_offset, char_offset)


# ==== Times ==========================================================================


def _longest_non_decreasing(values: Sequence[float]) -> list[bool]:
    """Marks the longest non-decreasing subsequence the official O(n²) search picks, in O(n log n).

    The official search gives each element the first earlier element (lowest index) of the
    previous length that is <= it as parent, and ends at the first element of the greatest
    length. Elements of one length are strictly decreasing in index order (an equal or
    greater later one would be longer), so "first with value <= x" is a binary search.
    """
    n = len(values)
    tails: list[float] = []  # tails[L] = value of the latest element of length L + 1
    level_neg: list[list[float]] = []  # per length: -values in index order (increasing)
    level_idx: list[list[int]] = []
    parent = [-1] * n
    for i, x in enumerate(values):
        k = bisect_right(tails, x)
        if k > 0:
            p = bisect_left(level_neg[k - 1], -x)
            parent[i] = level_idx[k - 1][p]
        if k == len(tails):
            tails.append(x)
            level_neg.append([])
            level_idx.append([])
        else:
            tails[k] = x
        level_neg[k].append(-x)
        level_idx[k].append(i)
    normal = [False] * n
    i = level_idx[-1][0] if n else -1
    while i != -1:
        normal[i] = True
        i = parent[i]
    return normal


def fix_timestamps(ms: Sequence[float] | np.ndarray) -> list[int]:
    """The official fix_timestamp: keep the longest non-decreasing subsequence; a run of at
    most 2 others takes its nearer kept neighbour (the left one on a tie), a longer run is
    filled linearly between its neighbours; at an edge the one neighbour there is. Cut to
    whole ms (int()). An empty input gives [] (the official code raises)."""
    values = ms.tolist() if isinstance(ms, np.ndarray) else list(ms)
    n = len(values)
    normal = _longest_non_decreasing(values)
    result = list(values)
    i = 0
    while i < n:
        if normal[i]:
            i += 1
            continue
        j = i
        while j < n and not normal[j]:
            j += 1
        left = values[i - 1] if i > 0 else None  # kept neighbours keep their values
        right = values[j] if j < n else None
        count = j - i
        for k in range(i, j):
            if left is None or right is None:
                result[k] = right if left is None else left
            elif count <= 2:
                result[k] = left if k - (i - 1) <= j - k else right
            else:
                result[k] = left + (right - left) / (count + 1) * (k - i + 1)
        i = j
    return [int(v) for v in result]


def class_ms(classes: Sequence[int] | np.ndarray, segment_ms: float = DEFAULT_SEGMENT_MS) -> list[float]:
    """Marker classes -> milliseconds, in float32 like the official (int tensor x float)."""
    arr = np.asarray(classes).astype(np.float32) * np.float32(segment_ms)
    return [float(v) for v in arr.tolist()]


def align_words(
    text: str,
    words: Sequence[TextWord],
    classes: Sequence[int] | np.ndarray,
    segment_ms: float = DEFAULT_SEGMENT_MS,
    time_offset: float = 0.0,
    char_offset: int = 0,
) -> list[AlignedWord]:
    """Words with times from the aligner's marker classes (two per word, in prompt order).

    `words` = split_words(text, language) (the words the prompt was built from).
    For a chunk of long audio: time_offset = the chunk's start in seconds, and
    char_offset = where `text` starts in the whole transcript, so that the
    chunks' lists can simply be joined.
    """
    if len(classes) != 2 * len(words):
        raise ValueError(f"{len(classes)} timestamp classes for {len(words)} words (expected 2 per word)")
    fixed = fix_timestamps(class_ms(classes, segment_ms))
    out = []
    for i, w in enumerate(words):
        a, b = w.span
        out.append(
            AlignedWord(
                word=text[a:b] or w.cleaned,  # (a word nagisa's output could not place has no span)
                start=round(round(fixed[2 * i] / 1000.0, 3) + time_offset, 3),
                end=round(round(fixed[2 * i + 1] / 1000.0, 3) + time_offset, 3),
                span=(a + char_offset, b + char_offset),
            )
        )
    return out
