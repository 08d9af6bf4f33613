"""ctypes binding of libqwen (native/include/qwen.h).

Kept in a plain module of its own: Ray Serve pickles deployment classes by
value, and ctypes types defined next to a deployment break that. The
library is found next to this file (lib/libqwen.so, installed by
`pip install .`), or at the path in QWEN_LIBRARY.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal, NamedTuple, overload

import numpy as np

logger = logging.getLogger("qwen_serve")

QWEN_OK = 0
QWEN_DONE = 1
_STATUS_NAMES = {
    -1: "io error",
    -2: "format error",
    -3: "invalid argument",
    -4: "out of memory",
    -5: "aborted",
    -6: "unsupported",
    -7: "busy",
}
QWEN_ERR_BUSY = -7
# avx512bf16 is opt-in (never "auto"): bf16 activations in the encoder/prefill GEMM.
ISA = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3, "avx512bf16": 4, "neon": 5}
ISA_NAMES = {v: k for k, v in ISA.items()}
PRECISION = {"exact": 0, "fast": 1}
PRECISION_NAMES = {v: k for k, v in PRECISION.items()}

_AbortCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class _Params(ctypes.Structure):
    _fields_ = [
        ("n_threads", ctypes.c_int),
        ("isa", ctypes.c_int),
        ("max_context", ctypes.c_int),
        ("max_sequences", ctypes.c_int),
        ("kv_budget_tokens", ctypes.c_int64),
        ("prefill_chunk", ctypes.c_int),
        ("precision", ctypes.c_int),
        ("encoder_cache_windows", ctypes.c_int),
        ("prefix_cache_tokens", ctypes.c_int64),
        ("encoder_windows_per_pass", ctypes.c_int),
        ("head_screen", ctypes.c_int),
        ("weight_cache", ctypes.c_char_p),
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("seq", ctypes.c_int),
        ("token", ctypes.c_int32),
        ("status", ctypes.c_int),
        ("logprob", ctypes.c_float),
    ]


class _RunParams(ctypes.Structure):
    _fields_ = [
        ("max_new_tokens", ctypes.c_int),
        ("eos_ids", ctypes.POINTER(ctypes.c_int32)),
        ("n_eos_ids", ctypes.c_int),
        ("abort_callback", _AbortCallback),
        ("abort_user_data", ctypes.c_void_p),
        ("logprobs", ctypes.c_int),
    ]


class StepEvent(NamedTuple):
    """What one step did to one sequence (qwen_event)."""

    slot: int
    token: int
    """The token it generated, or -1."""
    status: int
    """0: running; QWEN_DONE: ended; < 0: failed (the slot is free again)."""
    logprob: float
    """The token's natural log-probability (sequences added with logprobs), else 0."""


class NativeError(RuntimeError):
    """An error reported by libqwen (status code and message)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{message} ({_STATUS_NAMES.get(status, status)})")
        self.status = status


class AbortedError(NativeError):
    """The run was stopped through the abort callback."""


class BusyError(NativeError):
    """No free sequence slot, or not enough of the KV budget left (try again later)."""


_libs: dict[Path, ctypes.CDLL] = {}  # by path: two builds can serve one process (benchmarks/bench_ab.py)
_lib_lock = threading.Lock()


def library_path() -> Path:
    """QWEN_LIBRARY, else lib/ next to this file (a regular install), else the
    package's lib/ in site-packages (an editable install keeps built files there)."""
    env = os.environ.get("QWEN_LIBRARY")
    if env:
        return Path(env)
    name = {"darwin": "libqwen.dylib", "win32": "qwen.dll"}.get(sys.platform, "libqwen.so")
    here = Path(__file__).with_name("lib") / name
    candidates = [here] + [Path(p) / "qwen_serve" / "engine" / "lib" / name for p in sys.path if p]
    return next((c for c in candidates if c.exists()), here)


def load_library(path: str | os.PathLike[str] | None = None) -> ctypes.CDLL:
    """Loads libqwen (library_path(), or the build at path) once per process and declares its signatures."""
    path = Path(path) if path is not None else library_path()
    with _lib_lock:
        if path in _libs:
            return _libs[path]
        if not path.exists():
            raise FileNotFoundError(
                f"libqwen not found at {path}; build it with `pip install -e .` (or set QWEN_LIBRARY)"
            )
        lib = ctypes.CDLL(str(path))  # CDLL releases the GIL during calls
        c = ctypes
        f32p = np.ctypeslib.ndpointer(dtype=np.float32, flags="C_CONTIGUOUS")
        sigs: dict[str, tuple[object, list[object]]] = {
            "qwen_version": (c.c_char_p, []),
            "qwen_default_params": (_Params, []),
            "qwen_best_isa": (c.c_int, []),
            "qwen_isa_name": (c.c_char_p, [c.c_int]),
            "qwen_load": (c.c_void_p, [c.c_char_p, c.POINTER(_Params), c.c_char_p, c.c_size_t]),
            "qwen_free": (None, [c.c_void_p]),
            "qwen_last_error": (c.c_char_p, [c.c_void_p]),
            "qwen_get_isa": (c.c_int, [c.c_void_p]),
            "qwen_get_precision": (c.c_int, [c.c_void_p]),
            "qwen_get_kernels": (c.c_char_p, [c.c_void_p]),
            "qwen_get_threads": (c.c_int, [c.c_void_p]),
            "qwen_model_info": (c.c_int64, [c.c_void_p, c.c_char_p]),
            "qwen_audio_token_count": (c.c_int64, [c.c_void_p, c.c_int64]),
            "qwen_begin": (
                c.c_int,
                [c.c_void_p, f32p, c.c_int64, c.POINTER(c.c_int32), c.c_int, c.POINTER(_RunParams)],
            ),
            "qwen_next": (c.c_int, [c.c_void_p, c.POINTER(c.c_int32)]),
            "qwen_last_logits": (c.POINTER(c.c_float), [c.c_void_p, c.POINTER(c.c_int)]),
            "qwen_get_timing": (c.c_double, [c.c_void_p, c.c_char_p]),
            "qwen_compute_mel": (c.c_int, [c.c_void_p, f32p, c.c_int64, c.c_void_p, c.POINTER(c.c_int64)]),
            "qwen_encode_audio": (c.c_int, [c.c_void_p, f32p, c.c_int64, c.c_void_p, c.POINTER(c.c_int64)]),
            "qwen_seq_add": (
                c.c_int,
                [
                    c.c_void_p,
                    f32p,
                    c.c_int64,
                    c.POINTER(c.c_int32),
                    c.c_int,
                    c.POINTER(_RunParams),
                    c.POINTER(c.c_int),
                ],
            ),
            "qwen_step": (c.c_int, [c.c_void_p, c.POINTER(_Event), c.POINTER(c.c_int)]),
            "qwen_seq_abort": (c.c_int, [c.c_void_p, c.c_int]),
            "qwen_seq_logits": (c.POINTER(c.c_float), [c.c_void_p, c.c_int, c.POINTER(c.c_int)]),
            "qwen_seq_timing": (c.c_double, [c.c_void_p, c.c_int, c.c_char_p]),
            "qwen_get_info": (c.c_int64, [c.c_void_p, c.c_char_p]),
            "qwen_align": (
                c.c_int,
                [
                    c.c_void_p,
                    f32p,
                    c.c_int64,
                    c.POINTER(c.c_int32),
                    c.c_int,
                    c.POINTER(_RunParams),
                    c.c_void_p,
                    c.c_void_p,
                    c.c_int,
                    c.POINTER(c.c_int),
                ],
            ),
        }
        for name, (restype, argtypes) in sigs.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
        _libs[path] = lib
        return lib


def version() -> str:
    return load_library().qwen_version().decode()


def best_isa() -> str:
    return ISA_NAMES[load_library().qwen_best_isa()]


def exact_isas() -> list[str]:
    """The exact (f32) kernel sets this CPU runs, scalar first; avx512bf16 is not exact."""
    best = best_isa()
    if best == "neon":
        return ["scalar", "neon"]
    return [i for i in ("scalar", "avx2", "avx512") if ISA[i] <= ISA[best]]


def _run_params(max_new_tokens: int, eos_ids: Sequence[int] | None) -> tuple[_RunParams, object]:
    """qwen_run_params for a run; the second item is the EOS array, to keep alive for the call."""
    run = _RunParams()
    run.max_new_tokens = int(max_new_tokens)
    eos = (ctypes.c_int32 * len(eos_ids))(*eos_ids) if eos_ids else None
    if eos is not None:
        run.eos_ids = ctypes.cast(eos, ctypes.POINTER(ctypes.c_int32))
        run.n_eos_ids = len(eos)
    return run, eos


def _pcm(pcm: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(pcm, dtype=np.float32)  # copies read-only or strided input
    if a.ndim != 1:
        raise ValueError(f"pcm must be 1-D, got shape {a.shape}")
    return a


class NativeModel:
    """One libqwen context: a loaded checkpoint with its own caches and threads.

    Not safe for use by two threads at once (the library's rule); distinct
    instances are independent.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        threads: int | None = None,
        isa: str = "auto",
        max_sequences: int = 1,
        kv_budget_tokens: int = 0,
        max_context: int = 0,
        prefill_chunk: int = 0,
        precision: str = "exact",
        encoder_cache_windows: int = 0,
        prefix_cache_tokens: int = 0,
        encoder_windows_per_pass: int = 0,
        head_screen: int = 0,
        weight_cache: str | os.PathLike[str] | None = None,
        library: str | os.PathLike[str] | None = None,
    ):
        if isa not in ISA:
            raise ValueError(f"isa must be one of {sorted(ISA)}")
        if precision not in PRECISION:
            raise ValueError(f"precision must be one of {sorted(PRECISION)}")
        self._lib = load_library(library)
        params = self._lib.qwen_default_params()
        params.n_threads = int(threads or 0)
        params.isa = ISA[isa]
        params.max_sequences = int(max_sequences)
        params.kv_budget_tokens = int(kv_budget_tokens)
        params.max_context = int(max_context)
        params.prefill_chunk = int(prefill_chunk)
        params.precision = PRECISION[precision]
        params.encoder_cache_windows = int(encoder_cache_windows)  # 0: libqwen's default (32), < 0: off
        params.prefix_cache_tokens = int(prefix_cache_tokens)  # 0: libqwen's default (1024), < 0: off
        params.encoder_windows_per_pass = int(encoder_windows_per_pass)  # 0: libqwen's default (4)
        params.head_screen = int(
            head_screen
        )  # fast: 0 screens a step's LM head (32 blocks), < 0: the whole head
        if weight_cache:  # the packed weights kept for the next load (libqwen writes or maps the file)
            weight_cache = os.path.expanduser(weight_cache)
            try:
                os.makedirs(weight_cache, exist_ok=True)
                params.weight_cache = os.fsencode(weight_cache)
            except OSError as exc:
                logger.warning("weight cache %s not used: %s", weight_cache, exc)
        err = ctypes.create_string_buffer(512)
        ctx = self._lib.qwen_load(os.fsencode(model_dir), ctypes.byref(params), err, len(err))
        if not ctx:
            message = err.value.decode(errors="replace")
            if "cannot read" in message or "cannot open" in message or "no *.safetensors" in message:
                raise FileNotFoundError(message)
            raise ValueError(message)
        self._ctx: int | None = ctx
        self.vocab_size = int(self.info("vocab_size"))
        self.audio_token_id = int(self.info("audio_token_id"))
        self.max_sequences = int(self.context_info("max_sequences"))
        self._events = (_Event * self.max_sequences)()
        self._seq_callbacks: dict[int, object] = {}
        if self.weight_cache_state == "failed":
            errno = self.context_info("weight_cache_errno")
            logger.warning("weight cache not written in %s: %s", weight_cache, os.strerror(errno))
        elif self.weight_cache_state == "written":  # disk the user did not ask for by name: say where
            size = self.context_info("weight_cache_bytes") / 1e9
            logger.info(
                "packed weights of %s (%.2f GB) written to the weight cache %s", model_dir, size, weight_cache
            )

    @property
    def weight_cache_state(self) -> Literal["none", "written", "loaded", "failed"]:
        """What the load did with the weight cache: "none" (no directory, or no packed weights: exact
        on most kernel sets), "written" (packed them and wrote the file), "loaded" (mapped them from
        the file, nothing packed), "failed" (packed them; the file could not be written)."""
        states: tuple[Literal["none", "written", "loaded", "failed"], ...] = (
            "none",
            "written",
            "loaded",
            "failed",
        )
        return states[self.context_info("weight_cache")]

    # ---- life cycle -------------------------------------------------------
    def close(self) -> None:
        if self._ctx:
            self._lib.qwen_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> NativeModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @property
    def ctx(self) -> int:
        if not self._ctx:
            raise RuntimeError("the model is closed")
        return self._ctx

    def _check(self, status: int) -> int:
        if status < 0:
            raise self.error(status)
        return status

    def error(self, status: int) -> NativeError:
        """The exception for a failed status, with the context's last message."""
        message = self._lib.qwen_last_error(self.ctx).decode(errors="replace")
        kind = {-5: AbortedError, QWEN_ERR_BUSY: BusyError}.get(status, NativeError)
        return kind(status, message)

    # ---- facts ------------------------------------------------------------
    @property
    def isa(self) -> str:
        return ISA_NAMES[self._lib.qwen_get_isa(self.ctx)]

    @property
    def precision(self) -> str:
        return PRECISION_NAMES[self._lib.qwen_get_precision(self.ctx)]

    @property
    def kernels(self) -> str:
        """The kernels in use, e.g. "avx512" or "avx512bf16 + int8 avx512vnni"."""
        return str(self._lib.qwen_get_kernels(self.ctx).decode())

    @property
    def threads(self) -> int:
        return int(self._lib.qwen_get_threads(self.ctx))

    def info(self, key: str) -> int:
        """qwen_model_info; KeyError for an unknown key or one the checkpoint has none of
        (e.g. "classify_num", "timestamp_token_id", "timestamp_segment_time" on an ASR checkpoint)."""
        value = int(self._lib.qwen_model_info(self.ctx, key.encode()))
        if value < 0:
            raise KeyError(key)
        return value

    @property
    def is_aligner(self) -> bool:
        """A Qwen3-ForcedAligner checkpoint: `align` runs, `generate` and `seq_add` are refused."""
        return int(self._lib.qwen_model_info(self.ctx, b"classify_num")) >= 0

    def context_info(self, key: str) -> int:
        """qwen_get_info: "active", "free_slots", "max_sequences", "kv_reserved", "kv_budget", "max_context",
        "encoder_cache_hits", "encoder_cache_misses", "encoder_cache_windows", "prefix_cache_hits",
        "prefix_cache_tokens_reused", "prefix_cache_tokens", "prefill_joined", "head_blocks",
        "head_screen_rows", "head_screened_rows", "head_whole_rows", "weight_cache", "weight_cache_errno",
        "weight_cache_bytes" (native/include/qwen.h)."""
        value = int(self._lib.qwen_get_info(self.ctx, key.encode()))
        if value < 0:
            raise KeyError(key)
        return value

    def timing(self, key: str) -> float:
        return float(self._lib.qwen_get_timing(self.ctx, key.encode()))

    def audio_token_count(self, n_samples: int) -> int:
        return int(self._lib.qwen_audio_token_count(self.ctx, int(n_samples)))

    # ---- stages -----------------------------------------------------------
    def mel(self, pcm: np.ndarray) -> np.ndarray:
        """Log-mel features [num_mel_bins, n_frames]."""
        a = _pcm(pcm)
        n = ctypes.c_int64(0)
        self._check(self._lib.qwen_compute_mel(self.ctx, a, a.size, None, ctypes.byref(n)))
        out = np.zeros((self.info("num_mel_bins"), n.value), dtype=np.float32)
        if n.value:
            self._check(self._lib.qwen_compute_mel(self.ctx, a, a.size, out.ctypes.data, ctypes.byref(n)))
        return out

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        """Audio embeddings after the projector [n_tokens, output_dim]."""
        a = _pcm(pcm)
        n = ctypes.c_int64(0)
        self._check(self._lib.qwen_encode_audio(self.ctx, a, a.size, None, ctypes.byref(n)))
        out = np.zeros((n.value, self.info("output_dim")), dtype=np.float32)
        if n.value:
            self._check(self._lib.qwen_encode_audio(self.ctx, a, a.size, out.ctypes.data, ctypes.byref(n)))
        return out

    # ---- generation -------------------------------------------------------
    def generate(
        self,
        pcm: np.ndarray,
        prompt_ids: Sequence[int],
        max_new_tokens: int = 0,
        eos_ids: Sequence[int] | None = None,
        should_abort: Callable[[], bool] | None = None,
        with_logits: bool = False,
    ) -> Iterator[tuple[int, np.ndarray | None]]:
        """Greedy decoding; yields (token_id, logits or None) per generated token.

        The stop token is yielded last. Closing the generator early leaves the
        context ready for the next run. `should_abort` is polled inside the
        encoder/prefill and between tokens.
        """
        a = _pcm(pcm)
        ids = (ctypes.c_int32 * len(prompt_ids))(*prompt_ids)
        run, _eos = _run_params(max_new_tokens, eos_ids)
        callback = _AbortCallback(lambda _ud: int(bool(should_abort()))) if should_abort else _AbortCallback()
        run.abort_callback = callback
        self._callback = callback  # C may hold the pointer until the run ends: keep it alive
        self._check(self._lib.qwen_begin(self.ctx, a, a.size, ids, len(prompt_ids), ctypes.byref(run)))
        token = ctypes.c_int32(-1)
        while True:
            status = self._check(self._lib.qwen_next(self.ctx, ctypes.byref(token)))
            if token.value < 0:
                return
            yield token.value, (self.last_logits() if with_logits else None)
            if status == QWEN_DONE:
                return

    # ---- forced alignment -------------------------------------------------
    @overload
    def align(
        self,
        pcm: np.ndarray,
        prompt_ids: Sequence[int],
        logits: Literal[False] = False,
        should_abort: Callable[[], bool] | None = None,
    ) -> np.ndarray: ...

    @overload
    def align(
        self,
        pcm: np.ndarray,
        prompt_ids: Sequence[int],
        logits: Literal[True],
        should_abort: Callable[[], bool] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def align(
        self,
        pcm: np.ndarray,
        prompt_ids: Sequence[int],
        logits: bool = False,
        should_abort: Callable[[], bool] | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Forced alignment (qwen_align, an aligner checkpoint): one pass over the prompt; the
        time bin (argmax of the head, int32) at each timestamp_token_id position, in order;
        times are bin * info("timestamp_segment_time") ms. With logits=True also the head's
        logits there [n_markers, classify_num]. `should_abort` is polled between layers."""
        a = _pcm(pcm)
        ids = (ctypes.c_int32 * len(prompt_ids))(*prompt_ids)
        marker = int(self._lib.qwen_model_info(self.ctx, b"timestamp_token_id"))
        n = sum(1 for t in prompt_ids if t == marker) if marker >= 0 else 0
        width = max(int(self._lib.qwen_model_info(self.ctx, b"classify_num")), 0)
        classes = np.zeros(n, dtype=np.int32)
        out = np.zeros((n, width), dtype=np.float32) if logits else None
        run, _eos = _run_params(0, None)
        callback = _AbortCallback(lambda _ud: int(bool(should_abort()))) if should_abort else _AbortCallback()
        run.abort_callback = callback
        n_markers = ctypes.c_int(0)
        self._check(
            self._lib.qwen_align(
                self.ctx,
                a,
                a.size,
                ids,
                len(prompt_ids),
                ctypes.byref(run),
                classes.ctypes.data,
                out.ctypes.data if out is not None else None,
                n,
                ctypes.byref(n_markers),
            )
        )
        if n_markers.value != n:  # the library counts the same markers
            raise RuntimeError(f"qwen_align found {n_markers.value} markers, expected {n}")
        return (classes, out) if out is not None else classes

    def last_logits(self) -> np.ndarray:
        n = ctypes.c_int(0)
        ptr = self._lib.qwen_last_logits(self.ctx, ctypes.byref(n))
        return np.ctypeslib.as_array(ptr, shape=(n.value,)).copy()

    # ---- sequences (one caller thread at a time) ----------------------------
    def seq_add(
        self,
        pcm: np.ndarray,
        prompt_ids: Sequence[int],
        max_new_tokens: int = 0,
        eos_ids: Sequence[int] | None = None,
        logprobs: bool = False,
    ) -> int:
        """Adds a sequence; returns its slot. BusyError when no slot or KV budget is free.
        `logprobs`: its step events carry each token's log-probability."""
        a = _pcm(pcm)
        ids = (ctypes.c_int32 * len(prompt_ids))(*prompt_ids)
        run, _eos = _run_params(max_new_tokens, eos_ids)
        run.logprobs = int(bool(logprobs))
        seq = ctypes.c_int(-1)
        self._check(
            self._lib.qwen_seq_add(
                self.ctx, a, a.size, ids, len(prompt_ids), ctypes.byref(run), ctypes.byref(seq)
            )
        )
        return seq.value

    def step(self) -> list[StepEvent] | None:
        """One scheduling step: an event per sequence that produced a token, ended (QWEN_DONE)
        or failed (< 0); None when no sequence was left."""
        n = ctypes.c_int(0)
        status = self._check(self._lib.qwen_step(self.ctx, self._events, ctypes.byref(n)))
        if status == QWEN_DONE:
            return None
        return [StepEvent(e.seq, e.token, e.status, e.logprob) for e in self._events[: n.value]]

    def seq_abort(self, seq: int) -> None:
        self._check(self._lib.qwen_seq_abort(self.ctx, int(seq)))

    def seq_logits(self, seq: int) -> np.ndarray | None:
        """Logits behind the sequence's token of the last step (a copy)."""
        n = ctypes.c_int(0)
        ptr = self._lib.qwen_seq_logits(self.ctx, int(seq), ctypes.byref(n))
        return np.ctypeslib.as_array(ptr, shape=(n.value,)).copy() if ptr else None

    def seq_timing(self, seq: int, key: str) -> float:
        return float(self._lib.qwen_seq_timing(self.ctx, int(seq), key.encode()))
