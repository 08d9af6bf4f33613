"""The forced-aligner deployment: word times for a finished transcription.

`AlignerServer` wraps one `qwen_serve.engine.Aligner` (Qwen3-ForcedAligner in
libqwen) per replica. The ingress calls it after the ASR model, with the
audio, the transcript, its chunks (start, end, text) and the language; each
chunk is aligned on its own audio and its words are shifted by the chunk's
start (their spans point into the whole transcript), so long audio needs no
more than one chunk's memory at a time. A
forward pass is compute-bound and uses every thread of the replica, so the
replica runs its requests one after another on one worker thread (a native
context serves one thread at a time); Serve's autoscaling adds replicas up
to the pool size when requests queue. Like ModelServer it imports the
engine only on the replica (ctypes next to a pickled class breaks Serve).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..download import checkpoint_problem, missing_checkpoint_message
from ..settings import ALIGNER_ID, ALIGNER_REPO
from .results import AlignmentUnsupported, ResultWord
from .server import node_cpus

logger = logging.getLogger("ray.serve")

Chunk = tuple[float, float, str]
"""(start s, end s, text) of one transcribed audio chunk."""


class AlignerEngine(Protocol):
    """What the deployment needs from an aligner (qwen_serve.engine.Aligner)."""

    def align_chunks(
        self,
        pcm: np.ndarray,
        text: str,
        chunks: Sequence[Chunk],
        language: str | None,
        cancelled: threading.Event | None = None,
    ) -> list[Any]:
        """Words (.word, .start, .end in seconds of the whole audio, .span in `text`) of every
        chunk, in order."""
        ...

    def close(self) -> None: ...


def load_aligner(
    model_dir: Path, *, threads: int | None, isa: str, precision: str, weight_cache: str = ""
) -> AlignerEngine:
    from qwen_serve.engine import Aligner  # here, on the replica (see the module doc)

    return Aligner(
        model_dir, threads=threads, isa=isa, precision=precision, weight_cache=weight_cache or None
    )


class AlignerServer:
    """One loaded forced aligner; `align` is called through a DeploymentHandle."""

    def __init__(
        self,
        model_dir: str | Path,
        threads: int | None = None,
        isa: str = "auto",
        precision: str = "exact",
        weight_cache: str = "",
        aligner_factory: Any = None,
    ):
        self.model_dir = Path(model_dir)
        if aligner_factory is None:
            problem = checkpoint_problem(self.model_dir)
            if problem:
                raise FileNotFoundError(
                    missing_checkpoint_message(ALIGNER_ID, self.model_dir, problem, ALIGNER_REPO)
                )
        self.threads = threads if threads is not None else node_cpus()
        self.aligner: AlignerEngine = (aligner_factory or load_aligner)(
            self.model_dir, threads=self.threads, isa=isa, precision=precision, weight_cache=weight_cache
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aligner")
        self._closed = False
        logger.info(
            "aligner loaded from %s (precision %s, %s threads)", model_dir, precision, self.threads or "all"
        )

    async def align(
        self, pcm: np.ndarray, text: str, chunks: Sequence[Chunk], language: str | None
    ) -> list[ResultWord]:
        """The words of the transcript `text` (its chunks in order) with their times in the whole
        audio (seconds) and their places in `text`."""
        if not pcm.flags.writeable:  # arrays from Ray's object store are read-only
            pcm = np.array(pcm, dtype=np.float32)
        from qwen_serve.engine import MissingDependencyError  # loaded on the replica already

        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            words = await loop.run_in_executor(
                self._executor, self.aligner.align_chunks, pcm, text, list(chunks), language, cancelled
            )
        except asyncio.CancelledError:  # the caller went away: stop the forward pass at the next layer
            cancelled.set()
            logger.info("aligner: request cancelled")
            raise
        except MissingDependencyError as e:
            raise AlignmentUnsupported(str(e)) from None
        return [ResultWord(str(w.word), float(w.start), float(w.end), tuple(w.span)) for w in words]

    def check_health(self) -> None:
        if self._closed:
            raise RuntimeError("the aligner is closed")

    def __del__(self) -> None:
        aligner = getattr(self, "aligner", None)
        if aligner is not None and not getattr(self, "_closed", True):
            self._closed = True
            self._executor.shutdown(wait=True, cancel_futures=True)
            aligner.close()
