/*
 * Weights — the loaders every stage uses: a checkpoint tensor checked for its
 * shape and used in place (a matrix, in the checkpoint's dtype), or a small
 * vector widened to f32 once and owned by the context; for precision FAST,
 * the int8 copy of a matrix that replaces it (or the weight cache's, packed
 * by an earlier load: weight_cache.c).
 */
#include "internal.h"

#include "amx.h"

#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

const qw_tensor *qw_need_tensor(qw_loader *L, const char *name, int64_t d0, int64_t d1) {
    if (L->rc) return NULL;
    const qw_tensor *t = qw_safetensors_find(&L->ctx->st, name);
    int64_t numel = t ? 1 : 0;
    if (t)
        for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
    if (!t || t->shape[0] != d0 || numel != d0 * (d1 ? d1 : 1)) {
        snprintf(L->err, L->err_size, t ? "tensor %s has an unexpected shape" : "tensor %s is missing", name);
        L->rc = QWEN_ERR_FORMAT;
        return NULL;
    }
    return t;
}

int qw_load_mat(qw_loader *L, qw_mat *m, const char *name, int rows, int cols) {
    const qw_tensor *t = qw_need_tensor(L, name, rows, cols);
    if (!t) return L->rc;
    *m = (qw_mat){t->data, t->dtype, rows, cols};
    return 0;
}

float *qw_load_vec(qw_loader *L, const char *name, int n) {
    const qw_tensor *t = qw_need_tensor(L, name, n, 0);
    if (!t) return NULL;
    float *v = qw_own(L->ctx, (size_t)n * sizeof(float));
    if (!v) {
        L->rc = QWEN_ERR_NOMEM;
        return NULL;
    }
    L->ctx->k->to_f32(v, t->data, t->dtype, n);
    return v;
}


/* ==== Int8 copies (precision FAST) ==== */

typedef struct {
    qw_q8 *W;
    const void *src;
    qw_dtype dt;
    int per; /* column blocks per task */
    int blocks;
    const qw_q8_kernels *t; /* its quantize_rows */
    void (*to_f32)(float *dst, const void *src, qw_dtype dt, int n);
    const qwen_context *ctx;
    qw_q4 *S; /* and the 4-bit screen of the packed blocks, or NULL */
} pack_job;

/* Gives the whole pages inside [p, p + n) back to the OS: they are clean
 * pages of the read-only checkpoint mapping, re-read from the file only if
 * touched again (never, once their int8 copy replaces them). */
static void drop_pages(const qwen_context *ctx, const void *p, size_t n) {
    int mapped = 0; /* only pages of the checkpoint's mappings: an owned copy must stay */
    for (int i = 0; i < ctx->st.n_maps; i++)
        mapped |= (const char *)p >= (const char *)ctx->st.maps[i] &&
                  (const char *)p + n <= (const char *)ctx->st.maps[i] + ctx->st.map_sizes[i];
    if (!mapped) return;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1), b = ((uintptr_t)p + n) & ~(page - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

/* Packs the task's column blocks, then gives back the checkpoint pages of its rows at once: the
 * bf16 source of a large matrix (the LM head: 311 MB for 0.6B) is never resident all at once. */
static void pack_task(void *arg, int t) {
    pack_job *j = arg;
    const int b0 = t * j->per, b1 = b0 + j->per < j->blocks ? b0 + j->per : j->blocks;
    qw_q8_pack_with(j->t, j->to_f32, j->W, j->src, j->dt, b0, b1);
    if (j->S) qw_q4_from_q8(j->S, j->W, b0, b1); /* from the blocks just packed, still in cache */
    const int n0 = b0 * 16, n1 = b1 * 16 < j->W->N ? b1 * 16 : j->W->N;
    const size_t row = (size_t)j->W->K * (j->dt == QW_F32 ? 4 : 2);
    if (n1 > n0) drop_pages(j->ctx, (const char *)j->src + (size_t)n0 * row, (size_t)(n1 - n0) * row);
}

/* m becomes its packed copy (data, dt); the checkpoint pages it was read from go back to the OS. */
static void replace_mat(qwen_context *ctx, qw_mat *m, const void *data, qw_dtype dt) {
    drop_pages(ctx, m->data, (size_t)m->rows * (size_t)m->cols * (m->dt == QW_F32 ? 4 : 2));
    *m = (qw_mat){data, dt, m->rows, m->cols};
}

int qw_quantize_mat(qw_loader *L, qw_mat *m, qw_q4 **screen) {
    if (L->rc || m->dt == QW_Q8) return L->rc;
    size_t qb, sb, zb, q4b = 0, s4b = 0;
    qw_q8_sizes(m->rows, m->cols, &qb, &sb, &zb);
    const int screened = screen && m->cols % 8 == 0; /* quant.h: the screen packs 8 k a row */
    if (screened) qw_q4_sizes(m->rows, m->cols, &q4b, &s4b);
    qw_q8 *W = qw_own(L->ctx, sizeof(qw_q8));
    qw_q4 *S = W && screened ? qw_own(L->ctx, sizeof(qw_q4)) : NULL;
    char *mem = W && (S || !screened) ? qw_own_weights(L->ctx, qb + sb + zb + q4b + s4b) : NULL;
    if (!mem) {
        snprintf(L->err, L->err_size, "out of memory for the int8 weights");
        return L->rc = QWEN_ERR_NOMEM;
    }
    qw_q8_init(W, m->rows, m->cols, mem, mem + qb, mem + qb + sb);
    if (S) qw_q4_init(S, m->rows, m->cols, mem + qb + sb + zb, mem + qb + sb + zb + q4b);
    const int blocks = (m->rows + 15) / 16;
    pack_job j = {W, m->data, m->dt, 8, blocks, L->ctx->q8, L->ctx->k->to_f32, L->ctx, S};
    if (!qw_wcache_has(L->ctx, mem)) qw_pool_run(L->ctx->pool, (blocks + j.per - 1) / j.per, pack_task, &j);
    replace_mat(L->ctx, m, W, QW_Q8);
    if (screen) *screen = S;
    return 0;
}

#ifdef QW_X86
typedef struct {
    void *P;
    const uint16_t *W;
    int N, K, per, panels;
} bf16p_job;

static void bf16p_task(void *arg, int t) {
    bf16p_job *j = arg;
    const int p0 = t * j->per, p1 = p0 + j->per < j->panels ? p0 + j->per : j->panels;
    qw_bf16p_pack(j->P, j->W, j->N, j->K, p0, p1);
}
#endif

int qw_bf16p_mat(qw_loader *L, qw_mat *m) {
#ifdef QW_X86
    if (L->rc || m->dt != QW_BF16) return L->rc;
    char *mem = qw_own_weights(L->ctx, qw_bf16p_size(m->rows, m->cols) + 64);
    if (!mem) {
        snprintf(L->err, L->err_size, "out of memory for the packed bf16 weights");
        return L->rc = QWEN_ERR_NOMEM;
    }
    void *packed = mem + (64 - (uintptr_t)mem % 64) % 64;
    const int panels = (m->rows + 31) / 32;
    bf16p_job j = {packed, m->data, m->rows, m->cols, 4, panels};
    if (!qw_wcache_has(L->ctx, packed)) qw_pool_run(L->ctx->pool, (panels + j.per - 1) / j.per, bf16p_task, &j);
    replace_mat(L->ctx, m, packed, QW_BF16P);
#else
    (void)m;
#endif
    return L->rc;
}

int qw_amx_mat(qw_loader *L, qw_mat *m) {
    if (L->rc || m->dt == QW_AMX || m->dt == QW_Q8) return L->rc;
    char *mem = qw_own_weights(L->ctx, qw_amx_packed_size(m->rows, m->cols) + 64);
    if (!mem) {
        snprintf(L->err, L->err_size, "out of memory for the AMX weights");
        return L->rc = QWEN_ERR_NOMEM;
    }
    void *packed = mem + (64 - (uintptr_t)mem % 64) % 64;
    if (!qw_wcache_has(L->ctx, packed)) qw_amx_pack(packed, m->data, m->dt, m->rows, m->cols);
    replace_mat(L->ctx, m, packed, QW_AMX);
    return 0;
}
