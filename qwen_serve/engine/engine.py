"""Engine: one loaded Qwen3-ASR checkpoint, text in and out.

    with Engine("models/qwen3-asr-0.6b") as engine:
        result = engine.transcribe(pcm)            # pcm: float32, 16 kHz, mono
        for delta in engine.stream(pcm): ...

The engine builds the official prompt, runs libqwen (mel -> encoder ->
decoder, greedy), decodes ids with HF `tokenizers`, and parses the answer.
Long audio is cut at quiet points into chunks of at most `max_chunk_seconds`;
the chunks decode as parallel sequences and their text comes out in order.

An Engine serves many requests at once: `transcribe` and `stream` are safe
from any thread, concurrently. Up to `max_batch` sequences decode together
(one pass over the weights per token for all of them) on the scheduler
thread (scheduler.py); each gets exactly the tokens it gets alone.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path

import numpy as np

from ._native import QWEN_DONE, NativeModel
from .chunking import SAMPLE_RATE, split_long_audio
from .scheduler import TIMING_KEYS, ChunkJob, EngineBusy, Request, Scheduler, TokenEvent
from .text import (
    ASR_TEXT_TAG,
    SUPPORTED_LANGUAGES,
    IncrementalText,
    load_chat_template,
    load_tokenizer,
    merge_languages,
    normalize_language,
    render_prompt,
    token_bytes,
)
from .types import Segment, Timings, TokenLogprob, Transcription, Usage

DEFAULT_MAX_NEW_TOKENS = 512  # per chunk, as the official transformers backend
DEFAULT_MAX_CHUNK_SECONDS = 60.0
DEFAULT_MAX_BATCH = 8

__all__ = ["Engine", "EngineBusy", "TranscriptionStream"]


class Engine:
    """A Qwen3-ASR checkpoint directory loaded into libqwen."""

    def __init__(
        self,
        model_dir: str | Path,
        threads: int | None = None,
        isa: str = "auto",
        max_chunk_seconds: float = DEFAULT_MAX_CHUNK_SECONDS,
        max_batch: int = DEFAULT_MAX_BATCH,
        kv_budget_tokens: int | None = None,
        max_waiting: int | None = None,
        precision: str = "exact",
        encoder_cache_windows: int = 0,
        prefix_cache_tokens: int = 0,
        weight_cache: str | Path | None = None,
    ):
        """`encoder_cache_windows`: complete 8 s encoder windows libqwen keeps to reuse when the
        same audio comes again (a live turn's earlier windows, a repeated request); 0 is libqwen's
        default (32), a negative number turns the cache off. `prefix_cache_tokens`: KV rows of
        prompt prefixes (up to their audio that can still change) libqwen keeps, so that the next
        decode of a growing turn prefills only what changed; 0 is libqwen's default (1024, about
        235 MB), negative turns it off. Neither changes a result by a bit. `weight_cache`: a
        directory where libqwen keeps the weights it packs at load (precision fast), so that the
        next load maps them instead (no quantizing; processes share the pages); None: none. The
        same bits either way."""
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"no Qwen3-ASR checkpoint at {self.model_dir} (config.json missing)")
        self.tokenizer, tok_config = load_tokenizer(self.model_dir)
        self.chat_template = load_chat_template(self.model_dir, tok_config)
        self._special_tokens = {
            k: v for k, v in tok_config.items() if k.endswith("_token") and isinstance(v, str)
        }
        self.audio_token = str(tok_config.get("audio_token", "<|audio_pad|>"))
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if kv_budget_tokens is None:  # room for max_batch sequences of the longest chunk
            per_sequence = (
                int(max_chunk_seconds * 13) + 64 + DEFAULT_MAX_NEW_TOKENS
            )  # 13 audio tokens a second
            kv_budget_tokens = max_batch * per_sequence
        self.native = NativeModel(
            self.model_dir,
            threads=threads,
            isa=isa,
            max_sequences=max_batch,
            kv_budget_tokens=kv_budget_tokens,
            precision=precision,
            encoder_cache_windows=encoder_cache_windows,
            prefix_cache_tokens=prefix_cache_tokens,
            weight_cache=weight_cache,
        )
        if self.tokenizer.token_to_id(self.audio_token) != self.native.audio_token_id:
            raise ValueError(
                f"tokenizer id of {self.audio_token} differs from config.json audio_token_id "
                f"{self.native.audio_token_id}"
            )
        self.eos_ids = self._eos_ids()
        self.asr_text_id = self.tokenizer.token_to_id(ASR_TEXT_TAG)
        self.supported_languages = self._languages()
        self.max_chunk_seconds = float(max_chunk_seconds)
        self.max_batch = int(max_batch)
        self._scheduler = Scheduler(
            self.native,
            max_waiting=max_batch if max_waiting is None else int(max_waiting),
            kv_budget_tokens=kv_budget_tokens,
        )

    @property
    def weight_cache_state(self) -> str:
        """What the load did with the weight cache: "none", "written", "loaded" or "failed"."""
        return self.native.weight_cache_state

    def stats(self) -> dict[str, int]:
        """Sequences holding a slot ("active"; the most at once so far: "peak_active"; of them not
        yet past their encoder and prefill: "admitting"), requests waiting for their first one
        ("waiting"), "max_batch", and since the start the scheduling steps ("steps") and the
        sequences in them summed over steps ("step_sequences"), and the encoder window cache's
        "encoder_cache_hits" and "encoder_cache_misses" (complete windows reused / encoded), and the
        prefix cache's "prefix_cache_hits" (sequences that started after a kept prompt prefix) and
        "prefix_cache_tokens_reused" (prompt rows they did not prefill)."""
        return self._scheduler.stats()

    def _eos_ids(self) -> list[int]:
        ids = [self.tokenizer.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>")]
        return [i for i in ids if i is not None] or [151645, 151643]

    def _languages(self) -> list[str]:
        config = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))
        langs = config.get("support_languages")
        if isinstance(langs, list) and langs:
            return [str(x) for x in langs]
        return list(SUPPORTED_LANGUAGES)

    # ---- life cycle -------------------------------------------------------
    def close(self) -> None:
        """Stops the scheduler (running requests end with AbortedError) and frees the model."""
        self._scheduler.close()
        self.native.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- prompt -----------------------------------------------------------
    def prompt_text(self, n_audio_tokens: int, context: str = "", language: str | None = None) -> str:
        base = render_prompt(self.chat_template, context, self._special_tokens)
        if base.count(self.audio_token) != 1:
            raise ValueError("the chat template must render exactly one audio placeholder")
        text = base.replace(self.audio_token, self.audio_token * n_audio_tokens, 1)
        if language:
            text += f"language {language}<asr_text>"
        return text

    def prompt_ids(self, n_samples: int, context: str = "", language: str | None = None) -> list[int]:
        """Token ids of the official prompt for n_samples of audio."""
        n_audio = self.native.audio_token_count(n_samples)
        text = self.prompt_text(n_audio, context, language)
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    # ---- transcription ----------------------------------------------------
    def transcribe(
        self,
        pcm: np.ndarray,
        language: str | None = None,
        context: str = "",
        max_new_tokens: int | None = None,
        prefix_ids: Sequence[int] = (),
        logprobs: bool = False,
    ) -> Transcription:
        stream = self.stream(
            pcm,
            language=language,
            context=context,
            max_new_tokens=max_new_tokens,
            prefix_ids=prefix_ids,
            logprobs=logprobs,
        )
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def stream(
        self,
        pcm: np.ndarray,
        language: str | None = None,
        context: str = "",
        max_new_tokens: int | None = None,
        prefix_ids: Sequence[int] = (),
        logprobs: bool = False,
    ) -> TranscriptionStream:
        """Text deltas as they are decoded; `.result` holds the Transcription at the end.

        The request is queued at once (EngineBusy when it cannot be taken).

        `logprobs`: the result lists each text token with its log-probability, and
        `take_logprobs()` hands out those that arrived since its last call (after a delta: the
        tokens behind it and any held back before). Costs a softmax over the vocabulary a token
        (with `fast`, also the whole LM head for that row: a quarter of a 0.6B decode step alone).

        `prefix_ids` is the start of the answer, forced: it goes into the first chunk's prompt
        and decoding goes on after it (live transcription re-decodes a growing turn this way,
        see `stable_text`). Its text is not yielded again, the result's text and token_ids
        include it, max_new_tokens bounds the answer with it, and usage.output_tokens counts
        only what was generated. It must have been decoded from audio inside the first chunk
        (the first max_chunk_seconds - 5 s)."""
        forced = normalize_language(language) if language else None
        audio = np.ascontiguousarray(pcm, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"pcm must be 1-D (mono), got shape {audio.shape}")
        if not np.all(np.isfinite(audio)):
            raise ValueError("pcm contains NaN or infinite samples")
        limit = DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else int(max_new_tokens)
        if limit < 1:
            raise ValueError("max_new_tokens must be at least 1")
        chunks = [
            (chunk, offset)
            for chunk, offset in split_long_audio(audio, self.max_chunk_seconds)
            if self.native.audio_token_count(chunk.size)  # shorter than one mel frame: nothing to hear
        ]
        prefix = [int(i) for i in prefix_ids]
        jobs = [
            ChunkJob(
                chunk,
                self.prompt_ids(chunk.size, context or "", forced) + (prefix if i == 0 else []),
                max(1, limit - len(prefix)) if i == 0 else limit,
            )
            for i, (chunk, _) in enumerate(chunks)
        ]
        request = Request(jobs, self.eos_ids, logprobs=logprobs)
        if jobs:
            self._scheduler.submit(request)
        offsets = [offset for _, offset in chunks]
        return TranscriptionStream(self, request, offsets, audio.size, forced, prefix if jobs else [])

    def fix_prefix(
        self, answer_ids: Sequence[int], n_fixed: int, hold_back: int, language: str | None = None
    ) -> tuple[list[int], str]:
        """Of a partial answer (a decode of a live turn's audio so far, after its `n_fixed` fixed
        ids), the ids that are fixed from now on: all but the last `hold_back` (the audio's end
        may still change them, as the official streaming decode rolls back its last tokens),
        never fewer than before, never a stop token. With their text (`stable_text`)."""
        ids = [int(i) for i in answer_ids]
        while len(ids) > n_fixed and ids[-1] in self.eos_ids:
            ids.pop()
        fixed = ids[: max(n_fixed, len(ids) - hold_back)]
        return fixed, self.stable_text(fixed, language)

    def stable_text(self, ids: Sequence[int], language: str | None = None) -> str:
        """The text `stream` has yielded once the answer has reached `ids` (the same chunk-local
        rules: whole characters only, no `language X<asr_text>` prefix, edges held back).

        Live transcription fixes a prefix of a turn's answer, sends this text of it, and
        passes the prefix as `prefix_ids` to the next decode of the grown turn, whose deltas
        then continue this text exactly."""
        inc = IncrementalText(self.tokenizer, normalize_language(language) if language else None)
        for token in ids:
            inc.push(int(token))
        return inc.emitted


class TranscriptionStream:
    """Iterator of text deltas; `result` is set once it is exhausted.

    close() (or dropping it) stops decoding: the request's sequences end at once.
    """

    def __init__(
        self,
        engine: Engine,
        request: Request,
        offsets: list[float],
        n_samples: int,
        language: str | None,
        prefix: list[int],
    ):
        self.result: Transcription | None = None
        self._engine = engine
        self._request = request
        self._pending: dict[int, list[TokenEvent]] = {}  # events of later chunks, until their turn
        self._logprobs: list[TokenLogprob] | None = [] if request.logprobs else None
        self._taken = 0  # of them handed out by take_logprobs
        self._gen = self._run(offsets, n_samples, language, prefix)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._gen)

    def take_logprobs(self) -> list[TokenLogprob]:
        """The text tokens' log-probabilities that came since the last call (`logprobs` requests;
        else always empty). Call it from the thread that iterates."""
        if not self._logprobs:
            return []
        new = self._logprobs[self._taken :]
        self._taken = len(self._logprobs)
        return new

    def close(self) -> None:
        """Stops decoding; safe from any thread (an iteration running there ends with AbortedError)."""
        self._engine._scheduler.cancel(self._request)
        with contextlib.suppress(ValueError):  # ValueError: iterating in another thread right now
            self._gen.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._engine._scheduler.cancel(self._request)

    def _event(self, chunk: int) -> TokenEvent:
        """The next event of `chunk`, keeping those of later chunks for their turn."""
        pending = self._pending.get(chunk)
        if pending:
            return pending.pop(0)
        while True:
            event = self._request.events.get()
            if event.error is not None:
                raise event.error
            if event.chunk == chunk:
                return event
            self._pending.setdefault(event.chunk, []).append(event)

    def _run(
        self, offsets: list[float], n_samples: int, language: str | None, prefix: list[int]
    ) -> Generator[str, None, None]:
        engine = self._engine
        t_start = time.perf_counter()
        texts: list[str] = []
        languages: list[str] = []
        segments: list[Segment] = []
        all_ids: list[int] = []
        n_in = n_out = n_audio = 0
        t = dict.fromkeys(TIMING_KEYS, 0.0)
        try:
            for index, (job, offset) in enumerate(zip(self._request.chunks, offsets, strict=True)):
                inc = IncrementalText(engine.tokenizer, language)
                sep = _joiner(texts[-1]) if texts and texts[-1] else ""
                first = True
                chunk_ids: list[int] = []
                tokens = _ChunkTokens(
                    engine, in_text=language is not None
                )  # forced: the tag is in the prompt
                if index == 0 and prefix:  # the forced start of the answer: its text was sent before
                    for token in prefix:
                        inc.push(token)
                        tokens.add(token, None, 0)
                    chunk_ids.extend(prefix)
                    first = not inc.emitted
                while True:
                    event = self._event(index)
                    if event.token >= 0:
                        chunk_ids.append(event.token)
                        if self._logprobs is not None and event.logprob is not None:
                            tokens.add(event.token, event.logprob, len(all_ids) + len(chunk_ids) - 1)
                        delta = inc.push(event.token)
                        if self._logprobs is not None:  # those whose text has gone out (or goes now)
                            self._logprobs += tokens.spelled(len(inc.emitted))
                        if delta:
                            if first and sep and not _starts_cjk(delta):
                                delta = sep + delta
                            first = False
                            yield delta
                    if event.status == QWEN_DONE:
                        for key in t:
                            t[key] += event.timings.get(key, 0.0)
                        break
                lang, text, delta = inc.finish()
                if self._logprobs is not None:
                    self._logprobs += tokens.rest()
                if delta:
                    if first and sep and not _starts_cjk(delta):
                        delta = sep + delta
                    yield delta
                if texts and texts[-1] and text and not _starts_cjk(text):
                    text = sep + text
                texts.append(text)
                languages.append(lang)
                all_ids.extend(chunk_ids)
                n_chunk = job.pcm.size
                segments.append(
                    Segment(offset, offset + n_chunk / SAMPLE_RATE, text.strip(), chunk_ids, tokens.mean())
                )
                n_in += len(job.prompt)
                n_out += len(chunk_ids) - (len(prefix) if index == 0 else 0)
                n_audio += job.prompt.count(engine.native.audio_token_id)
        finally:
            engine._scheduler.cancel(self._request)  # no-op once finished; stops it when closed early
        self.result = Transcription(
            text="".join(texts),
            language=merge_languages(languages) or None,
            token_ids=all_ids,
            usage=Usage(input_tokens=n_in, output_tokens=n_out, audio_tokens=n_audio),
            timings=Timings(
                mel_ms=t["mel"],
                encoder_ms=t["encoder"],
                prefill_ms=t["prefill"],
                decode_ms=t["decode"],
                total_ms=(time.perf_counter() - t_start) * 1e3,
            ),
            duration=n_samples / SAMPLE_RATE,
            segments=segments,
            logprobs=self._logprobs,
        )


class _ChunkTokens:
    """One chunk's answer for `logprobs`: which tokens are the transcript's text (after the
    `language X<asr_text>` prefix, not the stop token), and how many of them the text sent so far
    spells, so that a delta carries the tokens behind it (the last few are held back as their
    text is). A chunk whose answer has no tag is all text, as its parsed text is."""

    def __init__(self, engine: Engine, in_text: bool):
        self._engine = engine
        self._in_text = in_text
        self._logprobs: list[float] = []  # every generated token's: the segment's mean
        self._text: list[TokenLogprob] = []  # the text tokens (before a tag: perhaps the prefix)
        self._ends: list[int] = []  # where each one's text ends in the raw text (characters)
        self._raw = b""  # the raw text's bytes, from the tag on, forced tokens included
        self._given = 0  # of _text, handed out

    def add(self, token: int, logprob: float | None, at: int) -> None:
        """A token of the answer at `at` in it; logprob None: forced (its text was sent before)."""
        engine = self._engine
        if logprob is not None:
            self._logprobs.append(logprob)
        if token in engine.eos_ids:
            return
        if not self._in_text and token == engine.asr_text_id:  # what came before was the prefix
            self._in_text, self._text, self._ends, self._raw = True, [], [], b""
            return
        data = token_bytes(engine.tokenizer, token)
        self._raw += data
        if logprob is not None:
            text = data.decode("utf-8", errors="replace")
            self._text.append(TokenLogprob(text, float(logprob) + 0.0, list(data), at))
            self._ends.append(len(self._raw.decode("utf-8", errors="replace")))  # a cut character: one

    def spelled(self, emitted: int) -> list[TokenLogprob]:
        """The text tokens not handed out yet that the first `emitted` characters of the chunk's
        text (stripped at its start) cover."""
        if not self._in_text:
            return []
        raw = self._raw.decode("utf-8", errors="ignore")
        lead = len(raw) - len(raw.lstrip())
        n = self._given
        while n < len(self._text) and self._ends[n] - lead <= emitted:
            n += 1
        out, self._given = self._text[self._given : n], n
        return out

    def rest(self) -> list[TokenLogprob]:
        """At the chunk's end: the text tokens not handed out yet."""
        out, self._given = self._text[self._given :], len(self._text)
        return out

    def mean(self) -> float | None:
        return sum(self._logprobs) / len(self._logprobs) if self._logprobs else None


def _starts_cjk(text: str) -> bool:
    return bool(text) and _is_cjk(text.lstrip()[:1])


def _is_cjk(ch: str) -> bool:
    if not ch:
        return False
    o = ord(ch)
    return 0x2E80 <= o <= 0x9FFF or 0xAC00 <= o <= 0xD7AF or 0xF900 <= o <= 0xFAFF or 0xFF00 <= o <= 0xFFEF


def _joiner(previous: str) -> str:
    """Chunks of space-separated languages are joined with a space, CJK ones directly."""
    return "" if _is_cjk(previous.rstrip()[-1:]) else " "
