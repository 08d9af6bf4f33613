/*
 * libqwen — Qwen3-ASR speech recognition inference on the CPU.
 *
 * Numbers in, token ids out: the library loads a Hugging Face checkpoint
 * directory (config.json + *.safetensors), takes 16 kHz mono float32 PCM and
 * a prompt as token ids, and produces generated token ids. A context holds up
 * to max_sequences sequences (slots), each with its own KV cache: sequences
 * are added at any time (qwen_seq_add) and qwen_step() advances all of them,
 * every decoding sequence by one token with one pass over the weights. Each
 * sequence gets exactly the token ids it would get alone. qwen_begin() /
 * qwen_next() are the batch-of-one case (pull-style, until QWEN_DONE). A
 * Qwen3-ForcedAligner checkpoint gives a time bin per <timestamp> marker of
 * the prompt instead, in one pass (qwen_align).
 *
 * Thread safety: every function is safe to call from any thread as long as
 * one context is not used by two threads at once. Contexts are independent:
 * each has its own weights view, caches and thread pool; there is no
 * process-global mutable state.
 *
 * Errors: functions return a qwen_status; on failure the context keeps a
 * readable message (qwen_last_error). The library never exits or aborts on
 * bad input.
 */
#ifndef QWEN_H
#define QWEN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define QWEN_API __declspec(dllexport)
#else
#define QWEN_API __attribute__((visibility("default")))
#endif

#define QWEN_VERSION_MAJOR 0
#define QWEN_VERSION_MINOR 1
#define QWEN_VERSION_PATCH 0

typedef enum {
    QWEN_OK = 0,
    QWEN_DONE = 1,          /* qwen_next: generation finished (EOS or limit) */
    QWEN_ERR_IO = -1,       /* file missing or unreadable */
    QWEN_ERR_FORMAT = -2,   /* malformed config.json / safetensors */
    QWEN_ERR_INVALID = -3,  /* bad argument (NULL, sizes, token ids, state) */
    QWEN_ERR_NOMEM = -4,    /* allocation failed */
    QWEN_ERR_ABORTED = -5,  /* the abort callback asked to stop */
    QWEN_ERR_UNSUPPORTED = -6, /* dtype, ISA or feature not available */
    QWEN_ERR_BUSY = -7      /* qwen_seq_add: no free slot, or the KV budget is reserved; retry later */
} qwen_status;

/* Kernel instruction set. QWEN_ISA_AUTO picks the best the CPU supports. */
typedef enum {
    QWEN_ISA_AUTO = 0,
    QWEN_ISA_SCALAR = 1,
    QWEN_ISA_AVX2 = 2,      /* AVX2 + FMA + F16C */
    QWEN_ISA_AVX512 = 3,    /* AVX-512 F/BW/VL/DQ */
    QWEN_ISA_AVX512BF16 = 4, /* AVX-512 + AVX512_BF16 dot products for bf16 weights in the
                              * encoder/prefill GEMM. Opt-in, never chosen by AUTO: it rounds
                              * activations to bf16 there, so results differ slightly from the
                              * f32 sets (and from the reference). */
    QWEN_ISA_NEON = 5,       /* AArch64 Advanced SIMD (every AArch64 CPU has it) */
} qwen_isa;

/* Numerical precision of a context.
 * EXACT: f32 arithmetic throughout (weights widened from the checkpoint's dtype): greedy tokens
 *   match the official implementation.
 * FAST: the decoder's linear layers and the LM head run on int8 weights (quantized once at load,
 *   per group of 64 along K, replacing the checkpoint's pages in memory) with activations quantized
 *   per row and group when each product is taken. With QWEN_ISA_AUTO, the encoder runs on AMX bf16
 *   tiles where the CPU has AMX and the OS grants it (packed once at load), else on bf16 dot
 *   products where the CPU has them (avx512bf16); a kernel set named in isa is used as it is.
 *   Token embeddings keep the checkpoint's weights, and so does a forced aligner's head. The KV
 *   cache holds bf16 (rounded to nearest even; EXACT: f32), half the bytes a decode step reads
 *   from it. A sequence's logits in a batch are still bitwise those it gets alone. Results differ
 *   from EXACT by quantization noise (README). */
typedef enum {
    QWEN_PRECISION_EXACT = 0,
    QWEN_PRECISION_FAST = 1,
} qwen_precision;

typedef struct qwen_context qwen_context;

/* Returns non-zero to stop the current call with QWEN_ERR_ABORTED. */
typedef int (*qwen_abort_callback)(void *user_data);

typedef struct {
    int n_threads;          /* 0 = number of online CPUs */
    qwen_isa isa;           /* kernel set; AUTO by default */
    int max_context;        /* KV capacity of one sequence in tokens (prompt + generated); 0 = 8192 */
    int max_sequences;      /* slots: sequences held at once; 0 = 1 */
    int64_t kv_budget_tokens; /* KV tokens reserved across all sequences at most; 0 = no limit */
    int prefill_chunk;      /* prompt tokens per prefill unit of qwen_step; 0 = 96 */
    qwen_precision precision; /* EXACT by default */
    int encoder_cache_windows; /* completed encoder windows (8 s each) kept for reuse; 0 = 32, < 0 = none */
    int64_t prefix_cache_tokens; /* KV rows of prompt prefixes kept for reuse (229 KB each for both
                                  * models, 65 KB with FAST); 0 = 1024, < 0 = none */
    int encoder_windows_per_pass; /* encoder windows one pass takes when no sequence is decoding (the
                                   * weights are read once for all); 0 = 4, 1 = window by window.
                                   * The same bits either way. */
    int head_screen;        /* FAST, for a greedy step's LM head (up to 4 or 8 rows): 0 = screen it (the
                             * default: a 4-bit copy of the int8 head picks the 32 best blocks of
                             * 16 tokens, rescored on the int8 head), > 0 = that many blocks (at
                             * most 256), < 0 = the whole int8 head every time. The logits read
                             * back (qwen_seq_logits, qwen_last_logits) are the whole head's
                             * either way. README (Correctness): what the screen saves and what it
                             * was measured to change (no token on the test sets). */
    const char *weight_cache; /* a directory (that exists) for the weights packed at load (FAST's int8
                               * copies, bf16 panels and tiles): the first load writes them to a
                               * file there, a later load of the same checkpoint by the same library
                               * with the same kernels maps that file instead of packing again, and
                               * processes that map it share its pages. NULL or "" = none.
                               * qwen_get_info "weight_cache" says what a load did. */
} qwen_params;

typedef struct {
    int max_new_tokens;             /* 0 = until EOS or max_context */
    const int32_t *eos_ids;         /* stop tokens; NULL = the checkpoint's eos ids */
    int n_eos_ids;
    qwen_abort_callback abort_callback; /* checked between layers and tokens; may be NULL. Used
                                         * only while the sequence runs: until it ends (QWEN_DONE
                                         * or an error), is aborted, or the next qwen_begin. */
    void *abort_user_data;
    int logprobs;                   /* non-zero: each token's event carries its log-probability
                                     * (qwen_event.logprob). FAST: a step whose head was screened
                                     * computes such a sequence's whole head row as well (the
                                     * rows of one step in one product); the token is the same. */
} qwen_run_params;

/* ==== Library ==== */
QWEN_API const char *qwen_version(void);            /* "0.1.0" */
QWEN_API qwen_params qwen_default_params(void);
QWEN_API qwen_run_params qwen_default_run_params(void);
QWEN_API qwen_isa qwen_best_isa(void);              /* what AUTO resolves to on this CPU */
QWEN_API const char *qwen_isa_name(qwen_isa isa);   /* "auto", "scalar", "avx2", "avx512", "avx512bf16", "neon" */

/* ==== Context ==== */
/* Loads a checkpoint directory. On failure returns NULL and, if err is not
 * NULL, writes a NUL-terminated message of at most err_size bytes. */
QWEN_API qwen_context *qwen_load(const char *model_dir, const qwen_params *params,
                                 char *err, size_t err_size);
QWEN_API void qwen_free(qwen_context *ctx);
QWEN_API const char *qwen_last_error(const qwen_context *ctx);
QWEN_API qwen_isa qwen_get_isa(const qwen_context *ctx);  /* resolved kernel set */
QWEN_API qwen_precision qwen_get_precision(const qwen_context *ctx);
QWEN_API const char *qwen_precision_name(qwen_precision precision); /* "exact", "fast" */
/* The kernels in use, e.g. "avx512" or "avx512bf16 + int8 avx512vnni" (FAST). */
QWEN_API const char *qwen_get_kernels(const qwen_context *ctx);
QWEN_API int qwen_get_threads(const qwen_context *ctx);

/* Model facts read from config.json. Keys: "vocab_size", "hidden_size",
 * "audio_token_id", "audio_start_token_id", "audio_end_token_id",
 * "num_mel_bins", "encoder_layers", "decoder_layers", "output_dim"; for a
 * forced aligner "classify_num" (time bins of its head), "timestamp_token_id"
 * and "timestamp_segment_time" (ms per bin), -1 where the checkpoint has
 * none (so "classify_num" >= 0 tells an aligner). Returns -1 for an unknown key. */
QWEN_API int64_t qwen_model_info(const qwen_context *ctx, const char *key);

/* Number of audio tokens (encoder outputs) for n_samples of 16 kHz PCM: the
 * prompt must hold exactly this many audio_token_id placeholders. */
QWEN_API int64_t qwen_audio_token_count(const qwen_context *ctx, int64_t n_samples);

/* ==== Sequences: many transcriptions in one context ==== */
/* A sequence's KV cache holds n_prompt + max_new_tokens tokens (max_context
 * when max_new_tokens is 0, and never more): it is reserved against
 * kv_budget_tokens when the sequence is added and released when it ends. */

/* Adds a sequence: validates the prompt (its audio placeholders must number
 * qwen_audio_token_count(n_samples)), computes its mel features, reserves a
 * slot and its KV cache, and writes the slot index to *seq. The encoder and
 * the prefill run later, inside qwen_step. The PCM and the prompt are not
 * used after the call returns. QWEN_ERR_BUSY: no free slot or not enough of
 * the KV budget left (nothing was changed; try again after a sequence ends). */
QWEN_API qwen_status qwen_seq_add(qwen_context *ctx, const float *pcm, int64_t n_samples,
                                  const int32_t *prompt_ids, int n_prompt, const qwen_run_params *run,
                                  int *seq);

typedef struct {
    int seq;            /* slot index */
    int32_t token;      /* the token generated in this step, or -1 */
    qwen_status status; /* QWEN_OK: running; QWEN_DONE: ended (EOS or limit); < 0: failed. On
                         * anything but QWEN_OK the slot is free again at once. */
    float logprob;      /* the token's natural log-probability, log softmax(logits)[token] over the
                         * whole vocabulary (the logits qwen_seq_logits reads back), when the
                         * sequence was added with run->logprobs and token >= 0 (NaN if the memory
                         * to compute it ran out); else 0 */
} qwen_event;

/* One scheduling step. First at most one unit of admission work for the
 * oldest sequence that needs it: one encoder window (n_window_infer mel
 * frames, 8 s of audio) or one prefill chunk of prefill_chunk prompt tokens
 * (the last one gives that sequence its first token). Then one decode step
 * for every sequence that was decoding: one new token each, one pass over
 * the weights for all of them. So a decoding sequence waits at most one
 * admission unit between two of its tokens. With precision FAST a prefill
 * chunk runs in the decode step's pass itself (its int8 products give every
 * row the same bits whatever else is in the pass): the weights are read
 * once for both. Writes an event per sequence
 * that produced a token, ended or failed (at most max_sequences events;
 * events needs room for that many) and their number to *n_events.
 * Returns QWEN_DONE when no sequence was left to run, QWEN_OK otherwise,
 * or an error for bad arguments. Errors of one sequence are reported in its
 * event and end only that sequence. */
QWEN_API qwen_status qwen_step(qwen_context *ctx, qwen_event *events, int *n_events);

/* Ends a sequence at once and frees its slot and KV cache; no event follows. */
QWEN_API qwen_status qwen_seq_abort(qwen_context *ctx, int seq);

/* Logits [n_vocab] behind a sequence's token of the last qwen_step. Valid
 * until the next qwen_step / qwen_seq_add on the context; NULL if the
 * sequence produced no token in that step. */
QWEN_API const float *qwen_seq_logits(qwen_context *ctx, int seq, int *n_vocab);

/* Per-sequence times in milliseconds ("mel", "encoder", "prefill", and
 * "decode": the wall time of the decode steps it took part in, shared with
 * the sequences in the same steps) and counts ("n_prompt", "n_audio",
 * "n_decoded"). Valid while the sequence runs and after it ended, until its
 * slot is taken by the next qwen_seq_add. -1 for an unknown key or slot. */
QWEN_API double qwen_seq_timing(const qwen_context *ctx, int seq, const char *key);

/* Context facts: "active" (sequences held), "free_slots", "kv_reserved" and
 * "kv_budget" (tokens; 0 = no limit), "max_sequences", "max_context"; the
 * encoder window cache's "encoder_cache_hits", "encoder_cache_misses" (complete
 * windows found / not found) and "encoder_cache_windows" (held). A complete
 * window whose mel frames equal a cached one's is not encoded again: a live
 * transcription's growing audio, or a repeated request, reuses it. The prefix
 * cache's "prefix_cache_hits" (sequences that started after a kept prefix),
 * "prefix_cache_tokens_reused" (prompt rows not prefilled) and
 * "prefix_cache_tokens" (rows held): after its prefill a sequence keeps the KV
 * of its prompt up to its first audio row that can still change (the last,
 * incomplete encoder window), and a later sequence whose prompt starts with
 * those ids and audio rows starts its prefill after them, with the same bits
 * as without. "prefill_joined": prefill chunks that ran in a decode step's
 * pass (FAST, qwen_step). The LM head's screen (FAST, qwen_params.head_screen):
 * "head_blocks" (blocks of 16 tokens a screened row takes; 0: no screen),
 * "head_screen_rows" (the most rows of a step it screens: 4 or 8 by the int8
 * kernel set; 0: no screen), "head_screened_rows" (rows screened so far) and "head_whole_rows" (screened
 * rows whose whole logits were read back, and so computed after). The weight
 * cache (qwen_params.weight_cache): "weight_cache" is 0 (none: no directory,
 * or nothing packed), 1 (this load packed the weights and wrote the file), 2
 * (it mapped them from the file) or 3 (the file could not be written:
 * "weight_cache_errno" says why); "weight_cache_bytes" the packed bytes. -1 for
 * an unknown key. */
QWEN_API int64_t qwen_get_info(const qwen_context *ctx, const char *key);

/* ==== Transcription, batch of one (pull-style) ==== */
/* Ends every sequence in the context, then adds this one and runs its
 * encoder and prefill (qwen_step until its first token). After QWEN_OK,
 * call qwen_next() repeatedly. */
QWEN_API qwen_status qwen_begin(qwen_context *ctx, const float *pcm, int64_t n_samples,
                                const int32_t *prompt_ids, int n_prompt,
                                const qwen_run_params *run);
/* Produces the next greedy token in *token and returns QWEN_OK, or returns
 * QWEN_DONE when an EOS id was produced (written to *token) or the limit was
 * reached (*token = -1). */
QWEN_API qwen_status qwen_next(qwen_context *ctx, int32_t *token);
/* Logits of the last step (prefill's last position, or the last qwen_next).
 * Valid until the next call on the context. *n_vocab receives the size. */
QWEN_API const float *qwen_last_logits(qwen_context *ctx, int *n_vocab);

/* Per-stage wall times of the current/last qwen_begin run (or qwen_align pass), in milliseconds:
 * "mel", "encoder", "prefill", "decode" (total of qwen_next calls). Counts:
 * "n_prompt", "n_audio", "n_decoded". Returns -1 for an unknown key. */
QWEN_API double qwen_get_timing(const qwen_context *ctx, const char *key);

/* ==== Forced alignment (Qwen3-ForcedAligner checkpoints) ==== */
/* An aligner checkpoint (thinker model_type "qwen3_forced_aligner") has a
 * head of classify_num time bins instead of the vocabulary and does not
 * generate: qwen_seq_add / qwen_begin refuse it (QWEN_ERR_INVALID), as
 * qwen_align refuses an ASR checkpoint.
 *
 * One forward pass: mel, the encoder (the same windows as ASR), the decoder
 * over the whole prompt (causal, in prefill_chunk chunks), then the final
 * norm and the head only at the positions whose id is timestamp_token_id
 * (the markers), in prompt order. out_classes[i] receives the argmax of
 * marker i (the first maximum on ties); the time is class *
 * timestamp_segment_time ms. out_logits, when not NULL, receives their
 * logits [n_markers, classify_num]. The prompt's audio placeholders must
 * number qwen_audio_token_count(n_samples); it needs n_prompt <= max_context
 * KV tokens (and of the KV budget). *n_markers receives the number of
 * markers in the prompt, also when it is more than max_markers (then
 * QWEN_ERR_INVALID and nothing runs). run: only abort_callback is used.
 * Ends every sequence in the context first; qwen_get_timing then reports
 * this pass ("mel", "encoder", "prefill", "n_prompt", "n_audio"). */
QWEN_API qwen_status qwen_align(qwen_context *ctx, const float *pcm, int64_t n_samples, const int32_t *prompt_ids,
                                int n_prompt, const qwen_run_params *run, int32_t *out_classes, float *out_logits,
                                int max_markers, int *n_markers);

/* ==== Stages, for tests and tools (caller-owned buffers) ==== */
/* Log-mel features [num_mel_bins, n_frames] (row-major, frames contiguous).
 * Call with out = NULL to get n_frames in *n_frames. */
QWEN_API qwen_status qwen_compute_mel(qwen_context *ctx, const float *pcm, int64_t n_samples,
                                      float *out, int64_t *n_frames);
/* Audio embeddings after the projector [n_tokens, output_dim]. Call with
 * out = NULL to get n_tokens. */
QWEN_API qwen_status qwen_encode_audio(qwen_context *ctx, const float *pcm, int64_t n_samples,
                                       float *out, int64_t *n_tokens);

#ifdef __cplusplus
}
#endif

#endif /* QWEN_H */
