"""Log-probabilities of the generated tokens (qwen_run_params.logprobs, Engine(logprobs=True)):
libqwen's against a float64 log-softmax of the logits it reads back, in a batch with sequences that
do not ask for them; which tokens the engine reports (the transcript's text, not the language prefix
or the stop token); and that asking changes no token."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qwen_serve.engine import Engine
from qwen_serve.engine._native import QWEN_DONE, NativeModel
from qwen_serve.engine.engine import TranscriptionStream
from qwen_serve.engine.scheduler import ChunkJob, Request, TokenEvent
from qwen_serve.engine.text import token_bytes
from qwen_serve.testing.clips import speech_like


def log_softmax(logits: np.ndarray, token: int) -> float:
    x = logits.astype(np.float64)
    top = x.max()
    return float(x[token] - top - np.log(np.exp(x - top).sum()))


@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_native_logprobs_match_the_logits(tiny_dir: Path, precision: str) -> None:
    """Three sequences in one batch: a and c ask for log-probabilities, b (a's audio) does not.
    c is added once a decodes, so with `fast` its prefill runs inside the decode pass. With `fast`
    the passes where a row asks take the whole head (no screen), and one where none asks the screen."""
    pcm, other = speech_like(2.0, 1), speech_like(3.5, 2)
    with Engine(tiny_dir, threads=1, max_batch=1, precision=precision) as e:
        prompt, prompt_c = e.prompt_ids(pcm.size), e.prompt_ids(other.size)
    m = NativeModel(tiny_dir, threads=2, precision=precision, max_sequences=3)
    try:
        a = m.seq_add(pcm, prompt, max_new_tokens=12, eos_ids=[-1], logprobs=True)
        b = m.seq_add(pcm, prompt, max_new_tokens=12, eos_ids=[-1])
        c = -1
        tokens: dict[int, list[int]] = {a: [], b: []}
        asked = 0
        errors: list[float] = []
        while (events := m.step()) is not None:
            for slot, token, status, logprob in events:
                assert status in (0, QWEN_DONE) and token >= 0
                tokens.setdefault(slot, []).append(token)
                if slot == b:
                    assert logprob == 0.0
                    continue
                asked += 1
                logits = m.seq_logits(slot)
                assert logits is not None
                want = log_softmax(logits, token)
                assert logprob <= 0.0
                errors.append(abs(logprob - want) / max(1e-6, abs(want)))
            if c < 0 and tokens[a]:
                c = m.seq_add(other, prompt_c, max_new_tokens=6, eos_ids=[-1], logprobs=True)
        assert tokens[a] == tokens[b] and len(tokens[a]) == 12 and len(tokens[c]) == 6
        assert asked == 18 and max(errors) < 1e-4
        if precision == "fast":
            # a pass with a row that asks reads the whole head, not the screen and then the whole rows
            assert m.context_info("head_whole_rows") == 0
            assert m.context_info("prefill_joined") >= 1
            before = m.context_info("head_screened_rows")
            m.seq_add(pcm, prompt, max_new_tokens=6, eos_ids=[-1])  # alone, not asking: screened
            while m.step() is not None:
                pass
            assert m.context_info("head_screened_rows") - before == 6
    finally:
        m.close()


def test_asking_changes_no_token(tiny_dir: Path) -> None:
    clip = speech_like(5.0, 5)
    with Engine(tiny_dir, threads=2, precision="fast", max_chunk_seconds=3.0) as e:
        plain = e.transcribe(clip, max_new_tokens=16)
        stream = e.stream(clip, max_new_tokens=16, logprobs=True)
        taken = [lp for _ in stream for lp in stream.take_logprobs()] + stream.take_logprobs()
        result = stream.result
    assert result is not None and result.logprobs is not None and plain.logprobs is None
    assert result.token_ids == plain.token_ids and len(result.segments) == 2  # both chunks
    assert taken == result.logprobs
    # the tiny model's answers have no language prefix and end at max_new_tokens: every token is text
    assert len(result.logprobs) == len(result.token_ids) == 32
    assert all(lp.logprob <= 0.0 for lp in result.logprobs)
    for k, segment in enumerate(result.segments):  # each chunk's mean over its 16 tokens
        mine = [lp.logprob for lp in result.logprobs[16 * k : 16 * (k + 1)]]
        assert segment.avg_logprob == pytest.approx(sum(mine) / 16, rel=1e-6)
    assert all(s.avg_logprob is None for s in plain.segments)


def test_the_text_tokens_are_reported(tiny_dir: Path) -> None:
    """Events for "language English<asr_text>Hi, wörld<|im_end|>" through the engine's own stream
    (a request that is never scheduled: its events are put by hand)."""
    with Engine(tiny_dir, threads=1, max_batch=1) as e:
        tok = e.tokenizer
        prefix = tok.encode("language English<asr_text>", add_special_tokens=False).ids
        text = tok.encode("Hi, wörld", add_special_tokens=False).ids
        answer = [*prefix, *text, e.eos_ids[0]]
        pcm = np.zeros(16000, dtype=np.float32)
        for forced in (None, "English"):
            ids = text + [e.eos_ids[0]] if forced else answer
            request = Request([ChunkJob(pcm, e.prompt_ids(pcm.size), 32)], e.eos_ids, logprobs=True)
            for i, token in enumerate(ids):
                status = QWEN_DONE if i == len(ids) - 1 else 0
                request.events.put(TokenEvent(0, token, status, -0.5 * (i + 1)))
            stream = TranscriptionStream(e, request, [0.0], pcm.size, forced, [])
            deltas = list(stream)
            result = stream.result
            assert result is not None and result.logprobs is not None
            assert "".join(deltas) == result.text == "Hi, wörld"
            got = result.logprobs
            assert b"".join(bytes(lp.bytes) for lp in got).decode() == "Hi, wörld"
            assert [bytes(lp.bytes) for lp in got] == [token_bytes(tok, t) for t in text]
            first = 0 if forced else len(prefix)
            assert [lp.logprob for lp in got] == [-0.5 * (first + i + 1) for i in range(len(text))]
            assert [lp.token for lp in got] == [bytes(lp.bytes).decode(errors="replace") for lp in got]
            assert [lp.index for lp in got] == [i for i, t in enumerate(ids) if t in text]

        # a forced start past the tag (a live turn's fixed ids): the tokens after it are text at once
        fixed = prefix + text
        more = tok.encode(" and then some more words follow here, one by one.", add_special_tokens=False).ids
        request = Request([ChunkJob(pcm, e.prompt_ids(pcm.size) + fixed, 32)], e.eos_ids, logprobs=True)
        for i, token in enumerate(more):
            request.events.put(TokenEvent(0, token, QWEN_DONE if i == len(more) - 1 else 0, -0.25))
        stream = TranscriptionStream(e, request, [0.0], pcm.size, None, fixed)
        sent, spelled, early = e.stable_text(fixed), "", 0  # what went out before, then the deltas
        taken: list = []
        for delta in stream:
            sent += delta
            new = stream.take_logprobs()
            taken += new
            spelled += "".join(lp.token for lp in new)
            assert not spelled or sent.startswith("Hi, wörld" + spelled)  # tokens never ahead of the text
            early += bool(new) and len(taken) < len(more) - 3
        assert early >= 3  # handed out as their text went, not all at the end
        assert stream.result is not None and stream.result.logprobs == taken
        assert "Hi, wörld" + spelled == sent == stream.result.text
        assert [lp.index for lp in taken] == list(range(len(fixed), len(fixed) + len(more)))
