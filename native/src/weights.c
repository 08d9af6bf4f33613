/*
 * Weights — the loaders every stage uses: a checkpoint tensor checked for its
 * shape and used in place (a matrix, in the checkpoint's dtype), or a small
 * vector widened to f32 once and owned by the context.
 */
#include "internal.h"

#include <stdio.h>

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

