/*
 * The tile layout both AMX kernels use (kernels_amx.c: bf16 GEMM, quant_amx.c:
 * int8 product): blocks of up to 32 rows x 32 columns on palette 1,
 *   tmm0, 1  C, rows 0-15 of the block, columns 0-15 / 16-31
 *   tmm2, 3  C, rows 16-31, columns 0-15 / 16-31
 *   tmm4, 5  A, rows 0-15 / 16-31, one step of k (64 bytes a row)
 *   tmm6, 7  B, columns 0-15 / 16-31, one step of k (16 rows of 64 bytes)
 * Include it after the tile intrinsics (immintrin.h, or amx_emulate.h).
 */
#ifndef QWEN_AMX_TILES_H
#define QWEN_AMX_TILES_H

#include <stdint.h>
#include <string.h>

/* GCC's AMX intrinsics are asm statements that do not say they read memory
 * (TILELOADD takes its pointer in a register; LDTILECFG names 8 of its 64
 * bytes) or write it (TILESTORED). A compiler barrier on the buffer makes the
 * stores that fill it happen before the tile instructions read it, the loads
 * of what a tile store wrote happen after it, and keeps neither dropped as dead. */
#define QW_AMX_BARRIER(p) __asm__ __volatile__("" : : "r"(p) : "memory")

/* The weights a product reads next, fetched into L2 a few lines at a time while the current ones
 * run: a tile load that misses stalls where the hardware would have fetched ahead of vector loads.
 * Both kernels fetch their next column panel (block) this way. */
typedef struct {
    const char *at, *end;
    int lines; /* per call of qw_amx_fetch_ahead */
} qw_amx_ahead;

static inline void qw_amx_fetch_ahead(qw_amx_ahead *a) {
    for (int i = 0; i < a->lines && a->at < a->end; i++, a->at += 64) __builtin_prefetch(a->at, 0, 2);
}

/* The 64-byte operand of LDTILECFG (palette 1). */
typedef struct {
    uint8_t palette_id, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16]; /* bytes per row of tmm0..7; 8..15 reserved (zero) */
    uint8_t rows[16];   /* rows of tmm0..7; 8..15 reserved (zero) */
} __attribute__((aligned(64))) qw_amx_tilecfg;
_Static_assert(sizeof(qw_amx_tilecfg) == 64, "LDTILECFG reads 64 bytes");

/* Configures the tiles above for blocks of r0 + r1 rows (r0 in 1..16, r1 in 0..16; tmm2, 3, 5
 * unused when r1 = 0): 64 bytes a row everywhere, B tiles of 16 rows. */
static inline void qw_amx_configure(int r0, int r1) {
    qw_amx_tilecfg cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette_id = 1;
    const int rows[8] = {r0, r0, r1, r1, r0, r1, 16, 16}; /* C00 C01 C10 C11 A0 A1 B0 B1 */
    for (int t = 0; t < 8; t++)
        if (rows[t]) cfg.rows[t] = (uint8_t)rows[t], cfg.colsb[t] = 64;
    QW_AMX_BARRIER(&cfg);
    _tile_loadconfig(&cfg);
}

/* The tiles configured for a block of `rows` (1..32) rows: min(rows, 16) + the rest (16 + 16 for a
 * whole block), unless *config (the rows they are configured for; start it at 0) says they are. */
static inline void qw_amx_configure_block(int rows, int *config) {
    if (*config == rows) return;
    qw_amx_configure(rows < 16 ? rows : 16, rows > 16 ? rows - 16 : 0);
    *config = rows;
}

#endif /* QWEN_AMX_TILES_H */
