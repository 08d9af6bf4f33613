"""The realtime session's parts on their own: G.711 tables, streaming resampling, turn detection."""

from __future__ import annotations

import numpy as np
import pytest

from qwen_serve.api.realtime.audio import ALAW, ULAW, AudioDecoder, AudioFormatError
from qwen_serve.api.realtime.vad import FRAME, SpeechStarted, SpeechStopped, TurnDetector


def test_g711_tables_are_itu_g711() -> None:
    # ITU-T G.711 end points and zeros (mu-law bytes are sent inverted, A-law with even bits toggled)
    assert (ULAW[0x00], ULAW[0x80], ULAW[0xFF], ULAW[0x7F]) == (-32124, 32124, 0, 0)
    assert (ALAW[0xAA], ALAW[0x2A], ALAW[0xD5], ALAW[0x55]) == (32256, -32256, 8, -8)
    for table in (ULAW, ALAW):  # 256 codes: every positive level mirrored by a negative one
        levels = np.sort(table.astype(np.int32))
        assert np.array_equal(levels, -levels[::-1])
        assert np.unique(table).size == (255 if table is ULAW else 256)  # mu-law has +0 and -0


def test_decoder_streams_to_16k_like_one_resampling() -> None:
    rng = np.random.default_rng(0)
    data = (rng.standard_normal(24000) * 3000).astype("<i2").tobytes()
    whole = AudioDecoder("audio/pcm")
    one = np.concatenate([whole.feed(data), whole.flush()])
    chunked = AudioDecoder("audio/pcm")
    parts = [chunked.feed(data[i : i + 962]) for i in range(0, len(data), 962)] + [chunked.flush()]
    streamed = np.concatenate(parts)
    assert one.size == streamed.size == 16000
    assert np.max(np.abs(one.astype(np.int32) - streamed)) <= 2  # chunk boundaries change nothing audible
    with pytest.raises(AudioFormatError):
        chunked.feed(b"\x00\x01\x02")
    assert (
        AudioDecoder("audio/pcmu").input_seconds(8000)
        == AudioDecoder("audio/pcm").input_seconds(48000)
        == 1.0
    )


def scripted(probabilities: list[float], **options: int | float) -> tuple[TurnDetector, list]:
    """A detector whose model returns `probabilities`, one per frame, fed in uneven pieces."""
    detector = TurnDetector(**options)  # type: ignore[arg-type]
    script = iter(probabilities)
    detector._model.process_samples = lambda samples: next(script)  # type: ignore[method-assign]
    pcm = np.zeros(len(probabilities) * FRAME, dtype=np.int16)
    changes = []
    for i in range(0, pcm.size, 700):  # not a multiple of the frame: pieces carry over
        changes += detector.feed(pcm[i : i + 700])
    return detector, changes


def test_turns_follow_threshold_padding_and_silence() -> None:
    # frames of 32 ms: silence x20, speech x10 (with one dip to 0.4, above 0.5 - 0.15), silence x20
    probs = [0.1] * 20 + [0.9] * 5 + [0.4] + [0.9] * 4 + [0.1] * 20
    detector, changes = scripted(probs, threshold=0.5, prefix_padding_ms=96, silence_duration_ms=320)
    start = 20 * FRAME - 96 * 16  # the first speech frame, less the prefix padding
    stop = (30 + 10) * FRAME  # ten frames (320 ms) below 0.35 after the last speech frame
    assert changes == [SpeechStarted(start), SpeechStopped(stop)]
    assert not detector.in_speech and detector.position == 50 * FRAME


def test_a_dip_below_the_hysteresis_shorter_than_the_silence_keeps_the_turn() -> None:
    probs = [0.9] * 5 + [0.1] * 9 + [0.9] * 5 + [0.1] * 10
    _, changes = scripted(probs, threshold=0.5, prefix_padding_ms=300, silence_duration_ms=320)
    assert changes == [SpeechStarted(0), SpeechStopped(29 * FRAME)]  # one turn; padding clipped at 0


def test_higher_threshold_needs_more_certain_speech() -> None:
    probs = [0.1] * 15 + [0.6] * 10 + [0.1] * 20
    assert scripted(probs, threshold=0.5)[1][0] == SpeechStarted(15 * FRAME - 300 * 16)
    assert scripted(probs, threshold=0.7)[1] == []


def test_live_logprobs_go_out_with_the_text_they_spell() -> None:
    """A live delta carries the fixed tokens whose text has gone out; the rest wait (text lags the
    fixed ids: its end is held back while the model may still revise it)."""
    from qwen_serve.api.realtime.session import _spelled
    from qwen_serve.model.results import ResultLogprob

    pieces = [b"Hi", b",", b" w", b"\xc3", b"\xb6rld", b"\n"]
    tokens = [ResultLogprob(p.decode(errors="replace"), -0.5, list(p)) for p in pieces]
    texts = ("", "H", "Hi", "Hi,", "Hi, w", "Hi, wö", "Hi, wörld")
    assert [_spelled(text, tokens) for text in texts] == [0, 0, 1, 2, 3, 4, 5]  # "ö"'s halves with it
    assert _spelled("Hi, wörld\nA", tokens) == 6  # the newline: once text follows it (the text is stripped)
