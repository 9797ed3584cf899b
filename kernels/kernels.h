/* kernels.h - the hot loops of moe, one interface per operation.
 *
 * Every kernel has a plain scalar reference (`*_ref`, kernels/ref.c) and may
 * have optimized versions (AVX-512, AVX2) picked once at run time from CPUID
 * (kernels/cpu.c). The un-suffixed name is the dispatching entry point that the
 * engine calls. Tests compare every optimized variant with its reference.
 *
 * Notation: a weight matrix W is [rows, cols] row-major (PyTorch [out, in]);
 * y = W x means y[r] = sum_c W[r, c] x[c]. Activations are f32 at the interface; the
 * k-quant kernels (Q4_K, Q6_K) quantize them to int8 per 256 inside (see matvec_rows_q8K).
 */
#ifndef MOE_KERNELS_H
#define MOE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- matrices */

typedef enum {
    MAT_F32 = 0,   /* float[rows * cols] */
    MAT_BF16 = 1,  /* uint16_t[rows * cols], bfloat16 bit patterns */
    MAT_Q8 = 2,    /* moe's own: rows of block_q8 (f32 scale + QK8 int8); cols % QK8 == 0 */
    /* ggml's GGUF blocks, bit for bit (llama.cpp ggml-common.h), so GGUF tensors are used in
     * place; values exactly as ggml's dequantize_row_* (see kernels/types.c). */
    MAT_F16 = 3,   /* uint16_t[rows * cols], IEEE half (GGML_TYPE_F16) */
    MAT_Q8_0 = 4,  /* block_q8_0: 32 elements, 34 bytes (GGML_TYPE_Q8_0) */
    MAT_Q4_0 = 5,  /* block_q4_0: 32 elements, 18 bytes (GGML_TYPE_Q4_0) */
    MAT_Q4_K = 6,  /* block_q4_K: 256 elements, 144 bytes (GGML_TYPE_Q4_K); moe's --dtype q4 */
    MAT_Q5_K = 7,  /* block_q5_K: 256 elements, 176 bytes (GGML_TYPE_Q5_K) */
    MAT_Q6_K = 8,  /* block_q6_K: 256 elements, 210 bytes (GGML_TYPE_Q6_K) */
    MAT_Q5_0 = 9,  /* block_q5_0: 32 elements, 22 bytes (GGML_TYPE_Q5_0; llama-quantize's Q4_K_M fallback for
                      rows that are not whole 256-blocks) */
    MAT_Q8P = 10,  /* moe's Q8 with rows packed in panels of Q8P_ROWS (block_q8p): the same values and bytes
                      as MAT_Q8 (the last panel padded with zero rows), laid out for the AVX-512 kernels;
                      made by q8p_pack / q8p_pack_into */
} mat_dtype;
#define MAT_N_TYPES 11  /* entries of the type table (kernels/types.c) */

#define QK8 32
typedef struct {
    float scale;          /* value = scale * q[i] */
    int8_t q[QK8];
} block_q8;

/* MAT_Q8P: rows 16 p .. 16 p + 15, columns 32 k .. 32 k + 31 of W are block p * (cols / 32) + k:
 * the 16 rows' scales, then per column pair j the 16 rows' two weights (row r's block_q8 values
 * q[2j], q[2j + 1] at q[j][r]). 576 bytes = 16 block_q8: a row still costs cols / 32 x 36 bytes. */
#define Q8P_ROWS 16
typedef struct {
    float d[Q8P_ROWS];                 /* row r: its block_q8 scale */
    int8_t q[QK8 / 2][Q8P_ROWS][2];    /* [column pair][row][2] */
} block_q8p;

/* ---- ggml's blocks (all fields little-endian, no padding: sizes are static-asserted in
 * types.c). f16 fields are IEEE half bit patterns (f16_to_f32). */
#define QK8_0 32
typedef struct {
    uint16_t d;           /* f16 scale */
    int8_t qs[QK8_0];     /* value i = d * qs[i] */
} block_q8_0;             /* 34 bytes */

#define QK4_0 32
typedef struct {
    uint16_t d;           /* f16 scale */
    uint8_t qs[QK4_0 / 2];/* element i < 16: low nibble of qs[i]; i >= 16: high nibble of qs[i - 16]; value d * (q - 8) */
} block_q4_0;             /* 18 bytes */

typedef struct {
    uint16_t d;           /* f16 scale */
    uint8_t qh[4];        /* bit i (little-endian u32): the fifth bit of element i */
    uint8_t qs[QK4_0 / 2];/* low nibbles as block_q4_0; value d * (q - 16), q in [0, 32) */
} block_q5_0;             /* 22 bytes */

#define QK_K 256          /* elements of a k-quant super-block */
#define K_SCALE_SIZE 12
typedef struct {
    uint16_t d;           /* f16 super-block scale of the 6-bit sub-block scales */
    uint16_t dmin;        /* f16 super-block scale of the 6-bit sub-block mins */
    uint8_t scales[K_SCALE_SIZE]; /* 8 (scale, min) pairs of 6 bits, packed (get_scale_min_k4 in types.c) */
    uint8_t qs[QK_K / 2]; /* 4-bit q; 64 elements per 32 bytes: low nibbles the first 32, high the next 32 */
} block_q4_K;             /* 144 bytes; element in sub-block j: d*sc_j*q - dmin*m_j */

typedef struct {
    uint16_t d, dmin;     /* as block_q4_K */
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8]; /* 5th bit: element 64 g + l (l < 32) has bit 2 g of qh[l], 64 g + 32 + l bit 2 g + 1 */
    uint8_t qs[QK_K / 2]; /* low 4 bits, as block_q4_K */
} block_q5_K;             /* 176 bytes */

typedef struct {
    uint8_t ql[QK_K / 2]; /* low 4 bits (layout in types.c: q6k_to_f32) */
    uint8_t qh[QK_K / 4]; /* high 2 bits */
    int8_t scales[QK_K / 16]; /* one int8 scale per 16 elements */
    uint16_t d;           /* f16 super-block scale; value d * scales[j] * (q - 32) */
} block_q6_K;             /* 210 bytes */

/* Activations quantized for the k-quant integer kernels (as ggml's block_q8_K). */
typedef struct {
    float d;              /* value i = d * qs[i] */
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16]; /* sum of qs over each 16 elements */
} block_q8_K;             /* 292 bytes */


/* The type table (kernels/types.c): one entry per weight format. A row of `cols`
 * elements (cols % block_elems == 0) is cols / block_elems blocks of block_bytes. */
typedef struct {
    mat_dtype dtype;
    int rows, cols;
    const void *data;     /* layout given by dtype; each row is cols / block_elems blocks (mat_row_bytes) */
} mat;

/* The matrix kernels of one type for one kernel set (kernels/cpu.c): NULL = none of its own
 * (the next simpler set's is used: avx512 -> avx2 -> scalar). */
typedef struct {
    void (*matvec)(const mat *W, const float *x, float *y, int row0, int row1);
    void (*matmul)(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1);
    void (*matvec_t)(const mat *W, const float *x, float *y, int row0, int row1);
    /* k-quants only (else NULL): the integer kernels with x already quantized (block_q8_K) */
    void (*matvec_q8K)(const mat *W, const block_q8_K *xq, float *y, int row0, int row1);
    void (*matmul_q8K)(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1);
} mat_kernels;
enum { KSET_SCALAR, KSET_AVX2, KSET_AVX512, KSET_N };

typedef struct {
    const char *name;                                     /* "f32", "bf16", "q8", "q4_K", ... */
    int block_elems;                                      /* elements per block (1: plain) */
    int block_bytes;                                      /* bytes per block */
    void (*to_f32)(const void *src, float *dst, int n);   /* n elements of a row, n % block_elems == 0 */
    void (*from_f32)(const float *src, void *dst, int n); /* NULL: not a target of conversion */
    mat_kernels k[KSET_N];                                /* [KSET_SCALAR] is the reference; others may be NULL */
} mat_type;

/* The entry of `dt`, or NULL for a value outside the table. */
const mat_type *mat_type_of(mat_dtype dt);
/* Bytes of one row of `cols` elements. */
size_t mat_row_bytes(mat_dtype dt, int cols);
/* Bytes of W's weights: rows x mat_row_bytes (what a pass reads, what `mkckpt --plan` counts). */
size_t mat_bytes(const mat *W);
/* Bytes that W's data occupies: mat_bytes, and for MAT_Q8P the zero rows of a padded last
 * panel too (what a copy of W must move). */
size_t mat_storage_bytes(const mat *W);
/* W[r, c] as float (slow; for tests and debugging). */
float mat_get(const mat *W, int r, int c);
/* MAT_Q8P: bytes of a rows x cols matrix (rows rounded up to whole panels; what mat_storage_bytes says). */
size_t q8p_bytes(int rows, int cols);
/* Writes MAT_Q8 matrix W packed in panels to dst (q8p_bytes(W->rows, W->cols); the last
 * panel's missing rows zero). dst may be W->data when rows % Q8P_ROWS == 0. Returns 0, or -1
 * (nothing written) if W is not MAT_Q8, or no memory for one panel of scratch. */
int q8p_pack_into(const mat *W, void *dst);
/* The same in place (W->data writable, rows % Q8P_ROWS == 0), W->dtype = MAT_Q8P; -1: W unchanged. */
int q8p_pack(mat *W);
/* Whether the active kernel set has its own MAT_Q8P kernels (AVX-512) and low-precision
 * activations are off: the loader packs Q8 projections only then (elsewhere the row-major Q8
 * kernels are the faster ones; --act-lowp's int8-x kernels read row-major Q8). */
int q8p_preferred(void);

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
/* The same for n tokens (XQ: n rows of cols / 32 blocks, XB: n rows of cols bf16; Y as
 * matmul_rows): each token's Y row is bit for bit what the matvec above gives for that token
 * alone (kernels with register tiles over several rows and tokens; the refs loop the matvec
 * refs). With low precision on, matmul_rows quantizes X per token and runs these. */
void matmul_rows_q8q8(const mat *W, const block_q8 *XQ, int n, float *Y, int ldy, int row0, int row1);
void matmul_rows_q8q8_ref(const mat *W, const block_q8 *XQ, int n, float *Y, int ldy, int row0, int row1);
void matmul_rows_bf16bf16(const mat *W, const uint16_t *XB, int n, float *Y, int ldy, int row0, int row1);
void matmul_rows_bf16bf16_ref(const mat *W, const uint16_t *XB, int n, float *Y, int ldy, int row0, int row1);

/* k-quant weights (MAT_Q4_K, MAT_Q5_K, MAT_Q6_K) times activations quantized to block_q8_K
 * (quantize_row_q8_K): per super-block an exact integer dot, then scaled in f32:
 *   y = sum_b (d_b dx_b) sum_j sc_j (q_j . xq_j) - sum_b (dmin_b dx_b) sum_j m_j sum(xq_j)
 * (Q6_K: sum_b d_b dx_b sum_j sc_j ((q_j - 32) . xq_j), no mins). With a SIMD kernel set,
 * matvec_rows / matmul_rows compute exactly this for k-quant weights (x quantized per call,
 * unless x holds Inf / NaN or is nearly subnormal: then the f32 reference); matvec_rows_ref
 * is the f32-activation definition it approximates (bound: kernels/README.md). XQ is n rows
 * of cols / QK_K blocks. W->cols % QK_K == 0. */
void matvec_rows_q8K(const mat *W, const block_q8_K *xq, float *y, int row0, int row1);
void matvec_rows_q8K_ref(const mat *W, const block_q8_K *xq, float *y, int row0, int row1);
void matmul_rows_q8K(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1);
void matmul_rows_q8K_ref(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1);
/* Q4_0 and Q5_0 weights times activations quantized per 32 to int8 (quantize_row_q8a: a
 * block_q8 with d = max|x| / 127, q = round-to-even(x 127 / max|x|)): per block an exact
 * integer dot, then y = sum_b (d_b dx_b) isum_b in f32. With the AVX-512 kernel set,
 * matvec_rows / matmul_rows compute this for Q4_0 / Q5_0 weights (x quantized per call, unless
 * it holds Inf / NaN or a nearly subnormal block: then the f32 reference); the bound against
 * matvec_rows_ref is in kernels/README.md. quantize_row_q8a returns 0 (out unspecified) for
 * such x. n % 32 == 0. */
int quantize_row_q8a_ref(const float *x, block_q8 *out, int n);
void matvec_rows_q8a_ref(const mat *W, const block_q8 *xq, float *y, int row0, int row1);
void matmul_rows_q8a_ref(const mat *W, const block_q8 *XQ, int n, float *Y, int ldy, int row0, int row1);
/* 1 for the types above (the ones matvec_rows_q8K takes). */
int mat_is_kquant(mat_dtype dt);

/* ---------------------------------------------------------------- conversions */

static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}
uint16_t f32_to_bf16(float f);          /* round to nearest even, NaN kept */
float f16_to_f32(uint16_t h);          /* exact (every half is an f32) */
uint16_t f16_from_f32(float f);           /* round to nearest even; overflow -> inf, NaN kept */
float fp8_e4m3_to_f32(uint8_t b);       /* e4m3fn: no inf, 0x7F/0xFF are NaN */
/* Quantizes n floats (n % QK8 == 0) into n / QK8 blocks. */
void quantize_row_q8(const float *x, block_q8 *out, int n);
void quantize_row_q8_ref(const float *x, block_q8 *out, int n);
/* Quantizes n floats (n % QK_K == 0) into n / QK_K block_q8_K: d = max|x| / 127,
 * qs = round-to-even(x * (127 / max|x|)), bsums exact. Returns 0 (out unspecified) if x
 * holds an Inf or NaN, or a block whose max|x| is below 1e-30 but not 0. */
int quantize_row_q8_K(const float *x, block_q8_K *out, int n);
int quantize_row_q8_K_ref(const float *x, block_q8_K *out, int n);
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
/* The same with b / x stored as bf16 (the --kv-dtype bf16 cache): each bf16 is widened to
 * f32 exactly, so only the summation order differs from vec_dot / vec_axpy on the widened
 * values. */
float vec_dot_bf16(const float *a, const uint16_t *b, int n);
void vec_axpy_bf16(float *y, float a, const uint16_t *x, int n);
float vec_dot_bf16_ref(const float *a, const uint16_t *b, int n);
void vec_axpy_bf16_ref(float *y, float a, const uint16_t *x, int n);

/* Index of the largest of x[0..n), n >= 1: the first one among equals; NaN never wins, and
 * a NaN at x[0] is returned as 0 (as `if (x[i] > x[best]) best = i` does). Greedy sampling
 * over the vocabulary. */
int vec_argmax(const float *x, int n);
int vec_argmax_ref(const float *x, int n);

/* Indices of the k largest of x[0..n) in idx[0..k), sorted by value descending;
 * equal values rank the lower index first; NaN ranks below every number. 0 < k <= n. */
void topk_indices(const float *x, int n, int k, int *idx);
void topk_indices_ref(const float *x, int n, int k, int *idx);

/* The router's top-k (engine/router.c): idx[0..k) = the k largest of x[0..n), descending,
 * equal values rank the lower index first; the same as k passes of `if (x[i] > x[best])`
 * over the indices not yet taken (router_topk_ref). Inputs must not hold NaN (the kernels
 * and the reference may then differ); -inf is fine. 0 < k <= n. */
void router_topk(const float *x, int n, int k, int *idx);
void router_topk_ref(const float *x, int n, int k, int *idx);

/* ---------------------------------------------------------------- MLA decode attention */

/* One query's nh heads against a block of n consecutive positions of a sequence's latent
 * cache (engine/attention.c, decoding at depth), reading each cache row once for all heads:
 *   s[h][j] = scale * (qc[h] . row_j)          qc [nh][W] = [q_abs (R) | q_pe (dr)], W = R + dr
 *   m[h]    = max_j s[h][j]                    (the block's max)
 *   e[h][j] = exp(s[h][j] - m[h])              l[h] = sum_j e[h][j]
 *   o[h][c] = sum_j e[h][j] row_j[c]           c < R (unnormalised latent output)
 * row_j = rows + j * ld values, f32 (bf16 = 0) or bf16 (bf16 = 1, widened exactly). scratch
 * [nh][n] holds e. The caller merges blocks (flash-decoding): with M = max_b m_b,
 * o_lat[h] = sum_b exp(m_b - M) o_b[h] / sum_b exp(m_b - M) l_b[h]. n >= 1. */
void attn_block(const float *qc, int nh, int W, int R, const void *rows, int bf16, size_t ld, int n, float scale,
                float *scratch, float *m, float *l, float *o);
void attn_block_ref(const float *qc, int nh, int W, int R, const void *rows, int bf16, size_t ld, int n, float scale,
                    float *scratch, float *m, float *l, float *o);
/* 1 if the kernel set has a fast attn_block (else attention.c keeps its per-head loops). */
int attn_block_fast(void);
/* Where the CPU has AVX512_BF16, attn_block on bf16 rows (bf16 = 1) runs vdpbf16ps: the
 * query and e rounded to bf16 (round to nearest even), l = sum of the rounded e; its
 * reference is attn_block_bf16_ref and attn_block_bf16_rounds() is 1. scratch then holds
 * attn_block_scratch(nh, W, n) floats (e first, [nh][n], as above); f32 rows need nh * n. */
int attn_block_bf16_rounds(void);
void attn_block_bf16_ref(const float *qc, int nh, int W, int R, const uint16_t *rows, size_t ld, int n, float scale,
                         float *scratch, float *m, float *l, float *o);
size_t attn_block_scratch(int nh, int W, int n);

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
/* Low-precision activations for matvec_rows / matvec_parallel / matmul_rows /
 * matmul_parallel (default 0 = off): on, BF16 weights are dotted with x rounded to bf16
 * (vdpbf16ps) and Q8 weights with x quantized to Q8 (integer dots) when the CPU has those
 * instructions; a token's result is the same bits in a matmul as in a matvec. Set once at
 * start-up, not while kernels run on other threads. */
void cpu_set_low_precision(int on);
int cpu_low_precision(void);

#endif
