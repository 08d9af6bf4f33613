/*
 * AMX emulation — a portable C model of the AMX tile instructions that
 * kernels_amx.c uses, so that its tiled GEMM runs (and is tested) on any CPU.
 * kernels_amx.c includes it instead of the hardware intrinsics when compiled
 * with -DQW_AMX_EMULATE; native/tests/test_amx.c does so.
 *
 *   _tile_loadconfig(cfg)      LDTILECFG: palette 1 (or 0 = release), 8 tiles of
 *                              rows (<= 16) x colsb (<= 64) bytes; tiles zeroed
 *   _tile_release()            TILERELEASE: back to the INIT state
 *   _tile_loadd(t, p, stride)  TILELOADD: rows[t] rows of colsb[t] bytes, row r
 *                              at p + r * stride (bytes); the rest zeroed
 *   _tile_stored(t, p, stride) TILESTORED: the same rows and bytes written
 *   _tile_zero(t)              TILEZERO
 *   _tile_dpbf16ps(d, a, b)    TDPBF16PS, as the Intel Intrinsics Guide writes it:
 *       for m < rows[d]: for k < colsb[a] / 4: for n < colsb[d] / 4:
 *           d.f32[m][n] += f32(a.bf16[m][2k])     * f32(b.bf16[k][2n])
 *           d.f32[m][n] += f32(a.bf16[m][2k + 1]) * f32(b.bf16[k][2n + 1])
 *     in that order, each += one f32 FMA rounded to nearest even (the products
 *     of two bf16 are exact in f32), denormal inputs read as zero and denormal
 *     results flushed to zero, whatever MXCSR says. The hardware does not
 *     round like this (an Intel Xeon with AMX, 2026-12: for one pair it gives
 *     acc + round(p0 + p1), and no order of roundings tried matched longer
 *     rows), so the native kernel is checked against double precision and for
 *     batch invariance, the emulated one bit for bit.
 *   _tile_dpbusd(d, a, b)      TDPBUSD, the int8 product of the int8 weights:
 *       d.i32[m][n] += sum_{e < 4} u8(a[m][4k + e]) * s8(b[k][4n + e]) over
 *       k < colsb[a] / 4, wrapping on overflow as the hardware does. Integer
 *       sums are exact, so here the emulation and the hardware agree bit for bit.
 *
 * The state (configuration and the 8 tiles of 16 x 64 bytes) is per thread,
 * like the hardware's. Where the hardware faults (#GP: invalid configuration;
 * #UD: a tile not configured, shapes that do not fit, the same tile twice in
 * TDPBF16PS) the emulation does nothing but count the fault in
 * qw_amx_emu.faults, which the tests check; it never aborts. Stricter than the
 * hardware in one way: start_row must be 0 (it is only non-zero when an
 * interrupted instruction restarts).
 */
#ifndef QWEN_AMX_EMULATE_H
#define QWEN_AMX_EMULATE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define QW_AMX_EMU_TILES 8
#define QW_AMX_EMU_ROWS 16
#define QW_AMX_EMU_COLSB 64

typedef struct {
    int configured;                                                 /* palette 1 loaded */
    uint16_t colsb[QW_AMX_EMU_TILES];                              /* bytes per row */
    uint8_t rows[QW_AMX_EMU_TILES];
    uint8_t data[QW_AMX_EMU_TILES][QW_AMX_EMU_ROWS][QW_AMX_EMU_COLSB]; /* tile t, row r, byte */
    unsigned faults;                                                /* #GP / #UD the hardware would raise */
} qw_amx_emu_state;

static _Thread_local qw_amx_emu_state qw_amx_emu;

static inline void qw_amx_emu_release(void) {
    const unsigned faults = qw_amx_emu.faults;
    memset(&qw_amx_emu, 0, sizeof(qw_amx_emu));
    qw_amx_emu.faults = faults;
}

/* The 64-byte LDTILECFG operand: byte 0 palette, 1 start_row, 2-15 reserved,
 * 16-31 colsb of tiles 0-7 (little-endian 16-bit), 32-47 reserved, 48-55 rows
 * of tiles 0-7, 56-63 reserved. */
static inline void qw_amx_emu_loadconfig(const void *config) {
    const uint8_t *p = (const uint8_t *)config;
    if (p[0] == 0) { /* palette 0: the INIT state */
        qw_amx_emu_release();
        return;
    }
    int ok = p[0] == 1 && p[1] == 0;
    for (int i = 2; i < 16; i++) ok &= p[i] == 0;
    for (int i = 32; i < 48; i++) ok &= p[i] == 0;
    for (int i = 56; i < 64; i++) ok &= p[i] == 0;
    uint16_t colsb[QW_AMX_EMU_TILES];
    for (int t = 0; t < QW_AMX_EMU_TILES; t++) {
        colsb[t] = (uint16_t)(p[16 + 2 * t] | p[17 + 2 * t] << 8);
        const int rows = p[48 + t];
        ok &= rows <= QW_AMX_EMU_ROWS && colsb[t] <= QW_AMX_EMU_COLSB;
        ok &= (rows == 0) == (colsb[t] == 0); /* an unused tile has both zero */
    }
    if (!ok) { /* #GP */
        qw_amx_emu.faults++;
        return;
    }
    qw_amx_emu_release();
    qw_amx_emu.configured = 1;
    for (int t = 0; t < QW_AMX_EMU_TILES; t++) qw_amx_emu.colsb[t] = colsb[t], qw_amx_emu.rows[t] = p[48 + t];
}

/* Tile t exists and is configured (else #UD). */
static inline int qw_amx_emu_usable(int t) {
    const int ok = qw_amx_emu.configured && t >= 0 && t < QW_AMX_EMU_TILES && qw_amx_emu.rows[t] != 0;
    if (!ok) qw_amx_emu.faults++;
    return ok;
}

static inline void qw_amx_emu_loadd(int t, const void *base, long stride) {
    if (!qw_amx_emu_usable(t)) return;
    memset(qw_amx_emu.data[t], 0, sizeof(qw_amx_emu.data[t]));
    for (int r = 0; r < qw_amx_emu.rows[t]; r++)
        memcpy(qw_amx_emu.data[t][r], (const uint8_t *)base + (long)r * stride, qw_amx_emu.colsb[t]);
}

static inline void qw_amx_emu_stored(int t, void *base, long stride) {
    if (!qw_amx_emu_usable(t)) return;
    for (int r = 0; r < qw_amx_emu.rows[t]; r++)
        memcpy((uint8_t *)base + (long)r * stride, qw_amx_emu.data[t][r], qw_amx_emu.colsb[t]);
}

static inline void qw_amx_emu_zero(int t) {
    if (qw_amx_emu_usable(t)) memset(qw_amx_emu.data[t], 0, sizeof(qw_amx_emu.data[t]));
}

/* A bf16 operand as f32, a denormal read as zero (of its sign). */
static inline float qw_amx_emu_bf16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    if ((h & 0x7f80u) == 0) h &= 0x8000u;
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* acc + x * y in one rounding (nearest even), a denormal result flushed to zero (of its sign). */
static inline float qw_amx_emu_fma(float x, float y, float acc) {
    const float r = fmaf(x, y, acc);
    uint32_t u;
    memcpy(&u, &r, 4);
    if ((u & 0x7f800000u) == 0) u &= 0x80000000u;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline void qw_amx_emu_dpbf16ps(int d, int a, int b) {
    if (!qw_amx_emu_usable(d) || !qw_amx_emu_usable(a) || !qw_amx_emu_usable(b)) return;
    const int rows = qw_amx_emu.rows[d], nc = qw_amx_emu.colsb[d] / 4, kp = qw_amx_emu.colsb[a] / 4;
    if (d == a || d == b || a == b || qw_amx_emu.rows[a] != rows || qw_amx_emu.colsb[b] != qw_amx_emu.colsb[d] ||
        qw_amx_emu.rows[b] != kp || qw_amx_emu.colsb[d] % 4 || qw_amx_emu.colsb[a] % 4) { /* #UD */
        qw_amx_emu.faults++;
        return;
    }
    float bv[QW_AMX_EMU_ROWS][2 * QW_AMX_EMU_COLSB / 4]; /* B as f32: [k][2n + e] */
    for (int k = 0; k < kp; k++)
        for (int i = 0; i < 2 * nc; i++) bv[k][i] = qw_amx_emu_bf16(qw_amx_emu.data[b][k] + 2 * i);
    for (int m = 0; m < rows; m++) {
        float acc[QW_AMX_EMU_COLSB / 4];
        memcpy(acc, qw_amx_emu.data[d][m], (size_t)nc * 4);
        for (int k = 0; k < kp; k++) {
            const float x0 = qw_amx_emu_bf16(qw_amx_emu.data[a][m] + 4 * k);
            const float x1 = qw_amx_emu_bf16(qw_amx_emu.data[a][m] + 4 * k + 2);
            for (int n = 0; n < nc; n++) {
                acc[n] = qw_amx_emu_fma(x0, bv[k][2 * n], acc[n]);
                acc[n] = qw_amx_emu_fma(x1, bv[k][2 * n + 1], acc[n]);
            }
        }
        memcpy(qw_amx_emu.data[d][m], acc, (size_t)nc * 4);
        memset(qw_amx_emu.data[d][m] + nc * 4, 0, (size_t)(QW_AMX_EMU_COLSB - nc * 4));
    }
    for (int m = rows; m < QW_AMX_EMU_ROWS; m++) memset(qw_amx_emu.data[d][m], 0, QW_AMX_EMU_COLSB);
}

static inline void qw_amx_emu_dpbusd(int d, int a, int b) {
    if (!qw_amx_emu_usable(d) || !qw_amx_emu_usable(a) || !qw_amx_emu_usable(b)) return;
    const int rows = qw_amx_emu.rows[d], nc = qw_amx_emu.colsb[d] / 4, kq = qw_amx_emu.colsb[a] / 4;
    if (d == a || d == b || a == b || qw_amx_emu.rows[a] != rows || qw_amx_emu.colsb[b] != qw_amx_emu.colsb[d] ||
        qw_amx_emu.rows[b] != kq || qw_amx_emu.colsb[d] % 4 || qw_amx_emu.colsb[a] % 4) { /* #UD */
        qw_amx_emu.faults++;
        return;
    }
    for (int m = 0; m < rows; m++) {
        uint32_t acc[QW_AMX_EMU_COLSB / 4]; /* unsigned: wraps as the hardware's int32 does */
        memcpy(acc, qw_amx_emu.data[d][m], (size_t)nc * 4);
        for (int k = 0; k < kq; k++)
            for (int n = 0; n < nc; n++)
                for (int e = 0; e < 4; e++)
                    acc[n] += (uint32_t)((int32_t)qw_amx_emu.data[a][m][4 * k + e] *
                                         (int32_t)(int8_t)qw_amx_emu.data[b][k][4 * n + e]);
        memcpy(qw_amx_emu.data[d][m], acc, (size_t)nc * 4);
        memset(qw_amx_emu.data[d][m] + nc * 4, 0, (size_t)(QW_AMX_EMU_COLSB - nc * 4));
    }
    for (int m = rows; m < QW_AMX_EMU_ROWS; m++) memset(qw_amx_emu.data[d][m], 0, QW_AMX_EMU_COLSB);
}

/* The intrinsics' names and arguments (tile numbers are small integers); in place of the hardware's
 * where immintrin.h came first (quant_amx.c with QW_AMX_NATIVE_VECTORS). */
#undef _tile_loadd
#undef _tile_stored
#undef _tile_zero
#undef _tile_dpbf16ps
#undef _tile_dpbusd
#define _tile_loadconfig(config) qw_amx_emu_loadconfig(config)
#define _tile_release() qw_amx_emu_release()
#define _tile_loadd(t, base, stride) qw_amx_emu_loadd((t), (base), (long)(stride))
#define _tile_stored(t, base, stride) qw_amx_emu_stored((t), (base), (long)(stride))
#define _tile_zero(t) qw_amx_emu_zero(t)
#define _tile_dpbf16ps(d, a, b) qw_amx_emu_dpbf16ps((d), (a), (b))
#define _tile_dpbusd(d, a, b) qw_amx_emu_dpbusd((d), (a), (b))

#endif /* QWEN_AMX_EMULATE_H */
