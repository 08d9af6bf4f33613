"""decode_audio on every container, sample format, rate and channel count we accept, and on bad input."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from qwen_serve.audio_decoding import (
    AudioError,
    AudioTooLongError,
    EmptyAudioError,
    UnsupportedAudioError,
    decode_audio,
    sniff_format,
)

FREQ = 440.0


def tone(rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * FREQ * t)).astype(np.float32)


def with_soundfile(
    fmt: str, subtype: str, rate: int = 44100, channels: int = 2, seconds: float = 1.0
) -> bytes:
    x = tone(rate, seconds)
    data = np.stack([x] * channels, axis=1)
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def with_pyav(
    container: str, codec: str, rate: int = 48000, layout: str = "stereo", seconds: float = 1.0
) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        x = tone(rate, seconds)
        channels = av.AudioLayout(layout).nb_channels
        frame = av.AudioFrame.from_ndarray(np.stack([x] * channels), format="fltp", layout=layout)
        frame.sample_rate = rate
        to_codec = av.AudioResampler(format=stream.format.name, layout=layout, rate=rate)
        for converted in to_codec.resample(frame) + to_codec.resample(None):
            for packet in stream.encode(converted):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def peak_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.size)))
    return float(np.argmax(spectrum) * 16000 / pcm.size)


def check_tone(
    pcm: np.ndarray, seconds: float = 1.0, amplitude: float = 0.5, tol_samples: int = 2048
) -> None:
    assert pcm.dtype == np.float32 and pcm.ndim == 1 and pcm.flags.c_contiguous
    assert abs(pcm.size - seconds * 16000) <= tol_samples
    assert peak_hz(pcm) == pytest.approx(FREQ, abs=3)
    middle = pcm[pcm.size // 4 : 3 * pcm.size // 4]
    assert float(np.max(np.abs(middle))) == pytest.approx(amplitude, rel=0.1)


# ---- containers -------------------------------------------------------------------------

CONTAINERS = {
    "wav": lambda: with_soundfile("WAV", "PCM_16"),
    "flac": lambda: with_soundfile("FLAC", "PCM_24"),
    "ogg-vorbis": lambda: with_soundfile("OGG", "VORBIS"),
    "mp3-libsndfile": lambda: with_soundfile("MP3", "MPEG_LAYER_III"),
    "mp3-lame": lambda: with_pyav("mp3", "libmp3lame", rate=44100),
    "opus": lambda: with_pyav("ogg", "libopus"),
    "m4a-aac": lambda: with_pyav("ipod", "aac"),
    "mp4-aac": lambda: with_pyav("mp4", "aac"),
    "aac-adts": lambda: with_pyav("adts", "aac"),
    "webm-opus": lambda: with_pyav("webm", "libopus"),
    "mkv-pcm": lambda: with_pyav("matroska", "pcm_s16le", rate=32000),
    "mkv-mp3": lambda: with_pyav("matroska", "libmp3lame", rate=22050),
    "aiff": lambda: with_soundfile("AIFF", "PCM_16"),
}

SNIFFED = {
    "wav": "wav", "flac": "flac", "ogg-vorbis": "ogg", "mp3-libsndfile": "mp3", "mp3-lame": "mp3", "opus": "opus",
    "m4a-aac": "mp4", "mp4-aac": "mp4", "aac-adts": "aac", "webm-opus": "webm", "mkv-pcm": "webm",
    "mkv-mp3": "webm", "aiff": "aiff",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CONTAINERS))
def test_container(name: str) -> None:
    data = CONTAINERS[name]()
    assert sniff_format(data) == SNIFFED[name]
    check_tone(decode_audio(data))


@pytest.mark.parametrize(
    "subtype, amplitude",
    [
        ("PCM_U8", 0.5),
        ("PCM_S8", 0.5),
        ("PCM_16", 0.5),
        ("PCM_24", 0.5),
        ("PCM_32", 0.5),
        ("FLOAT", 0.5),
        ("DOUBLE", 0.5),
    ],
)
def test_sample_formats(subtype: str, amplitude: float) -> None:
    fmt = "AIFF" if subtype == "PCM_S8" else "WAV"
    check_tone(decode_audio(with_soundfile(fmt, subtype)), amplitude=amplitude)


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100, 48000, 96000])
def test_sample_rates(rate: int) -> None:
    pcm = decode_audio(with_soundfile("WAV", "PCM_16", rate=rate, channels=1))
    check_tone(pcm, tol_samples=2)


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_channels_are_averaged(channels: int) -> None:
    check_tone(decode_audio(with_soundfile("WAV", "FLOAT", channels=channels)))


def test_downmix_is_a_mean() -> None:
    x = tone(16000)
    buf = io.BytesIO()
    sf.write(buf, np.stack([x, -x, x, x], axis=1), 16000, format="WAV", subtype="FLOAT")
    np.testing.assert_allclose(decode_audio(buf.getvalue()), 0.5 * x, atol=1e-6)


def test_identity_at_16k() -> None:
    x = tone(16000, 0.5)
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="FLOAT")
    np.testing.assert_array_equal(decode_audio(buf.getvalue()), x)


def test_surround_aac() -> None:
    pcm = decode_audio(with_pyav("mp4", "aac", layout="5.1"))  # the LFE channel is low-passed by the encoder
    check_tone(pcm, amplitude=5 / 6 * 0.5 + 1 / 6 * 0.1)


def test_long_audio_is_resampled_in_blocks() -> None:
    pcm = decode_audio(with_soundfile("FLAC", "PCM_16", rate=44100, channels=1, seconds=150.0))
    assert abs(pcm.size - 150 * 16000) <= 2
    assert peak_hz(pcm[-16000:]) == pytest.approx(FREQ, abs=20)  # no glitch at block joins
    assert float(np.max(np.abs(pcm[1000:-1000]))) < 0.55


# ---- refusals ------------------------------------------------------------------------------


def test_empty() -> None:
    with pytest.raises(EmptyAudioError):
        decode_audio(b"")


def test_no_samples() -> None:
    buf = io.BytesIO()
    sf.write(buf, np.zeros((0, 1), dtype=np.float32), 16000, format="WAV")
    with pytest.raises(EmptyAudioError):
        decode_audio(buf.getvalue())


@pytest.mark.parametrize(
    "data",
    [
        b"hello world",
        bytes(range(256)) * 40,
        b"RIFF\x24\x00\x00\x00WAVEfmt ",
        b"OggS" + b"\x00" * 200,
        b"\x1a\x45\xdf\xa3" + b"\x01" * 100,
        b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100,
        b"%PDF-1.4\n" + b"x" * 500,
    ],
)
def test_garbage(data: bytes) -> None:
    with pytest.raises(UnsupportedAudioError):
        decode_audio(data)


def test_video_without_audio() -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 40, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(UnsupportedAudioError, match="no audio stream"):
        decode_audio(buf.getvalue())


def test_nan_samples() -> None:
    x = tone(16000)
    x[100] = np.nan
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="FLOAT")
    with pytest.raises(UnsupportedAudioError, match="NaN"):
        decode_audio(buf.getvalue())


@pytest.mark.parametrize("name", ["wav", "flac", "m4a-aac", "webm-opus", "mp3-lame"])
def test_too_long(name: str) -> None:
    with pytest.raises(AudioTooLongError):
        decode_audio(CONTAINERS[name](), max_seconds=0.5)
    decode_audio(CONTAINERS[name](), max_seconds=2.0)


def test_too_long_when_header_lies() -> None:
    data = bytearray(with_soundfile("WAV", "PCM_16", rate=16000, channels=1, seconds=3.0))
    data[40:44] = (0xFFFFFFFF).to_bytes(4, "little")  # data chunk size: unknown/streaming
    with pytest.raises(AudioTooLongError):
        decode_audio(bytes(data), max_seconds=1.0)


def test_playlists_cannot_open_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret.wav"
    secret.write_bytes(with_soundfile("WAV", "PCM_16"))
    playlists = [
        f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile://{secret}\n#EXT-X-ENDLIST\n".encode(),
        f"#EXTM3U\n#EXTINF:10,\n{secret}\n".encode(),
        f"ffconcat version 1.0\nfile '{secret}'\n".encode(),
        f"[playlist]\nFile1={secret}\n".encode(),
    ]
    for data in playlists:
        with pytest.raises(UnsupportedAudioError):
            decode_audio(data)


@pytest.mark.parametrize("name", ["wav", "flac", "ogg-vorbis", "m4a-aac", "webm-opus", "mp3-lame"])
def test_mutated_files_never_crash(name: str) -> None:
    original = CONTAINERS[name]()
    rng = np.random.default_rng(0)
    for _ in range(25):
        data = bytearray(original)
        for pos in rng.integers(0, len(data), size=8):
            data[pos] = int(rng.integers(0, 256))
        cut = int(rng.integers(len(data) // 4, len(data)))
        try:
            pcm = decode_audio(bytes(data[:cut]), max_seconds=10)
        except AudioError:
            continue
        assert pcm.dtype == np.float32 and np.isfinite(pcm).all()
