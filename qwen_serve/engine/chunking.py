"""Audio helpers of the engine: the model's sample rate and long-audio splitting."""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
MIN_CHUNK_SECONDS = 0.5  # the official package zero-pads split chunks shorter than this


def split_long_audio(
    pcm: np.ndarray,
    max_chunk_seconds: float,
    search_seconds: float = 5.0,
    window_ms: float = 100.0,
) -> list[tuple[np.ndarray, float]]:
    """Cuts audio longer than max_chunk_seconds at quiet points.

    Each cut is placed at the quietest sample of the quietest 100 ms window
    within +-search_seconds of the nominal cut, as the official package does.
    Returns (chunk, offset_seconds) pairs; the chunks tile the input exactly,
    and chunks shorter than 0.5 s are zero-padded at the end.
    """
    total = int(pcm.size)
    max_len = int(max_chunk_seconds * SAMPLE_RATE)
    if total <= max_len:
        return [(pcm, 0.0)]
    expand = int(search_seconds * SAMPLE_RATE)
    win = max(4, int(window_ms / 1000.0 * SAMPLE_RATE))
    magnitude = np.abs(pcm)
    bounds = [0]
    start = 0
    while total - start > max_len:
        cut = start + max_len
        left, right = max(start, cut - expand), min(total, cut + expand)
        if right - left <= win:
            boundary = cut
        else:
            csum = np.concatenate(([0.0], np.cumsum(magnitude[left:right], dtype=np.float64)))
            energy = csum[win:] - csum[:-win]  # sum over each window
            w0 = int(np.argmin(energy))
            boundary = left + w0 + int(np.argmin(magnitude[left + w0 : left + w0 + win]))
        boundary = min(max(boundary, start + 1), total)
        bounds.append(boundary)
        start = boundary
    bounds.append(total)
    min_len = int(MIN_CHUNK_SECONDS * SAMPLE_RATE)
    chunks = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=False):
        chunk = pcm[a:b]
        if chunk.size < min_len:
            chunk = np.pad(chunk, (0, min_len - chunk.size))
        chunks.append((np.ascontiguousarray(chunk, dtype=np.float32), a / SAMPLE_RATE))
    return chunks
