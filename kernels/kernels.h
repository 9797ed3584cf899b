/* kernels.h - the hot loops of moe, one interface per operation.
 *
 * Every kernel has a plain scalar reference (`*_ref`, kernels/ref.c) and may
 * have optimized versions (AVX-512, AVX2) picked once at run time from CPUID
 * (kernels/cpu.c). The un-suffixed name is the dispatching entry point that the
 * engine calls. Tests compare every optimized variant with its reference.
 *
 * Notation: a weight matrix W is [rows, cols] row-major (PyTorch [out, in]);
 * y = W x means y[r] = sum_c W[r, c] x[c]. Activations are always f32.
 */
#ifndef MOE_KERNELS_H
#define MOE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- matrices */

typedef enum {
    MAT_F32 = 0,   /* float[rows * cols] */
    MAT_BF16 = 1,  /* uint16_t[rows * cols], bfloat16 bit patterns */
    MAT_Q8 = 2,    /* rows of blocks of QK8 int8 values with one f32 scale each; cols % QK8 == 0 */
} mat_dtype;
#define MAT_N_TYPES 3   /* entries of the type table (kernels/types.c) */

#define QK8 32
typedef struct {
    float scale;          /* value = scale * q[i] */
    int8_t q[QK8];
} block_q8;

typedef struct {
    mat_dtype dtype;
    int rows, cols;
    const void *data;     /* layout given by dtype; rows * cols elements (Q8: rows * cols/QK8 blocks) */
} mat;

/* The type table (kernels/types.c): one entry per weight format. A row of `cols`
 * elements (cols % block_elems == 0) is cols / block_elems blocks of block_bytes. */
typedef struct {
    const char *name;                                     /* "f32", "bf16", "q8", ... */
    int block_elems;                                      /* elements per block (1: plain) */
    int block_bytes;                                      /* bytes per block */
    void (*to_f32)(const void *src, float *dst, int n);   /* n elements of a row, n % block_elems == 0 */
    void (*from_f32)(const float *src, void *dst, int n); /* NULL: not a target of conversion */
} mat_type;

/* The entry of `dt`, or NULL for a value outside the table. */
const mat_type *mat_type_of(mat_dtype dt);
/* Bytes of one row of `cols` elements. */
size_t mat_row_bytes(mat_dtype dt, int cols);
/* Bytes that W's data occupies. */
size_t mat_bytes(const mat *W);
/* W[r, c] as float (slow; for tests and debugging). */
float mat_get(const mat *W, int r, int c);

/* y[r - row0] = (W x)[r] for r in [row0, row1): the unit of work that threads split. */
void matvec_rows(const mat *W, const float *x, float *y, int row0, int row1);
void matvec_rows_ref(const mat *W, const float *x, float *y, int row0, int row1);

/* Y[t, r] = (W X[t])[r], t in [0, n), r in [row0, row1); X is [n, cols], Y is [n, ldy].
 * Small batches (prefill, MTP verification, tokens of one expert). */
void matmul_rows(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1);
void matmul_rows_ref(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1);

/* Transposed matvec over a row range: y[c] = sum_{r in [row0, row1)} x[r - row0] W[r, c] for every
 * c in [0, cols); x is [row1 - row0], y is [cols] and overwritten (0 if the range is empty).
 * Rows are summed in order, starting from the first row's product, so a single row with
 * x = {1} is exactly row0 of W as f32 (mat_row_f32). MLA decode: q_abs = W_UK[h]^T q_nope. */
void matvec_t_rows(const mat *W, const float *x, float *y, int row0, int row1);
void matvec_t_rows_ref(const mat *W, const float *x, float *y, int row0, int row1);

/* Low-precision activations (opt-in: --act-lowp; faster, less accurate; see kernels/README.md).
 * matvec_rows_q8q8: W is MAT_Q8 and x was quantized with quantize_row_q8 (integer
 * dots, VNNI). matvec_rows_bf16bf16: W is MAT_BF16 and x was rounded with
 * quantize_row_bf16 (vdpbf16ps). Same y convention as matvec_rows. */
void matvec_rows_q8q8(const mat *W, const block_q8 *xq, float *y, int row0, int row1);
void matvec_rows_q8q8_ref(const mat *W, const block_q8 *xq, float *y, int row0, int row1);
void matvec_rows_bf16bf16(const mat *W, const uint16_t *xb, float *y, int row0, int row1);
void matvec_rows_bf16bf16_ref(const mat *W, const uint16_t *xb, float *y, int row0, int row1);

/* ---------------------------------------------------------------- conversions */

static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}
uint16_t f32_to_bf16(float f);          /* round to nearest even, NaN kept */
float f16_to_f32(uint16_t h);
float fp8_e4m3_to_f32(uint8_t b);       /* e4m3fn: no inf, 0x7F/0xFF are NaN */
/* Quantizes n floats (n % QK8 == 0) into n / QK8 blocks. */
void quantize_row_q8(const float *x, block_q8 *out, int n);
void quantize_row_q8_ref(const float *x, block_q8 *out, int n);
/* Rounds n floats to bf16 (round to nearest even, as f32_to_bf16). */
void quantize_row_bf16(const float *x, uint16_t *out, int n);
void quantize_row_bf16_ref(const float *x, uint16_t *out, int n);

/* ---------------------------------------------------------------- small kernels */

/* out = w * x / sqrt(mean(x^2) + eps); out may alias x. */
void rmsnorm(float *out, const float *x, const float *w, int n, float eps);
void rmsnorm_ref(float *out, const float *x, const float *w, int n, float eps);

/* In-place RoPE of one dr-vector. cos_sin holds dr/2 (cos, sin) pairs for the position
 * (already multiplied by the YaRN mscale). interleaved=1 rotates (x[2i], x[2i+1]);
 * 0 rotates (x[i], x[i + dr/2]) (half-split / NeoX layout). */
void rope_apply(float *x, const float *cos_sin, int dr, int interleaved);

/* In-place softmax over n values. */
void softmax(float *x, int n);
void softmax_ref(float *x, int n);

/* gate[i] = silu(gate[i]) * up[i] */
void silu_mul(float *gate, const float *up, int n);
void silu_mul_ref(float *gate, const float *up, int n);

/* Dot product and axpy (y += a x) of f32 vectors. */
float vec_dot(const float *a, const float *b, int n);
void vec_axpy(float *y, float a, const float *x, int n);
float vec_dot_ref(const float *a, const float *b, int n);
void vec_axpy_ref(float *y, float a, const float *x, int n);

/* Index of the largest of x[0..n), n >= 1: the first one among equals; NaN never wins, and
 * a NaN at x[0] is returned as 0 (as `if (x[i] > x[best]) best = i` does). Greedy sampling
 * over the vocabulary. */
int vec_argmax(const float *x, int n);
int vec_argmax_ref(const float *x, int n);

/* Indices of the k largest of x[0..n) in idx[0..k), sorted by value descending;
 * equal values rank the lower index first; NaN ranks below every number. 0 < k <= n. */
void topk_indices(const float *x, int n, int k, int *idx);
void topk_indices_ref(const float *x, int n, int k, int *idx);

/* ---------------------------------------------------------------- CPU features */

typedef struct {
    int avx2_fma;
    int avx512f;      /* with BW, VL, DQ */
    int avx512_bf16;
    int avx512_vnni;
} cpu_features;

const cpu_features *cpu_get_features(void);
/* Forces the scalar reference kernels (1) or the best available (0); for tests. */
void cpu_force_scalar(int on);
/* Name of the kernel set in use, e.g. "avx512-bf16", "avx2", "scalar". */
const char *cpu_kernel_name(void);
/* Low-precision activations for matvec_rows / matvec_parallel (default 0 = off):
 * on, BF16 weights are dotted with x rounded to bf16 (vdpbf16ps) and Q8 weights
 * with x quantized to Q8 (integer dots) when the CPU has those instructions.
 * matmul_rows always uses f32 activations. Set once at start-up, not while
 * kernels run on other threads. */
void cpu_set_low_precision(int on);
int cpu_low_precision(void);

#endif
