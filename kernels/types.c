/* types.c - the one table of weight types (kernels.h: mat_type).
 *
 * A weight format is one row here: its name, how many elements a block holds and how
 * many bytes it takes, and how a row converts to and from f32. The matrix kernels
 * (matvec_rows, matmul_rows, matvec_t_rows) read each type as stored; the loader
 * (engine/io/weights.c) converts rows through from_f32 when a checkpoint's tensor is not
 * in the compute format asked for.
 */
#include <string.h>

#include "kernels.h"

/* ---------------------------------------------------------------- row conversions */

static void f32_to_f32_row(const void *src, float *dst, int n) { memcpy(dst, src, sizeof(float) * (size_t)n); }
static void f32_from_f32_row(const float *src, void *dst, int n) { memcpy(dst, src, sizeof(float) * (size_t)n); }

static void bf16_to_f32_row(const void *src, float *dst, int n) {
    const uint16_t *s = src;
    for (int i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
}
static void bf16_from_f32_row(const float *src, void *dst, int n) { quantize_row_bf16(src, dst, n); }

static void q8_to_f32_row(const void *src, float *dst, int n) {
    const block_q8 *b = src;
    for (int k = 0; k < n / QK8; k++)
        for (int i = 0; i < QK8; i++) dst[k * QK8 + i] = b[k].scale * (float)b[k].q[i];
}
static void q8_from_f32_row(const float *src, void *dst, int n) { quantize_row_q8(src, dst, n); }

/* ---------------------------------------------------------------- the table */

static const mat_type types[MAT_N_TYPES] = {
    [MAT_F32] = {"f32", 1, 4, f32_to_f32_row, f32_from_f32_row},
    [MAT_BF16] = {"bf16", 1, 2, bf16_to_f32_row, bf16_from_f32_row},
    [MAT_Q8] = {"q8", QK8, sizeof(block_q8), q8_to_f32_row, q8_from_f32_row},
};

const mat_type *mat_type_of(mat_dtype dt) {
    return (unsigned)dt < MAT_N_TYPES && types[dt].name ? &types[dt] : NULL;
}

size_t mat_row_bytes(mat_dtype dt, int cols) {
    const mat_type *t = mat_type_of(dt);
    return t ? (size_t)cols / (size_t)t->block_elems * (size_t)t->block_bytes : 0;
}

size_t mat_bytes(const mat *W) { return (size_t)W->rows * mat_row_bytes(W->dtype, W->cols); }

float mat_get(const mat *W, int r, int c) {
    const mat_type *t = mat_type_of(W->dtype);
    int be = t->block_elems;
    float block[256];   /* the largest block of any type */
    const unsigned char *row = (const unsigned char *)W->data + (size_t)r * mat_row_bytes(W->dtype, W->cols);
    t->to_f32(row + (size_t)(c / be) * t->block_bytes, block, be);
    return block[c % be];
}
