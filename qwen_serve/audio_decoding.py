"""Audio decoding: bytes of any common audio file -> 16 kHz mono float32.

    pcm = decode_audio(data, max_seconds=1200)

The container is recognised from its first bytes, never from a file name.
WAV, FLAC, Ogg/Vorbis and MP3 go through libsndfile (`soundfile`); Opus,
M4A/AAC, MP4, WebM/Matroska and everything else through FFmpeg (`PyAV`),
limited to a list of audio demuxers so that a playlist or a concat script
can never make FFmpeg open another file or URL. Channels are averaged to
mono; any sample rate is resampled with soxr, block by block, so memory
stays proportional to the 16 kHz output. Nothing touches the disk.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import numpy as np
import soxr

SAMPLE_RATE = 16000

logger = logging.getLogger("qwen_serve.audio_decoding")

# Demuxers FFmpeg may use for uploads. Playlist and script demuxers (hls,
# concat, ...) are not here: they open other files or URLs by name.
FFMPEG_FORMATS = (
    "mov,mp4,m4a,3gp,3g2,mj2",
    "matroska,webm",
    "ogg",
    "mp3",
    "aac",
    "flac",
    "wav",
    "w64",
    "aiff",
    "caf",
    "amr",
    "au",
    "asf",
    "avi",
    "mpeg",
    "mpegts",
    "ac3",
    "eac3",
    "dts",
    "wv",
    "ape",
    "tta",
    "mpc",
    "mpc8",
    "flv",
    "loas",
    "latm",
)


class AudioError(ValueError):
    """The upload is not audio we can use; the message is safe to show to clients."""

    code = "invalid_audio"


class EmptyAudioError(AudioError):
    code = "empty_audio"


class UnsupportedAudioError(AudioError):
    code = "unsupported_audio"


class AudioTooLongError(AudioError):
    code = "audio_too_long"


def sniff_format(data: bytes) -> str | None:
    """The container named by the first bytes: wav, flac, ogg, opus, mp3, aac, mp4, webm, aiff, or None."""
    head = data[:64]
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "opus" if b"OpusHead" in data[:512] else "ogg"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # ADTS (AAC) has layer bits 00; MPEG audio frames (MP3) never do.
        return "aac" if head[1] & 0x06 == 0 else "mp3"
    return None


_SOUNDFILE_FORMATS = {"wav", "flac", "ogg", "mp3", "aiff"}


def decode_audio(data: bytes, *, max_seconds: float | None = None) -> np.ndarray:
    """Decodes an audio file's bytes to 16 kHz mono float32 in [-1, 1].

    Raises EmptyAudioError, UnsupportedAudioError (not audio, or broken) or
    AudioTooLongError (longer than max_seconds), all AudioError (ValueError).
    """
    if not data:
        raise EmptyAudioError("The audio file is empty.")
    kind = sniff_format(data)
    pcm: np.ndarray | None = None
    if kind in _SOUNDFILE_FORMATS:
        try:
            pcm = _collect(_soundfile_blocks(data, max_seconds), max_seconds)
        except AudioTooLongError:
            raise
        except Exception as e:  # libsndfile could not read it: let FFmpeg try
            logger.debug("soundfile could not decode a %s upload: %s", kind, e)
    if pcm is None:
        try:
            pcm = _collect(_pyav_blocks(data, max_seconds), max_seconds)
        except AudioError:
            raise
        except Exception as e:
            logger.debug("PyAV could not decode the upload: %s", e)
            raise UnsupportedAudioError(
                "Invalid file format or broken audio. Supported formats: flac, m4a, mp3, mp4, "
                "mpeg, mpga, oga, ogg, opus, wav, webm."
            ) from None
    if pcm.size == 0:
        raise EmptyAudioError("The audio file contains no audio samples.")
    if not np.isfinite(pcm).all():
        raise UnsupportedAudioError("The audio contains NaN or infinite sample values.")
    return pcm


# ---- decoders: each yields (mono float32 block, sample rate) ---------------


def _soundfile_blocks(data: bytes, max_seconds: float | None) -> Iterator[tuple[np.ndarray, int]]:
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data)) as f:
        rate = int(f.samplerate)
        if rate <= 0 or f.channels <= 0:
            raise ValueError("bad header")
        if max_seconds is not None and f.frames > 0 and f.frames / rate > max_seconds + 1.0:
            raise _too_long(max_seconds, f.frames / rate)
        block = max(1024, (1 << 20) // f.channels)
        for chunk in f.blocks(blocksize=block, dtype="float32", always_2d=True):
            yield chunk.mean(axis=1, dtype=np.float32), rate


def _pyav_blocks(data: bytes, max_seconds: float | None) -> Iterator[tuple[np.ndarray, int]]:
    import av

    options = {"format_whitelist": ",".join(FFMPEG_FORMATS), "protocol_whitelist": "file,pipe"}
    with av.open(io.BytesIO(data), mode="r", options=options, metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise UnsupportedAudioError("The file has no audio stream.")
        stream = container.streams.audio[0]
        if max_seconds is not None and container.duration and container.duration / 1e6 > max_seconds + 1.0:
            raise _too_long(max_seconds, container.duration / 1e6)
        resampler = None
        rate = 0
        for frame in container.decode(stream):
            if resampler is None:
                # Planar float at the first frame's rate and layout; later changes are converted to it.
                rate = int(frame.sample_rate)
                resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=rate)
            for out in resampler.resample(frame):
                yield out.to_ndarray().mean(axis=0, dtype=np.float32), rate
        if resampler is not None:
            for out in resampler.resample(None):
                yield out.to_ndarray().mean(axis=0, dtype=np.float32), rate


def _collect(blocks: Iterator[tuple[np.ndarray, int]], max_seconds: float | None) -> np.ndarray:
    """Resamples mono blocks to 16 kHz as they come, stopping early when the audio is too long."""
    out: list[np.ndarray] = []
    resampler: soxr.ResampleStream | None = None
    rate = 0
    seconds = 0.0
    for block, block_rate in blocks:
        if resampler is None:
            rate = block_rate
            if rate != SAMPLE_RATE:
                resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        seconds += block.size / rate
        if max_seconds is not None and seconds > max_seconds:
            raise _too_long(max_seconds, None)
        block = np.ascontiguousarray(block, dtype=np.float32)
        out.append(resampler.resample_chunk(block) if resampler is not None else block)
    if resampler is not None:
        out.append(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    if not out:
        return np.zeros(0, dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def _too_long(max_seconds: float, seconds: float | None) -> AudioTooLongError:
    found = f" ({seconds:.0f} s)" if seconds is not None else ""
    return AudioTooLongError(f"The audio is too long{found}: at most {max_seconds:g} seconds are accepted.")
