"""Phrases and subtitle cues from word timestamps.

Input: the transcript and its aligned words, each with its time and its span
[a, b) in the transcript (`AlignedWord` / `ResultWord`). The text between
spans (punctuation, spaces) is given back to the words as display pieces, so
that cue and segment texts are the transcript's own text:

    display_pieces(text, words)   one piece per word; the pieces concatenate to text
    phrases(text, words)          verbose_json segments: cut at sentence ends and pauses
    cues(text, words)             SRT/VTT cues laid out as subtitle tools do

Cue rules (the common broadcast guidelines, e.g. Netflix's and BBC's):
at most 2 lines of at most 42 columns (East Asian wide characters count 2,
so 21 ideographs; combining marks 0), at most 7 s on screen, cut preferably
at sentence ends, then at pauses of 0.5 s or more and at commas, always at
pauses of 1.5 s or more; two lines broken at punctuation or else as evenly
as possible. A cue lasts from its first word's start to its last word's end,
never longer; cues are in order and never overlap. A single word too wide
for a line or too long for 7 s gets a cue of its own.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

MAX_LINE_WIDTH = 42
"""Columns per line."""
MAX_LINES = 2
"""Lines per cue (the line breaker lays out one or two)."""
MAX_CUE_SECONDS = 7.0
CUE_PAUSE_SECONDS = 0.5
"""A gap this long is a good place to end a cue (like a comma)."""
CUE_FORCED_PAUSE_SECONDS = 1.5
"""A gap this long always ends a cue: no text on screen through a long silence."""
PHRASE_PAUSE_SECONDS = 0.8
"""A gap this long ends a verbose_json segment, as a sentence end does."""
MAX_PHRASE_SECONDS = 30.0
"""A longer sentence is cut at its best inner break (Whisper's segments stay in 30 s windows)."""

SENTENCE_ENDS = frozenset(".!?…。！？｡؟۔।॥‼⁇⁈⁉")
CLAUSE_ENDS = frozenset(",;:、，；：﹐﹑﹔﹕،؛—–")
ABBREVIATIONS = frozenset(
    ["mr", "mrs", "ms", "dr", "prof", "sr", "sra", "jr", "st", "vs", "eg", "ie", "cf", "approx", "inc", "ltd"]
)
"""Words after which a full stop usually does not end a sentence ("Dr. Smith")."""


class TimedWord(Protocol):
    """An aligned word (engine `AlignedWord`, result `ResultWord`)."""

    @property
    def word(self) -> str: ...
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def span(self) -> tuple[int, int]: ...


@dataclass(frozen=True)
class Phrase:
    """A run of words: a verbose_json segment or a cue."""

    start: float
    end: float
    text: str
    """The transcript's text of these words (punctuation included), lines joined with newlines for a cue."""
    first: int
    """Index of the first word."""
    stop: int
    """One past the index of the last word."""


# ==== Text around the words ==========================================================


def _spans(text: str, words: Sequence[TimedWord]) -> list[tuple[int, int]]:
    """Spans clamped into text and into order (each starts at or after the previous end)."""
    out = []
    prev = 0
    for w in words:
        a = min(max(int(w.span[0]), prev), len(text))
        b = min(max(int(w.span[1]), a), len(text))
        out.append((a, b))
        prev = b
    return out


def _cut(text: str, b: int, a: int) -> int:
    """Where the gap text[b:a] between two words is divided: after its last space, else
    before an opening bracket or quote, else at its end (punctuation trails its word)."""
    gap = text[b:a]
    for k in range(len(gap) - 1, -1, -1):
        if gap[k].isspace():
            return b + k + 1
    for k, ch in enumerate(gap):
        if unicodedata.category(ch) in ("Ps", "Pi"):
            return b + k
    return a


def display_pieces(text: str, words: Sequence[TimedWord]) -> list[str]:
    """The transcript shared out among its words: each piece is a word with the punctuation
    and space that follow it (and an opening quote or bracket before it); the first piece
    also takes any text before the first word, the last any after. The pieces concatenate
    to text (for at least one word)."""
    if not words:
        return []
    spans = _spans(text, words)
    cuts = [0] + [_cut(text, spans[i - 1][1], spans[i][0]) for i in range(1, len(spans))] + [len(text)]
    return [text[cuts[i] : cuts[i + 1]] for i in range(len(words))]


def _trailing(text: str, span: tuple[int, int], piece_end: int) -> str:
    return text[span[1] : piece_end]


def _is_sentence_end(word: str, trailing: str) -> bool:
    marks = {ch for ch in trailing if ch in SENTENCE_ENDS}
    if marks != {"."}:
        return bool(marks)
    # a full stop after an abbreviation or an initial does not end a sentence
    return not ("." in word or word.lower() in ABBREVIATIONS or (len(word) == 1 and word.isupper()))


@dataclass(frozen=True)
class _Layout:
    """What the cue and phrase builders need to know about each word."""

    pieces: list[str]
    starts: list[float]
    ends: list[float]
    sentence_end: list[bool]
    """The word ends a sentence."""
    clause_end: list[bool]
    """A comma, colon, semicolon or dash follows the word."""
    gap_after: list[float]
    """Silence between the word and the next (0 after the last)."""


def _layout(text: str, words: Sequence[TimedWord]) -> _Layout:
    pieces = display_pieces(text, words)
    spans = _spans(text, words)
    # Times in order and never overlapping (chunks of long audio are aligned apart).
    starts, ends = [], []
    t = 0.0
    for w in words:
        s = max(float(w.start), t)
        e = max(float(w.end), s)
        starts.append(s)
        ends.append(e)
        t = e
    sentence, clause = [], []
    piece_end = 0
    for w, sp, piece in zip(words, spans, pieces, strict=True):
        piece_end += len(piece)
        trailing = _trailing(text, sp, piece_end)
        sentence.append(_is_sentence_end(text[sp[0] : sp[1]] or w.word, trailing))
        clause.append(any(ch in CLAUSE_ENDS for ch in trailing) or " - " in trailing)
    gaps = [starts[i + 1] - ends[i] for i in range(len(words) - 1)] + [0.0]
    return _Layout(pieces, starts, ends, sentence, clause, gaps)


def _clean_line(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def width(s: str) -> int:
    """Columns on screen: East Asian wide and full-width characters 2, combining marks 0."""
    w = 0
    for ch in s:
        if unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        w += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return w


# ==== verbose_json segments ==========================================================


def _best_inner_break(lay: _Layout, i: int, j: int) -> int:
    """Where to cut words [i, j) in two: after a sentence end, else a comma or the longest
    pause, nearest the middle on a tie. Returns the first index of the second part."""
    mid = (lay.starts[i] + lay.ends[j - 1]) / 2

    def score(k: int) -> tuple[int, float, float]:  # cut between k-1 and k
        rank = 2 if lay.sentence_end[k - 1] else 1 if lay.clause_end[k - 1] else 0
        return rank, lay.gap_after[k - 1], -abs(lay.ends[k - 1] - mid)

    return max(range(i + 1, j), key=score)


def phrases(
    text: str,
    words: Sequence[TimedWord],
    pause: float = PHRASE_PAUSE_SECONDS,
    max_seconds: float = MAX_PHRASE_SECONDS,
) -> list[Phrase]:
    """Segments for verbose_json: a new one after each sentence end and each pause of at
    least `pause` seconds; one longer than max_seconds is cut at its best inner break."""
    if not words:
        return []
    lay = _layout(text, words)
    bounds = [0]
    for k in range(len(words) - 1):
        if lay.sentence_end[k] or lay.gap_after[k] >= pause:
            bounds.append(k + 1)
    bounds.append(len(words))
    parts: list[tuple[int, int]] = []
    todo = list(zip(bounds[:-1], bounds[1:], strict=True))[::-1]
    while todo:
        i, j = todo.pop()
        if j - i > 1 and lay.ends[j - 1] - lay.starts[i] > max_seconds:
            k = _best_inner_break(lay, i, j)
            todo += [(k, j), (i, k)]
        else:
            parts.append((i, j))
    return [Phrase(lay.starts[i], lay.ends[j - 1], "".join(lay.pieces[i:j]).strip(), i, j) for i, j in parts]


# ==== Subtitle cues ==================================================================

# Costs of ending a cue after a word (the cue layout minimises their sum).
_CUE_COST = 1.0  # every cue: fewer, fuller cues are better
_END_SENTENCE, _END_PAUSE, _END_CLAUSE, _END_WORD = 0.0, 1.0, 1.5, 4.0
_SHORT_CUE_SECONDS, _SHORT_CUE_COST = 1.0, 1.0  # a flash on screen is hard to read


class _Widths:
    """Line widths in O(1): a line of pieces [i, k) is their cleaned texts joined by one
    space wherever a piece ends with whitespace (as _clean_line of their concatenation)."""

    def __init__(self, pieces: Sequence[str]):
        self.core = [0]
        self.spaces = [0]
        for p in pieces:
            self.core.append(self.core[-1] + width(_clean_line(p)))
            self.spaces.append(self.spaces[-1] + (1 if p[-1:].isspace() else 0))

    def line(self, i: int, k: int) -> int:
        return self.core[k] - self.core[i] + self.spaces[k - 1] - self.spaces[i]


def _end_cost(lay: _Layout, k: int) -> float:
    """Cost of a cue boundary after word k."""
    if k == len(lay.pieces) - 1 or lay.sentence_end[k]:
        return _END_SENTENCE
    if lay.gap_after[k] >= CUE_PAUSE_SECONDS:
        return _END_PAUSE
    return _END_CLAUSE if lay.clause_end[k] else _END_WORD


def _line_break(lay: _Layout, wid: _Widths, i: int, j: int, max_width: int) -> int | None:
    """For words [i, j): j when they fit on one line (or are a single word), else the first
    word of the second line: after punctuation if possible, else the most even break;
    None when they do not fit on two lines."""
    if j - i == 1 or wid.line(i, j) <= max_width:
        return j
    best: tuple[int, int] | None = None
    for k in range(i + 1, j):
        top, bottom = wid.line(i, k), wid.line(k, j)
        if top > max_width:
            break
        if bottom > max_width:
            continue
        score = abs(top - bottom) - (40 if lay.sentence_end[k - 1] else 25 if lay.clause_end[k - 1] else 0)
        if best is None or score < best[0]:
            best = (score, k)
    return best[1] if best else None


def cues(
    text: str,
    words: Sequence[TimedWord],
    max_width: int = MAX_LINE_WIDTH,
    max_seconds: float = MAX_CUE_SECONDS,
) -> list[Phrase]:
    """Subtitle cues from aligned words (see the module docstring for the rules); the text
    of a two-line cue has its lines joined by a newline.

    The cues are the partition of the words that minimises a cost (one unit per cue,
    plus a cost for each boundary by what it falls on: nothing after a sentence end, more
    after a pause or a comma, most between two words; plus a cost for cues under 1 s),
    among the partitions that respect the limits: dynamic programming over the words."""
    n = len(words)
    if n == 0:
        return []
    lay = _layout(text, words)
    wid = _Widths(lay.pieces)
    inf = float("inf")
    best = [0.0] + [inf] * n  # best[j]: cost of laying out words [0, j)
    choice = [(0, 0)] * (n + 1)  # (first word, line break) of the last cue of best[j]
    for i in range(n):
        for j in range(i + 1, n + 1):
            if j - i > 1 and (
                lay.ends[j - 1] - lay.starts[i] > max_seconds
                or lay.gap_after[j - 2] >= CUE_FORCED_PAUSE_SECONDS
                or wid.line(i, j) > MAX_LINES * max_width + 1
            ):
                break  # more words only make it longer
            k = _line_break(lay, wid, i, j, max_width)
            if k is None:
                continue
            cost = best[i] + _CUE_COST + _end_cost(lay, j - 1)
            if lay.ends[j - 1] - lay.starts[i] < _SHORT_CUE_SECONDS:
                cost += _SHORT_CUE_COST
            if cost < best[j]:
                best[j], choice[j] = cost, (i, k)
    out: list[Phrase] = []
    j = n
    while j > 0:
        i, k = choice[j]
        lines = [_clean_line("".join(lay.pieces[a:b])) for a, b in ((i, k), (k, j)) if a < b]
        out.append(Phrase(lay.starts[i], lay.ends[j - 1], "\n".join(lines), i, j))
        j = i
    return out[::-1]
