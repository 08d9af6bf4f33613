"""The text side of the engine: tokenizer, chat prompt, output parsing.

Everything here follows the official `qwen-asr` package: the prompt is the
checkpoint's own chat template rendered with a system message (the context)
and one audio item, the single audio placeholder expanded to one
`<|audio_pad|>` per encoder token, and `language X<asr_text>` appended when
the language is forced. The model answers `language X<asr_text>transcript`.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

# The languages the official package accepts (qwen_asr.inference.utils): one table for the
# whole project, re-exported here for the engine's callers.
from ..languages import SUPPORTED_LANGUAGES

ASR_TEXT_TAG = "<asr_text>"
LANG_PREFIX = "language "

# Qwen2's pre-tokenizer split, used when a checkpoint ships vocab.json +
# merges.txt without a tokenizer.json.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def _byte_level_chars() -> dict[str, int]:
    """The characters byte-level BPE writes the 256 byte values as (GPT-2's table), to bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1)]
    printable += range(ord("\u00ae"), ord("\u00ff") + 1)
    chars = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in set(printable)]
    chars.update((chr(256 + i), b) for i, b in enumerate(others))
    return chars


BYTE_LEVEL_CHARS = _byte_level_chars()


def token_bytes(tokenizer: Tokenizer, token_id: int) -> bytes:
    """The bytes a token stands for (an added token: its UTF-8 content)."""
    piece = tokenizer.id_to_token(token_id) or ""
    if token_id in tokenizer.get_added_tokens_decoder() or not all(c in BYTE_LEVEL_CHARS for c in piece):
        return piece.encode()
    return bytes(BYTE_LEVEL_CHARS[c] for c in piece)


def normalize_language(language: str) -> str:
    """'cHINese' -> 'Chinese' (the official normalisation); ValueError when unsupported."""
    s = str(language).strip()
    if not s:
        raise ValueError("language is empty")
    name = s[:1].upper() + s[1:].lower()
    if name not in SUPPORTED_LANGUAGES:
        raise ValueError(f"unsupported language: {language!r}; supported: {', '.join(SUPPORTED_LANGUAGES)}")
    return name


REPEAT_THRESHOLD = 20  # the official package collapses a unit repeated more often than this
REPEAT_MAX_UNIT = 20


def _collapse_char_runs(s: str, limit: int) -> str:
    out = []
    for ch, group in itertools.groupby(s):
        run = sum(1 for _ in group)
        out.append(ch if run > limit else ch * run)
    return "".join(out)


def _collapse_pattern_runs(s: str, limit: int, max_unit: int) -> str:
    """The first unit (1..max_unit chars) found repeated `limit` times in a row is kept once."""
    n = len(s)
    if n < 2 * limit:
        return s
    for i in range(n - 2 * limit + 1):
        for k in range(1, max_unit + 1):
            if i + k * limit > n:
                break
            unit = s[i : i + k]
            if all(s[i + r * k : i + (r + 1) * k] == unit for r in range(1, limit)):
                end = i + limit * k
                while end + k <= n and s[end : end + k] == unit:
                    end += k
                return s[:i] + unit + _collapse_pattern_runs(s[end:], limit, max_unit)
    return s


def _periodic_streaks(s: str) -> list[tuple[int, int, int]]:
    """For each unit length k: (k, longest run of s[j] == s[j+k], trailing run of it)."""
    a = np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32)
    out = []
    for k in range(1, REPEAT_MAX_UNIT + 1):
        if a.size <= k:
            out.append((k, 0, 0))
            continue
        eq = np.concatenate(([False], a[:-k] == a[k:], [False]))
        edges = np.flatnonzero(np.diff(eq.astype(np.int8)))
        runs = edges[1::2] - edges[::2]
        longest = int(runs.max()) if runs.size else 0
        trailing = int(runs[-1]) if runs.size and edges[-1] == a.size - k else 0
        out.append((k, longest, trailing))
    return out


def fix_repetitions(s: str) -> str:
    """Collapses runaway repetitions as the official parser does (a char or a
    unit of up to 20 chars repeated more than 20 times is kept once)."""
    if len(s) <= REPEAT_THRESHOLD:
        return s
    # Fast path: with no unit repeated `limit` times anywhere, both passes change nothing.
    if all(longest < (REPEAT_THRESHOLD - 1) * k for k, longest, _ in _periodic_streaks(s)):
        return s
    return _collapse_pattern_runs(_collapse_char_runs(s, REPEAT_THRESHOLD), REPEAT_THRESHOLD, REPEAT_MAX_UNIT)


def stable_length(s: str) -> int:
    """How much of s no later text can change through fix_repetitions: the
    tail that could still grow into a repeated run (periodic with a unit of
    at most 20 chars, or the last 20 chars) is held back."""
    r = len(s) - REPEAT_MAX_UNIT
    for k, _, trailing in _periodic_streaks(s):
        if trailing:
            r = min(r, len(s) - trailing - k)
    return max(r, 0)


def parse_output(raw: str, forced_language: str | None = None) -> tuple[str, str]:
    """Splits the model's raw answer into (language, text), as the official parser does.

    "language English<asr_text>Hello" -> ("English", "Hello"); no tag -> ("", raw);
    "language None<asr_text>" -> ("", ""); with a forced language the whole answer is text.
    """
    s = (raw or "").strip()
    if not s:
        return "", ""
    s = fix_repetitions(s)
    if forced_language:
        return forced_language, s
    if ASR_TEXT_TAG not in s:
        return "", s
    meta, text = s.split(ASR_TEXT_TAG, 1)
    if "language none" in meta.lower():
        return "", text.strip()
    language = ""
    for line in meta.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.lower().startswith(LANG_PREFIX):
            value = line[len(LANG_PREFIX) :].strip()
            if value:
                language = value[:1].upper() + value[1:].lower()
        break
    return language, text.strip()


def merge_languages(languages: Sequence[str]) -> str:
    """["Chinese", "English", "English"] -> "Chinese,English" (drops empties and repeats)."""
    out: list[str] = []
    for lang in languages:
        lang = (lang or "").strip()
        if lang and (not out or out[-1] != lang):
            out.append(lang)
    return ",".join(out)


def _load_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


# transformers 4.57.6, `fix_mistral_regex=True` (the official loaders of the ASR model and of the
# forced aligner pass it): the pre-tokenizer split that replaces a checkpoint's own when its
# config.json says so (see _needs_split_fix).
_FIXED_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_MISTRAL_TYPES = ("mistral", "mistral3", "voxtral", "ministral", "pixtral")


def _version(v: str) -> tuple[tuple[int, ...], int]:
    """'4.57.2' -> ((4, 57, 2), 1): a pre-release ('5.0.0rc1', '4.57.0.dev0') sorts before
    its release, a post-release after it (enough of PEP 440 for transformers' comparisons)."""
    m = re.match(r"v?(\d+(?:\.\d+)*)\.?(.*)", v.strip())
    if not m:
        return (), 0
    release = [int(x) for x in m.group(1).split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    rest = m.group(2)
    return tuple(release), (2 if rest.startswith("post") else 0) if rest else 1


def _needs_split_fix(model_dir: Path) -> bool:
    """Whether transformers 4.57.6 with fix_mistral_regex=True replaces the checkpoint's
    split pattern: for a local checkpoint whose config.json has no transformers_version,
    one in (4.57.2, 5.0.0), or a Mistral model_type."""
    path = model_dir / "config.json"
    if not path.is_file():
        return False
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    written = config.get("transformers_version")
    model_type = config.get("model_type")
    if written and _version(str(written)) <= _version("4.57.2"):
        return model_type is None or model_type in _MISTRAL_TYPES
    return not (written and _version(str(written)) >= _version("5.0.0"))


def load_tokenizer(model_dir: Path) -> tuple[Tokenizer, dict[str, Any]]:
    """HF `tokenizers` Tokenizer for a checkpoint, and its tokenizer_config.json, as the official
    loader builds it (with fix_mistral_regex=True: see _needs_split_fix)."""
    config_path = model_dir / "tokenizer_config.json"
    config = _load_json(config_path) if config_path.exists() else {}
    if (model_dir / "tokenizer.json").exists():
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    elif (model_dir / "vocab.json").exists() and (model_dir / "merges.txt").exists():
        bpe = models.BPE.from_file(str(model_dir / "vocab.json"), str(model_dir / "merges.txt"))
        tok = Tokenizer(bpe)
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
    else:
        raise FileNotFoundError(f"no tokenizer.json or vocab.json + merges.txt in {model_dir}")
    if _needs_split_fix(model_dir):
        pre = tok.pre_tokenizer
        if not isinstance(pre, pre_tokenizers.Sequence):
            raise ValueError(f"{model_dir}: unexpected pre-tokenizer {type(pre).__name__}")
        pre[0] = pre_tokenizers.Split(Regex(_FIXED_SPLIT), behavior="isolated")
    added = config.get("added_tokens_decoder") or {}
    for idx in sorted(added, key=int):
        entry = added[idx]
        token = AddedToken(
            entry["content"],
            single_word=entry.get("single_word", False),
            lstrip=entry.get("lstrip", False),
            rstrip=entry.get("rstrip", False),
            normalized=entry.get("normalized", False),
            special=entry.get("special", False),
        )
        if tok.token_to_id(entry["content"]) != int(idx):
            if entry.get("special", False):
                tok.add_special_tokens([token])
            else:
                tok.add_tokens([token])
        if tok.token_to_id(entry["content"]) != int(idx):
            raise ValueError(f"tokenizer: added token {entry['content']!r} does not get id {idx}")
    return tok, config


def load_chat_template(model_dir: Path, tokenizer_config: dict[str, Any]) -> str:
    """The checkpoint's chat template: chat_template.jinja, chat_template.json or tokenizer_config.json."""
    if (model_dir / "chat_template.jinja").exists():
        return (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if (model_dir / "chat_template.json").exists():
        template = _load_json(model_dir / "chat_template.json").get("chat_template")
        if isinstance(template, str):
            return template
    template = tokenizer_config.get("chat_template")
    if isinstance(template, str):
        return template
    raise FileNotFoundError(f"no chat template in {model_dir}")


def render_prompt(template: str, context: str, special_tokens: dict[str, str]) -> str:
    """Renders the chat template as transformers' apply_chat_template does
    (sandboxed jinja2, trim_blocks, lstrip_blocks), generation prompt on."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(f"chat template: {message}")

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, **_: Any) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    messages = [
        {"role": "system", "content": context or ""},
        {"role": "user", "content": [{"type": "audio", "audio": ""}]},
    ]
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, **special_tokens)


class IncrementalText:
    """Turns generated ids into text deltas without splitting a UTF-8 character,
    and keeps the `language X<asr_text>` prefix out of the deltas.

    The deltas always concatenate to a prefix of the final parsed text; the
    final text is parse_output() of the whole raw answer.

    Each push costs O(new tokens) in the common case (no runaway repetition):
    - Detokenization decodes only a short window (the prefix/read-offset technique):
      ids[:read] decoded is `raw` (a point where the decode did not end in U+FFFD, so the
      byte-level text ends on a whole character and decode(ids) == decode(ids[:prefix]) +
      decode(ids[prefix:])); the new text is decode(ids[prefix:]) minus decode(ids[prefix:read]).
    - The repetition fix: fix_repetitions(x) is x itself unless x has a streak x[p] == x[p-k]
      of at least 19k positions for some k <= 20 (a unit repeated 20 times: its fast path).
      The run lengths run_k(p) only depend on x[:p+1], so they are kept per character as the
      text grows (20 comparisons a character); `_hit` is the first p where a streak reaches
      19k. While the stripped raw text s has no hit, neither has its stable prefix P (a prefix
      of s), so fix_repetitions(P) == P and fix_repetitions(s) == s starts with it: `_visible`
      is P, exactly as the whole-string computation. stable_length(s) only needs the trailing
      run of each k, run_k(len(s) - 1), so it is O(20). Only when s has a hit (a unit already
      repeated 20 times) is the whole-string computation run, as before.
    """

    def __init__(self, tokenizer: Tokenizer, forced_language: str | None):
        self._tok = tokenizer
        self._forced = forced_language
        self.ids: list[int] = []
        self.raw = ""
        self.emitted = ""
        self._prefix = 0  # ids[:prefix] and ids[:read] decode to text ending on a whole character
        self._read = 0
        self._reset()

    def _reset(self) -> None:
        """Forgets the text (not the ids)."""
        self.raw = ""
        self._s = ""  # raw.lstrip(), grown with raw
        self._core = 0  # len(raw.strip()) (the stripped text is self._s[:self._core])
        self._runs: list[list[int]] = [[] for _ in range(REPEAT_MAX_UNIT)]  # run_k(p), k = index + 1
        self._hit: int | None = None  # first p with run_k(p) >= (REPEAT_THRESHOLD - 1) * k
        self._tag = -1  # first index of ASR_TEXT_TAG in self._s, -1 while none
        self._fixed_cache: tuple[int, str] = (-1, "")

    def _append(self, text: str) -> None:
        """raw += text, with the per-character bookkeeping of _s."""
        self.raw += text
        if not self._s:
            text = text.lstrip()
            if not text:
                return
        start = len(self._s)
        s = self._s = self._s + text
        stripped = text.rstrip()
        if stripped:
            self._core = start + len(stripped)
        if self._tag < 0:
            self._tag = s.find(ASR_TEXT_TAG, max(0, start - len(ASR_TEXT_TAG) + 1))
        runs = self._runs
        for p in range(start, len(s)):
            ch = s[p]
            for k in range(1, REPEAT_MAX_UNIT + 1):
                run = runs[k - 1]
                if p >= k and s[p - k] == ch:
                    r = run[p - 1] + 1
                    run.append(r)
                    if r >= (REPEAT_THRESHOLD - 1) * k and self._hit is None:
                        self._hit = p
                else:
                    run.append(0)

    def _stable_length(self) -> int:
        """stable_length(self._s[:self._core]) from the kept trailing runs."""
        n = self._core
        r = n - REPEAT_MAX_UNIT
        for k in range(1, REPEAT_MAX_UNIT + 1):
            trailing = self._runs[k - 1][n - 1] if n - 1 >= k else 0
            if trailing:
                r = min(r, n - trailing - k)
        return max(r, 0)

    def _visible(self) -> str:
        """The part of the raw answer that is already final transcript text."""
        n = self._core
        if not n:
            return ""
        # Text that can no longer change through the repetition fix.
        length = self._stable_length()
        if self._hit is None or self._hit >= n:
            # No unit repeated 20 times anywhere in raw.strip(): fix_repetitions is the identity
            # on it and on its stable prefix (see the class docstring).
            fixed = self._s[:length]
            tag = self._tag if self._tag >= 0 and self._tag + len(ASR_TEXT_TAG) <= length else -1
        else:
            raw = self._s[:n]
            if self._fixed_cache[0] == length:
                fixed = self._fixed_cache[1]
            else:
                fixed = fix_repetitions(raw[:length])
                self._fixed_cache = (length, fixed)
            if not fix_repetitions(raw).startswith(fixed):
                return self.emitted
            tag = fixed.find(ASR_TEXT_TAG)
        if self._forced:
            text = fixed
        elif tag >= 0:
            text = fixed[tag + len(ASR_TEXT_TAG) :]
        elif fixed[: len(LANG_PREFIX)].lower().startswith(LANG_PREFIX.strip()) or (
            len(fixed) <= len(LANG_PREFIX) and LANG_PREFIX.strip().startswith(fixed.lower())
        ):
            return ""  # still inside the language prefix (or could be)
        else:
            text = fixed
        # parse_output strips both ends: hold back whitespace at either edge.
        return text.strip()

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        window = self._tok.decode(self.ids[self._prefix :], skip_special_tokens=True)
        if window.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        head = self._tok.decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        if window.startswith(head):
            new = window[len(head) :]
        else:  # not prefix-stable here (not a byte-level decoder): the whole text, O(n)
            new = self._tok.decode(self.ids, skip_special_tokens=True)
            self._reset()
        self._prefix, self._read = self._read, len(self.ids)
        self._append(new)
        visible = self._visible()
        if not visible.startswith(self.emitted):
            return ""  # cannot happen with a prefix-stable decoder; be safe
        delta = visible[len(self.emitted) :]
        self.emitted = visible
        return delta

    def finish(self) -> tuple[str, str, str]:
        """(language, text, last delta) for the whole answer."""
        self.raw = self._tok.decode(self.ids, skip_special_tokens=True)
        language, text = parse_output(self.raw, self._forced)
        delta = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text if delta or text == self.emitted else self.emitted
        return language, text, delta
