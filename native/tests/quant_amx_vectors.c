/*
 * The AMX-INT8 table with its tile instructions emulated (amx_emulate.h) and
 * its vector steps the AVX-512 code that AMX machines run: qw_q8_amx_emu512,
 * which test_quant checks bit for bit on any CPU with AVX-512, so that a
 * change to the tiles' scaling is tested where no AMX is. Compiled with the
 * AVX-512 flags of quant_amx.c (CMakeLists.txt).
 */
#define QW_AMX_EMULATE
#define QW_AMX_NATIVE_VECTORS
#include "quant_amx.c"
