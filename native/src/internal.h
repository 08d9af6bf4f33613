/*
 * Internal types shared by the pipeline stages: config, weights, context.
 * Nothing here is exported; the public API is include/qwen.h.
 */
#ifndef QWEN_INTERNAL_H
#define QWEN_INTERNAL_H

#include "../include/qwen.h"
#include "kernels.h"
#include "quant.h"
#include "threadpool.h"

#include <stddef.h>
#include <stdint.h>

/* ==== Config (config.json) ==== */
/* Encoder windows one pass takes at most (qwen_params.encoder_windows_per_pass; a sequence's admission
 * only when no other sequence is decoding): its products stream the encoder's weights once for all of
 * them (a 10 s clip's 8 s and 2 s windows: 104 + 26 rows in one pass, where the 26-row pass cost as
 * much weight traffic as the 104-row one). Capped so that a pass's scratch stays that of a 32 s clip. */
#define QW_MAX_WINDOWS_PER_PASS 4
typedef struct {
    /* audio encoder */
    int n_mels;          /* num_mel_bins */
    int d_model;         /* encoder width */
    int enc_layers, enc_heads, enc_ffn;
    int output_dim;      /* projector output = decoder hidden size */
    int ds_hidden;       /* downsample_hidden_size: conv channels */
    int n_window;        /* conv chunk = 2 * n_window mel frames */
    int n_window_infer;  /* attention window in mel frames */
    int max_source_positions;
    /* text decoder */
    int hidden, inter, dec_layers, n_heads, n_kv_heads, head_dim, vocab;
    float rope_theta, rms_eps;
    int attention_bias;
    int tie_embeddings;
    /* token ids */
    int audio_token_id, audio_start_id, audio_end_id;
    /* forced aligner: thinker model_type containing "forced_aligner" (what the official model
     * checks); its head has classify_num outputs (time bins) instead of the vocabulary */
    int aligner;
    int classify_num;    /* thinker classify_num; 0 for ASR */
    int timestamp_id;    /* timestamp_token_id (top level, else thinker); -1 when absent */
    int timestamp_ms;    /* timestamp_segment_time: ms per bin; -1 when absent */
    int n_out;           /* rows of the head: classify_num (aligner) or vocab */
} qw_config;

int qw_config_load(const char *model_dir, qw_config *cfg, char *err, size_t err_size);

/* ==== Safetensors (memory-mapped) ==== */
typedef struct {
    char *name;
    qw_dtype dtype;
    int ndim;
    int64_t shape[4];
    const void *data;
    size_t nbytes;
} qw_tensor;

typedef struct {
    qw_tensor *tensors;
    int n_tensors;
    void **maps;        /* one mapping per file */
    size_t *map_sizes;
    int n_maps;
    char *files;        /* a line per file mapped (qw_file_line: the weight cache's key) */
} qw_safetensors;

/* A file's identity in the weight cache's key, as one line: "<path> <size> <mtime> <device>:<inode>"
 * from sb (the file's stat), or "<path> -" where sb is NULL (the file could not be read). Every file
 * the key names (the checkpoint's files, each by its real path; its config.json; the library) is
 * written this way. */
struct stat;
int qw_file_line(char *out, size_t n, const char *path, const struct stat *sb);

int qw_safetensors_open(const char *model_dir, qw_safetensors *st, char *err, size_t err_size);
void qw_safetensors_close(qw_safetensors *st);
const qw_tensor *qw_safetensors_find(const qw_safetensors *st, const char *name);

/* ==== Weights ==== */
/* A matrix used by the kernels: [rows, cols] in the checkpoint dtype, or an
 * owned, re-ordered copy made once at load time; dt QW_Q8: data is a qw_q8
 * (int8, packed at load for precision FAST). */
typedef struct {
    const void *data;
    qw_dtype dt;
    int rows, cols;
} qw_mat;

typedef struct {
    qw_mat q, k, v, o;          /* [d, d] each */
    float *q_b, *k_b, *v_b, *o_b; /* [d] */
    float *ln1_w, *ln1_b;       /* self_attn_layer_norm */
    float *ln2_w, *ln2_b;       /* final_layer_norm */
    qw_mat fc1, fc2;            /* [ffn, d], [d, ffn] */
    float *fc1_b, *fc2_b;
} qw_enc_layer;

typedef struct {
    qw_mat conv1, conv2, conv3; /* [C, 9*Cin] with k = (ky*3 + kx)*Cin + cin */
    float *conv1_b, *conv2_b, *conv3_b;
    qw_mat conv_out;            /* [d, F3*C] with feature = f*C + c (re-ordered) */
    float *pos;                 /* [max_source_positions, d] sinusoids */
    qw_enc_layer *layers;
    float *ln_post_w, *ln_post_b;
    qw_mat proj1, proj2;        /* [d, d], [output_dim, d] */
    float *proj1_b, *proj2_b;
} qw_encoder;

typedef struct {
    qw_mat q, k, v;             /* [H * hd, hidden], [KV * hd, hidden] x2 */
    qw_mat o;                   /* [hidden, H * hd] */
    float *q_b, *k_b, *v_b, *o_b; /* attention_bias only */
    float *q_norm, *k_norm;     /* [hd] */
    float *ln1, *ln2;           /* [hidden] */
    qw_mat gate, up;            /* [inter, hidden] each */
    qw_mat down;                /* [hidden, inter] */
} qw_dec_layer;

typedef struct {
    qw_mat embed;               /* [vocab, hidden] */
    qw_dec_layer *layers;
    float *norm;                /* [hidden] */
    qw_mat lm_head;             /* [n_out, hidden]: vocab (embed when tied), or classify_num (aligner) */
    qw_q4 *screen;              /* FAST: lm_head's 4-bit screen (qw_head_screened), or NULL */
    float *rope_inv_freq;       /* [hd / 2] */
} qw_decoder;

/* ==== Loading helpers (weights.c) ==== */
typedef struct {
    struct qwen_context *ctx;
    char *err;
    size_t err_size;
    int rc; /* first error, sticky */
} qw_loader;

/* The tensor `name`, checked to be [d0, d1] (d1 = 0: a vector of d0); NULL and L->rc set otherwise. */
const qw_tensor *qw_need_tensor(qw_loader *L, const char *name, int64_t d0, int64_t d1);
/* A [rows, cols] weight used in place (checkpoint dtype). */
int qw_load_mat(qw_loader *L, qw_mat *m, const char *name, int rows, int cols);
/* A small vector widened to f32 once, owned by the context. */
float *qw_load_vec(qw_loader *L, const char *name, int n);
/* Replaces m (a checkpoint matrix) by its int8 copy (quant.h), packed across the pool; the
 * checkpoint's pages it came from are given back to the OS. With screen: *screen = the int8 copy's
 * 4-bit screen (quant.h), built block by block as they are packed, or NULL where K is not a
 * multiple of 8 (no screening). */
int qw_quantize_mat(qw_loader *L, qw_mat *m, qw_q4 **screen);
/* Replaces m by its AMX tile copy (amx.h; precision FAST on CPUs with AMX), the same way. */
int qw_amx_mat(qw_loader *L, qw_mat *m);
/* FAST on a CPU with AVX512_BF16 but no AMX: a bf16 matrix packed once for the BF16 set's dot
 * product (QW_BF16P, kernels.h); other dtypes are left as they are. */
int qw_bf16p_mat(qw_loader *L, qw_mat *m);

/* ==== Sequences (batch.c) ==== */
typedef enum { QW_SEQ_FREE = 0, QW_SEQ_ENCODE, QW_SEQ_PREFILL, QW_SEQ_DECODE, QW_SEQ_ENDED } qw_seq_state;

typedef struct {
    qw_seq_state state;
    int64_t order;              /* admission order: the oldest gets the next admission unit */
    /* what was asked */
    int32_t *prompt;            /* [n_prompt] */
    int n_prompt, max_new;
    int32_t eos[8];
    int n_eos;
    qwen_abort_callback abort_cb;
    void *abort_ud;
    int logprobs;               /* each token's event carries its log-probability */
    /* admission work */
    float *mel;                 /* [n_mels, n_frames], freed once encoded */
    int64_t n_frames;
    float *emb;                 /* [n_audio, hidden] audio embeddings, freed after the prefill */
    int n_audio, windows_done, n_windows;
    int n_prefilled, audio_used;  /* prompt tokens run; audio rows of emb spliced in so far */
    int prefix_entry_n;         /* prompt rows whose KV came from the prefix cache (0: none) */
    /* decoder state */
    void *k, *v;                /* [layers, KV heads, cap] rows of qw_kv_row bytes: a head's keys in one run */
    int cap, n_past;
    int32_t last_token;
    int n_generated;
    const float *logits;        /* behind the last token (valid until the next step) */
    const float *head_x;        /* its head's input when that head was screened (only the best blocks
                                 * in logits): the whole row is computed from it when asked, or NULL */
    /* forced aligner (qwen_align): the head at the <timestamp> rows, argmax per row */
    int align;
    int32_t *mark_classes;      /* [markers] the caller's */
    float *mark_logits;         /* [markers, classify_num] the caller's, or NULL */
    int n_marked;               /* markers done so far */
    /* timings, ms */
    double t_mel, t_enc, t_prefill, t_decode;
} qw_seq;

/* One group of rows of a decoder pass: n consecutive tokens of one sequence
 * from position s->n_past on; the pass appends them to its KV cache. */
typedef struct {
    qw_seq *s;
    int n;
    int want_logits;            /* logits of the group's last row */
    const int *rows;            /* or, when not NULL: logits of these rows (ascending, < n) */
    int n_rows;
} qw_dec_group;

struct qwen_context;
/* qwen_seq_add's work once the checkpoint kind is checked; align: a forced aligner's pass (KV
 * for the prompt alone, the head at the timestamp rows of each prefill chunk; the caller sets
 * mark_classes / mark_logits before the first step). */
qwen_status qw_seq_new(struct qwen_context *ctx, const float *pcm, int64_t n_samples, const int32_t *prompt_ids,
                       int n_prompt, const qwen_run_params *run, int align, int *seq);
/* Frees a sequence's buffers and its KV reservation; the slot can be taken again. */
void qw_seq_release(struct qwen_context *ctx, qw_seq *s);
/* Slots and step buffers from the params (qwen_load), and their release (qwen_free). */
int qw_batch_init(struct qwen_context *ctx, const qwen_params *p);
void qw_batch_free(struct qwen_context *ctx);

/* ==== Encoder window cache (enc_cache.c) ==== */
typedef struct {
    uint64_t hash;              /* of the window's mel frames */
    float *mel;                 /* [n_mels, window frames]: the key, compared in full */
    float *out;                 /* the window's encoder output rows */
    size_t out_floats;
    uint64_t used;              /* clock of the last hit or insert */
} qw_enc_entry;

typedef struct {
    qw_enc_entry *e;            /* [cap] */
    int cap, n;
    uint64_t clock;
    int64_t hits, misses;
} qw_enc_cache;

int qw_enc_cache_init(qw_enc_cache *c, int capacity); /* capacity 0: off */
void qw_enc_cache_free(qw_enc_cache *c);
/* 1 and out = the cached output if the wf frames from f0 of mel[F, n_frames] were encoded
 * before as a complete window (same frames bit for bit), 0 otherwise; *hash = the frames' hash,
 * for qw_enc_cache_put on a miss (the cache off: 0, untouched). */
int qw_enc_cache_get(qw_enc_cache *c, const float *mel, int64_t n_frames, int64_t f0, int wf, int F, float *out,
                     size_t out_floats, uint64_t *hash);
void qw_enc_cache_put(qw_enc_cache *c, uint64_t hash, const float *mel, int64_t n_frames, int64_t f0, int wf, int F,
                      const float *out, size_t out_floats);

/* ==== Prefix cache (prefix_cache.c) ==== */
typedef struct {
    int n;                      /* prompt rows, a multiple of prefill_chunk */
    int32_t *ids;               /* [n] their prompt ids */
    int n_audio;                /* audio rows among them */
    float *audio;               /* [n_audio, hidden] their input rows, compared bit for bit */
    void *k, *v;                /* [dec_layers, n_kv_heads, n] rows of qw_kv_row bytes */
    uint64_t used;              /* clock of the last hit or insert */
} qw_prefix_entry;

typedef struct {
    qw_prefix_entry *e;         /* [cap], n in use */
    int n, cap;
    int64_t tokens, budget;     /* rows held, most rows held (0: off) */
    uint64_t clock;
    int64_t hits, tokens_reused;
} qw_prefix_cache;

int qw_prefix_cache_init(qw_prefix_cache *pc, int64_t budget_tokens);
void qw_prefix_cache_free(qw_prefix_cache *pc);
/* Before s's first prefill chunk (its audio rows encoded): copies the KV of the longest kept
 * prefix of its prompt and starts its prefill after it; returns its rows (0: none). */
int qw_prefix_reuse(struct qwen_context *ctx, qw_seq *s);
/* After s's prefill, before its audio rows are freed: keeps the KV of its prompt up to the first
 * audio row that can change (down to a prefill_chunk boundary). */
void qw_prefix_keep(struct qwen_context *ctx, const qw_seq *s);

/* ==== Weight cache (weight_cache.c) ====
 * The packed weights of a load (the arena below) kept in a file of a cache directory, so that the
 * next load of the same checkpoint by the same library with the same kernels maps them instead
 * of computing them. */
typedef struct {
    int state;      /* QW_WCACHE_* */
    int err_no;     /* QW_WCACHE_FAILED: why the file could not be written */
    char *key;      /* what the bytes depend on (written into the file, compared on a load) */
    char *path;     /* the file for this checkpoint, library and kernels */
    size_t bytes;   /* QW_WCACHE_HIT: the arena's bytes in the file */
    int fd;         /* MISS with the arena in a new file: that file (open), else -1 */
    char *tmp;      /* and its name until it is renamed to path */
} qw_wcache;
/* qwen_get_info "weight_cache" reports the first four; MISS is a load still running without a file. */
enum { QW_WCACHE_OFF = 0, QW_WCACHE_WRITTEN = 1, QW_WCACHE_HIT = 2, QW_WCACHE_FAILED = 3, QW_WCACHE_MISS = 4 };
struct qwen_context;
/* Before the weights load: the key and the file's path; where the file holds this key, the arena
 * becomes its mapping (state HIT). No error: a file that cannot be read is a load without it. */
void qw_wcache_begin(struct qwen_context *ctx, const char *dir, const char *model_dir);
/* After they loaded: HIT checks that the load took exactly the file's bytes (else the file goes
 * and the load fails); MISS writes the arena to the file and maps it in the arena's place. */
int qw_wcache_end(struct qwen_context *ctx, char *err, size_t err_size);
/* MISS: the arena of `size` bytes as a shared mapping of a new file (the packing writes the page
 * cache the file is made of: no second copy to write), 2 MiB aligned; NULL where the file system
 * cannot reserve the room (then the arena is anonymous memory, written to the file at the end). */
char *qw_wcache_arena(struct qwen_context *ctx, size_t size);
/* p (from qw_own_weights) holds weights already packed: it lies in the mapped file. */
int qw_wcache_has(const struct qwen_context *ctx, const void *p);
void qw_wcache_free(struct qwen_context *ctx);

/* ==== Context ==== */
struct qwen_context {
    qw_config cfg;
    qw_safetensors st;
    qw_encoder enc;
    qw_decoder dec;
    void **owned;               /* buffers made at load time, freed with the context */
    int n_owned, cap_owned;
    char *arena;                /* packed weights (qw_own_weights): a mapping 2 MiB aligned, on huge pages */
    size_t arena_size, arena_used;
    int arena_tried;
    qw_wcache wcache;           /* the arena kept in a file (weight_cache.c) */

    const qw_kernels *k;
    qwen_isa isa;
    qwen_precision precision;
    const qw_q8_kernels *q8;    /* the int8 table (precision FAST) */
    int head_blocks;            /* FAST: blocks of 16 columns a screened LM head row takes (0: none) */
    int64_t head_screened_rows; /* head rows screened so far, and rows completed whole after (read back) */
    int64_t head_whole_rows;
    int amx;                    /* FAST on a CPU with AMX: the encoder on bf16 tiles */
    qw_dtype kv_dt;             /* the decoder's KV cache: QW_F32 (EXACT), QW_KV8 (FAST) or QW_BF16 (FAST, odd heads) */
    uint8_t *q8_act;            /* activations quantized for an int8 product, grown as needed */
    size_t q8_act_size;
    uint16_t *round_a;          /* activations rounded to bf16 once for a product (AMX, BF16P), grown as needed */
    size_t round_a_size;
    char kernels_name[64];
    qw_pool *pool;
    int n_threads;

    /* mel front end, built once */
    float *mel_filters;         /* [n_mels, n_fft/2 + 1] */
    float *dft_basis;           /* [2 * (n_fft/2 + 1), n_fft]: cos, -sin rows interleaved, Hann-windowed */

    /* sequences */
    qw_seq *seqs;               /* [max_seqs] */
    int max_seqs, max_context, prefill_chunk;
    int enc_windows_per_pass; /* 1..QW_MAX_WINDOWS_PER_PASS (batch.c) */
    int64_t kv_budget, kv_reserved, n_admitted;
    int64_t prefill_joined;     /* prefill chunks that ran in a decode pass (FAST) */
    qw_dec_group *groups;       /* [max_seqs]: the decode pass of a step */
    qwen_event *events;         /* [max_seqs]: qwen_begin / qwen_next's step */
    float *step_logits;         /* [max_seqs, vocab]: logits of the last decode step */
    int32_t *step_tokens;       /* [max_seqs]: their greedy tokens */
    float *prefill_logits;      /* [vocab]: logits of the last prefill chunk */
    float *step_x, *prefill_x;  /* [max_seqs, hidden], [hidden]: the head's input rows of those, kept
                                 * where the head was screened (qw_seq.head_x) */
    float *scratch;             /* decoder activations, grown as needed */
    size_t scratch_size;
    float *enc_scratch;         /* encoder activations and im2col, grown as needed: kept, so that
                                 * each window does not fault in tens of MB of fresh pages */
    size_t enc_scratch_size;
    qw_enc_cache enc_cache;     /* completed encoder windows (enc_cache.c) */
    qw_prefix_cache prefix_cache; /* KV of prompt prefixes (prefix_cache.c) */
    qwen_abort_callback abort_cb; /* the running unit's (qw_aborted), or NULL */
    void *abort_ud;

    /* qwen_begin / qwen_next: the batch of one */
    int one_seq;                /* its slot, or -1 */
    int32_t one_pending;        /* a token produced but not yet returned by qwen_next (-1: none) */
    qwen_status one_pending_st; /* and the step's status for it */
    int one_state;              /* 0 idle, 1 generating, 2 done */

    char err[512];
};

/* Bytes of one position of one KV head in the cache (ctx->kv_dt): head_dim f32 (EXACT), or one
 * QW_KV8 row (FAST; bf16 where head_dim is not a multiple of 32). */
static inline size_t qw_kv_row(const struct qwen_context *ctx) {
    return qw_kv_row_bytes(ctx->kv_dt, ctx->cfg.head_dim);
}

/* Errors: record a message on the context and return the status. */
qwen_status qw_fail(qwen_context *ctx, qwen_status st, const char *fmt, ...);
void *qw_own(qwen_context *ctx, size_t bytes); /* zeroed, freed with the context */
/* The same for packed weights (int8, the BF16 set's panels, AMX tiles), 64-byte aligned: the bytes
 * every pass streams, so they come from one arena of anonymous memory advised onto transparent
 * huge pages (Linux: one TLB entry per 2 MiB streamed instead of per 4 KiB). A bump allocator over
 * a reservation of the checkpoint's size and a quarter (MAP_NORESERVE: only the pages written
 * become resident, the last huge page partly used); qw_own where it is full or not mapped. */
void *qw_own_weights(qwen_context *ctx, size_t bytes);
/* Linux: a mapping of len bytes (mmap's prot, flags and fd, at offset 0) at a 2 MiB-aligned address,
 * advised onto huge pages; NULL where it cannot be made. The arena's, and the weight cache file's. */
char *qw_map_huge(size_t len, int prot, int flags, int fd);
void qw_trim_weights(qwen_context *ctx); /* after loading: the reservation past the last huge page goes */
void qw_free_weights(qwen_context *ctx); /* the arena, with the context */
double qw_now_ms(void);
int qw_aborted(qwen_context *ctx);

/* ==== Threaded building blocks (ops.c) ==== */
/* Column slice t of `tasks` over n columns starts here: the multiple of 16 nearest t n / tasks (n for
 * t = tasks), so a product's slices differ by at most 16 columns (the kernels take slices starting
 * on a multiple of 16). Equal widths matter on 2 threads: 896 columns in 688-wide slices were 688 + 208
 * a matrix, the encoder's fused QKV 17% longer than balanced. A slice may come out empty for n < 16 x tasks. */
static inline int qw_slice_edge(int n, int tasks, int t) {
    if (t >= tasks) return n;
    const int e = (int)(((int64_t)t * n / tasks + 8) / 16 * 16);
    return e < n ? e : n;
}
/* C[M, N] = A[M, K] @ W^T (+ bias): output columns split across the pool. */
void qw_matmul(qwen_context *ctx, float *C, const float *A, const qw_mat *W, const float *bias, int M);
/* The same with the kernel table's matmul_rows: each row of C bitwise what M = 1 gives. */
void qw_matmul_rows(qwen_context *ctx, float *C, const float *A, const qw_mat *W, const float *bias, int M);
/* Several products of the same A in one pool launch (fused QKV, gate/up):
 * C[i][M, W[i].rows] = A @ W[i]^T (+ bias[i]), i < n <= 4. */
void qw_matmul_n(qwen_context *ctx, int n, float *const *C, const float *A, const qw_mat *const *W,
                 const float *const *bias, int M, int rows_invariant);
/* C = GELU(A W1^T + b1) W2^T + b2 (C may alias A; buf: M x W1->rows floats). With both weights on AMX
 * tiles or both BF16P the GELU and the rounding of W2's input to bf16 run in W1's epilogue (into buf), the same bits
 * as qw_matmul, qw_gelu_mt, qw_matmul, which is what runs otherwise (other weights, W1->rows not a
 * multiple of 32, no memory to round A once). */
void qw_matmul_gelu_matmul(qwen_context *ctx, float *C, const float *A, const qw_mat *W1, const float *b1,
                           const qw_mat *W2, const float *b2, int M, void *buf);
/* The LM head of M <= ctx->q8->screen_rows rows x (FAST, ctx->dec.screen set): each row's
 * ctx->head_blocks best blocks of 16 columns by the head's 4-bit screen (quant.h) taken on the int8
 * head, bit for bit the values the whole product gives there; the rest of the row -inf, so its
 * argmax is the whole product's unless the screen ranked that block below the others. A row whose
 * screen is not finite gets the whole product. */
#define QW_HEAD_SCREEN_ROWS 8 /* the most any table's screen takes (qw_q8_kernels.screen_rows) */
void qw_head_screened(qwen_context *ctx, float *logits, const float *x, int M);
/* Makes sure the context holds the quantized activations of rows x K (qw_q8_act_bytes), before a
 * pass over int8 weights; -1: out of memory. */
int qw_q8_reserve(qwen_context *ctx, int rows, int K);
void qw_layernorm(float *x, const float *w, const float *b, int n, float eps);
void qw_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
/* Across the pool: GELU (the kernel table's) and SwiGLU (g = SiLU(g) * u) over n
 * elements; LayerNorm (eps 1e-5) over rows of width d. */
void qw_gelu_mt(qwen_context *ctx, float *x, size_t n);
void qw_swiglu_mt(qwen_context *ctx, float *g, const float *u, size_t n);
/* Residual then norm, row by row across the pool: x += h (h may be NULL), out = RMSNorm(x) * w /
 * LayerNorm(x) * w + b (eps 1e-5; out may be x) - the same bits as the add and the norm one after
 * the other. */
void qw_add_rmsnorm_rows(qwen_context *ctx, float *x, const float *h, float *out, const float *w, int rows, int d,
                         float eps);
void qw_add_layernorm_rows(qwen_context *ctx, float *x, const float *h, float *out, const float *w, const float *b,
                           int rows, int d);
/* One head's attention for m queries over T keys, single-threaded:
 *   out[r] = softmax(q[r] . keys[s] / sqrt(hd) for s < len_r) @ vals[0:len_r]
 * with len_r = T (causal0 < 0: bidirectional) or min(T, causal0 + r + 1).
 * Rows of q, out, keys and vals have strides ldq, ldo, ldkv. From 8 queries
 * on it runs on the matmul kernel (keys copied contiguous, values
 * transposed, S = Q K^T, O = P V); for fewer (decode), or without memory
 * for that, per query the scores of all keys in one dot_rows call, the
 * softmax, and one axpy_rows over the values (kernels.h). Keys and values
 * are f32, bf16 or QW_KV8 rows (kv_dt; hd <= 4096; QW_KV8: ldkv == hd, rows
 * of qw_kv8_row_bytes(hd) bytes), bf16 and int8 widened to f32 on the way in
 * (the same bits as attention over a widened copy). The call does it for
 * `group` heads that share the keys and values (grouped-query attention),
 * head h's queries and outputs at + h * hd in their rows, and reads the
 * keys and values once for all of them; each head's result is its own.
 * amx (ctx->amx: precision FAST on a CPU with AMX), or the BF16 set as k
 * (FAST on a CPU with AVX512_BF16), and a bf16 or QW_KV8 cache with
 * ldkv == hd (the decoder's): the GEMM way's two products on bf16 tiles
 * (amx.h) or bf16 dot products (kernels.h qw_bf16p_*), q and the
 * probabilities rounded to bf16, f32 sums, the keys and values packed from
 * the cache (int8 rows widened and rounded first). The rows way takes
 * QW_KV8 rows through the table's kv8_dot_rows / kv8_axpy_rows where it has
 * them (widened in registers: the same bits). */
void qw_attention(const qw_kernels *k, int amx, float *out, int ldo, const float *q, int ldq, int m, int group,
                  const void *keys, const void *vals, qw_dtype kv_dt, int ldkv, int T, int hd, int causal0);

/* ==== Stages ==== */
int qw_mel_init(qwen_context *ctx);
int64_t qw_mel_frames(int64_t n_samples);
/* out[n_mels, n_frames] */
qwen_status qw_mel(qwen_context *ctx, const float *pcm, int64_t n_samples, float *out, int64_t n_frames);

int qw_encoder_load(qwen_context *ctx, char *err, size_t err_size);
int64_t qw_encoder_tokens(const qwen_context *ctx, int64_t n_frames);
/* Encoder windows (n_window_infer mel frames each; the last may be shorter) of n_frames. */
int qw_encoder_windows(const qwen_context *ctx, int64_t n_frames);
/* mel[n_mels, n_frames] -> out[n_tokens, output_dim] for the windows [w0, w1):
 * out receives their tokens only, from the first token of window w0. The
 * windows are independent, so any split gives the tokens of the whole. */
qwen_status qw_encode(qwen_context *ctx, const float *mel, int64_t n_frames, int w0, int w1, float *out);
/* The first token of window w. */
int64_t qw_encoder_window_start(const qwen_context *ctx, int64_t n_frames, int w);
/* Mel frames of a complete window (n_window_infer rounded down to whole conv chunks). */
int qw_encoder_window_frames(const qwen_context *ctx);

int qw_decoder_load(qwen_context *ctx, char *err, size_t err_size);
/* Runs the groups' tokens through the decoder; x holds their input
 * embeddings [sum of n, hidden], group after group (overwritten). Writes
 * logits [rows wanting them, n_out]: each group's last row if it wants
 * logits, or the rows it names, in group order. With rows_invariant,
 * every GEMM computes each row as it would alone (matmul_rows): a decode
 * step of many sequences gives each the logits it gets alone. With head_x
 * (FAST, the head screened: up to the int8 table's screen_rows rows wanting logits)
 * the head is qw_head_screened's, its input rows left in head_x and
 * *screened set to 1. */
qwen_status qw_decoder_forward(qwen_context *ctx, float *x, const qw_dec_group *groups, int n_groups, int rows_invariant,
                               float *logits, float *head_x, int *screened);
void qw_embed_token(qwen_context *ctx, int32_t id, float *out);

#endif
