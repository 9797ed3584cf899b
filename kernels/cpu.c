/* cpu.c - CPU feature detection and the choice of kernel variants.
 *
 * Legend
 *   kernel_set   one function pointer per dispatched operation; three sets:
 *                scalar (ref.c), avx2 (AVX2 + FMA), avx512 (F/BW/VL/DQ).
 *   active       the set in use: the scalar set until the constructor below
 *                runs (before main), then the best the CPU supports, or the
 *                scalar set again after cpu_force_scalar(1).
 *   low_precision  opt-in bf16 / int8 activations for matvec and matmul (kernels.h).
 * Low-precision kernels need hardware: vdpbf16ps (AVX512_BF16) for BF16 x BF16,
 * VNNI or AVX2 for Q8 x Q8; without it matvec_rows / matmul_rows keep f32 activations. A set
 * with a low-precision matvec but no matmul tile of its own (avx2) runs the matvec per token.
 */
#include "kernels_impl.h"

/* ---------------------------------------------------------------- features */

static cpu_features features;
static int features_ready;

const cpu_features *cpu_get_features(void) {
    if (!features_ready) {
        __builtin_cpu_init();
        features.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        features.avx512f = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
        features.avx512_vnni = features.avx512f && __builtin_cpu_supports("avx512vnni");
#if defined(__GNUC__) && __GNUC__ >= 12
        features.avx512_bf16 = features.avx512f && __builtin_cpu_supports("avx512bf16");
#endif
        features_ready = 1;
    }
    return &features;
}

/* ---------------------------------------------------------------- kernel sets */

typedef struct {
    const char *name;
    int kset;                                                              /* KSET_*: column of the type table */
    void (*q8q8)(const mat *, const block_q8 *, float *, int, int);        /* NULL: no fast path */
    void (*bf16bf16)(const mat *, const uint16_t *, float *, int, int);    /* NULL: no fast path */
    void (*q8q8_mm)(const mat *, const block_q8 *, int, float *, int, int, int);      /* NULL: q8q8 per token */
    void (*bf16bf16_mm)(const mat *, const uint16_t *, int, float *, int, int, int);  /* NULL: bf16bf16 per token */
    void (*rmsnorm)(float *, const float *, const float *, int, float);
    void (*softmax)(float *, int);
    void (*silu_mul)(float *, const float *, int);
    float (*vec_dot)(const float *, const float *, int);
    void (*vec_axpy)(float *, float, const float *, int);
    float (*vec_dot_bf16)(const float *, const uint16_t *, int);
    void (*vec_axpy_bf16)(float *, float, const uint16_t *, int);
    int (*vec_argmax)(const float *, int);
    void (*attn_block)(const float *, int, int, int, const void *, int, size_t, int, float, float *, float *, float *,
                       float *);   /* NULL: attention.c keeps its per-head loops */
    void (*quantize_q8)(const float *, block_q8 *, int);
    void (*quantize_bf16)(const float *, uint16_t *, int);
    int (*quantize_q8K)(const float *, block_q8_K *, int);
} kernel_set;

static const kernel_set set_scalar = {
    "scalar", KSET_SCALAR, NULL, NULL, NULL, NULL,
    rmsnorm_ref, softmax_ref, silu_mul_ref, vec_dot_ref, vec_axpy_ref, vec_dot_bf16_ref, vec_axpy_bf16_ref, vec_argmax_ref, NULL,
    quantize_row_q8_ref, quantize_row_bf16_ref, quantize_row_q8_K_ref,
};
static const kernel_set set_avx2 = {
    "avx2", KSET_AVX2, matvec_rows_q8q8_avx2, NULL, NULL, NULL,
    rmsnorm_avx2, softmax_avx2, silu_mul_avx2, vec_dot_avx2, vec_axpy_avx2, vec_dot_bf16_avx2, vec_axpy_bf16_avx2, vec_argmax_ref, NULL,
    quantize_row_q8_avx2, quantize_row_bf16_ref, quantize_row_q8_K_avx2,
};
static kernel_set set_avx512 = {
    "avx512", KSET_AVX512, matvec_rows_q8q8_avx2, NULL, matmul_rows_q8q8_avx512, NULL,
    rmsnorm_avx512, softmax_avx512, silu_mul_avx512, vec_dot_avx512, vec_axpy_avx512, vec_dot_bf16_avx512, vec_axpy_bf16_avx512, vec_argmax_avx512, attn_block_avx512,
    quantize_row_q8_avx512, quantize_row_bf16_avx512, quantize_row_q8_K_avx512,
};

static const kernel_set *active = &set_scalar;
static int low_precision;

static const kernel_set *best_set(void) {
    const cpu_features *f = cpu_get_features();
    if (f->avx512f && f->avx2_fma) {
        if (f->avx512_vnni) {
            set_avx512.q8q8 = matvec_rows_q8q8_avx512vnni;
            set_avx512.q8q8_mm = matmul_rows_q8q8_avx512vnni;
        }
        if (f->avx512_bf16) {
            set_avx512.bf16bf16 = matvec_rows_bf16bf16_avx512bf16;
            set_avx512.bf16bf16_mm = matmul_rows_bf16bf16_avx512bf16;
        }
        set_avx512.attn_block = f->avx512_bf16 ? attn_block_avx512bf16 : attn_block_avx512;
        set_avx512.name = f->avx512_bf16 && f->avx512_vnni ? "avx512-bf16-vnni"
                        : f->avx512_vnni                   ? "avx512-vnni"
                        : f->avx512_bf16                   ? "avx512-bf16"
                                                           : "avx512";
        return &set_avx512;
    }
    if (f->avx2_fma) return &set_avx2;
    return &set_scalar;
}

static void resolve_kernels(void);
__attribute__((constructor)) static void cpu_init(void) {
    resolve_kernels();
    active = best_set();
}

void cpu_force_scalar(int on) { active = on ? &set_scalar : best_set(); }
const char *cpu_kernel_name(void) { return active->name; }
void cpu_set_low_precision(int on) { low_precision = on; }
int cpu_low_precision(void) { return low_precision; }
int q8p_preferred(void) { return active->kset == KSET_AVX512 && !low_precision; }

/* ---------------------------------------------------------------- the type table's kernels */

/* resolved[kset][dt]: the type table's kernels with every NULL taken from the simpler sets. */
static mat_kernels resolved[KSET_N][MAT_N_TYPES];
static int resolved_ready;

#define FILL(op) if (!k.op) k.op = resolved[s - 1][dt].op
static void resolve_kernels(void) {
    for (int s = 0; s < KSET_N; s++)
        for (int dt = 0; dt < MAT_N_TYPES; dt++) {
            mat_kernels k = mat_type_of((mat_dtype)dt)->k[s];
            if (s > 0) { FILL(matvec); FILL(matmul); FILL(matvec_t); FILL(matvec_q8K); FILL(matmul_q8K); }
            resolved[s][dt] = k;
        }
    resolved_ready = 1;
}
#undef FILL

const mat_kernels *mat_kernels_resolved(mat_dtype dt, int kset) {
    if (!resolved_ready) resolve_kernels();
    return &resolved[kset][dt];
}

/* ---------------------------------------------------------------- entry points */

/* Longest row that matvec_rows quantizes on its own stack in low-precision mode. */
#define LOWP_MAX_COLS 65536

void matvec_rows(const mat *W, const float *x, float *y, int row0, int row1) {
    const kernel_set *k = active;
    if (low_precision && W->cols > 0 && W->cols <= LOWP_MAX_COLS) {
        if (W->dtype == MAT_Q8 && k->q8q8) {
            block_q8 xq[W->cols / QK8];
            quantize_row_q8(x, xq, W->cols);
            k->q8q8(W, xq, y, row0, row1);
            return;
        }
        if (W->dtype == MAT_BF16 && k->bf16bf16) {
            uint16_t xb[W->cols];
            quantize_row_bf16(x, xb, W->cols);
            k->bf16bf16(W, xb, y, row0, row1);
            return;
        }
    }
    mat_kernels_resolved(W->dtype, k->kset)->matvec(W, x, y, row0, row1);
}

/* Tokens per pass over W's rows in matmul_rows: the kernels sweep every token for each
 * block of rows, so a long batch (prefill: 512 tokens x 4 KB of activations) would stream
 * X from L3 once per 4 rows; in chunks of 64 tokens X stays in L2 (256 KB at H = 1024)
 * and W's rows are read once per chunk instead. */
#define MATMUL_TOKEN_CHUNK 64

/* Bytes of quantized X that matmul_rows keeps on its stack per pass in low-precision mode. */
#define LOWP_MM_X_BYTES (256 * 1024)

/* matmul_rows with low-precision activations (cpu_lowp_kind(W) != 0): X quantized per token,
 * as matvec_rows does for one, in passes of LOWP_MM_X_BYTES. */
static void matmul_lowp(const mat *W, int kind, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    size_t xb = kind == MAT_Q8 ? (size_t)(W->cols / QK8) * sizeof(block_q8) : (size_t)W->cols * 2;
    int chunk = (int)(LOWP_MM_X_BYTES / xb);
    if (chunk < 1) chunk = 1;
    if (chunk > n) chunk = n;
    unsigned char buf[(size_t)chunk * xb] __attribute__((aligned(64)));
    for (int t0 = 0; t0 < n; t0 += chunk) {
        int nt = n - t0 < chunk ? n - t0 : chunk;
        for (int t = 0; t < nt; t++) {
            const float *x = X + (size_t)(t0 + t) * W->cols;
            if (kind == MAT_Q8) quantize_row_q8(x, (block_q8 *)(buf + (size_t)t * xb), W->cols);
            else quantize_row_bf16(x, (uint16_t *)(buf + (size_t)t * xb), W->cols);
        }
        if (kind == MAT_Q8) matmul_rows_q8q8(W, (const block_q8 *)buf, nt, Y + (size_t)t0 * ldy, ldy, row0, row1);
        else matmul_rows_bf16bf16(W, (const uint16_t *)buf, nt, Y + (size_t)t0 * ldy, ldy, row0, row1);
    }
}

void matmul_rows(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    int kind = cpu_lowp_kind(W);
    if (kind && n > 0) {
        matmul_lowp(W, kind, X, n, Y, ldy, row0, row1);
        return;
    }
    for (int t0 = 0; t0 < n; t0 += MATMUL_TOKEN_CHUNK) {
        int nt = n - t0 < MATMUL_TOKEN_CHUNK ? n - t0 : MATMUL_TOKEN_CHUNK;
        mat_kernels_resolved(W->dtype, active->kset)->matmul(W, X + (size_t)t0 * W->cols, nt, Y + (size_t)t0 * ldy, ldy, row0, row1);
    }
}

void matvec_t_rows(const mat *W, const float *x, float *y, int row0, int row1) {
    mat_kernels_resolved(W->dtype, active->kset)->matvec_t(W, x, y, row0, row1);
}

void matvec_rows_q8K(const mat *W, const block_q8_K *xq, float *y, int row0, int row1) {
    mat_kernels_resolved(W->dtype, active->kset)->matvec_q8K(W, xq, y, row0, row1);
}

void matmul_rows_q8K(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1) {
    mat_kernels_resolved(W->dtype, active->kset)->matmul_q8K(W, XQ, n, Y, ldy, row0, row1);
}

int cpu_q8K_path(const mat *W) {
    const mat_kernels *k = mat_kernels_resolved(W->dtype, active->kset);
    return mat_is_kquant(W->dtype) && k->matvec_q8K && k->matvec != matvec_rows_ref && W->cols <= KQ_MAX_COLS;
}

void matvec_rows_q8q8(const mat *W, const block_q8 *xq, float *y, int row0, int row1) {
    const kernel_set *k = active;
    (k->q8q8 ? k->q8q8 : matvec_rows_q8q8_ref)(W, xq, y, row0, row1);
}

void matvec_rows_bf16bf16(const mat *W, const uint16_t *xb, float *y, int row0, int row1) {
    const kernel_set *k = active;
    (k->bf16bf16 ? k->bf16bf16 : matvec_rows_bf16bf16_ref)(W, xb, y, row0, row1);
}

void matmul_rows_q8q8(const mat *W, const block_q8 *XQ, int n, float *Y, int ldy, int row0, int row1) {
    const kernel_set *k = active;
    if (k->q8q8_mm) { k->q8q8_mm(W, XQ, n, Y, ldy, row0, row1); return; }
    int nb = W->cols / QK8;
    for (int t = 0; t < n; t++) matvec_rows_q8q8(W, XQ + (size_t)t * nb, Y + (size_t)t * ldy + row0, row0, row1);
}

void matmul_rows_bf16bf16(const mat *W, const uint16_t *XB, int n, float *Y, int ldy, int row0, int row1) {
    const kernel_set *k = active;
    if (k->bf16bf16_mm) { k->bf16bf16_mm(W, XB, n, Y, ldy, row0, row1); return; }
    for (int t = 0; t < n; t++)
        matvec_rows_bf16bf16(W, XB + (size_t)t * W->cols, Y + (size_t)t * ldy + row0, row0, row1);
}

/* Whether matvec_rows / matmul_rows would take a low-precision path for W (threadpool.c
 * uses this to quantize x once per call instead of once per thread). */
int cpu_lowp_kind(const mat *W) {
    const kernel_set *k = active;
    if (!low_precision || W->cols <= 0 || W->cols > LOWP_MAX_COLS) return 0;
    if (W->dtype == MAT_Q8 && k->q8q8) return MAT_Q8;
    if (W->dtype == MAT_BF16 && k->bf16bf16) return MAT_BF16;
    return 0;
}

void rmsnorm(float *out, const float *x, const float *w, int n, float eps) { active->rmsnorm(out, x, w, n, eps); }
void softmax(float *x, int n) { active->softmax(x, n); }
void silu_mul(float *gate, const float *up, int n) { active->silu_mul(gate, up, n); }
float vec_dot(const float *a, const float *b, int n) { return active->vec_dot(a, b, n); }
int vec_argmax(const float *x, int n) { return active->vec_argmax(x, n); }
void router_topk(const float *x, int n, int k, int *idx) {
    if (active->kset == KSET_AVX512) router_topk_avx512(x, n, k, idx);
    else if (active->kset == KSET_AVX2) router_topk_avx2(x, n, k, idx);
    else router_topk_ref(x, n, k, idx);
}
void vec_axpy(float *y, float a, const float *x, int n) { active->vec_axpy(y, a, x, n); }
float vec_dot_bf16(const float *a, const uint16_t *b, int n) { return active->vec_dot_bf16(a, b, n); }
void vec_axpy_bf16(float *y, float a, const uint16_t *x, int n) { active->vec_axpy_bf16(y, a, x, n); }
void attn_block(const float *qc, int nh, int W, int R, const void *rows, int bf16, size_t ld, int n, float scale,
                float *scratch, float *m, float *l, float *o) {
    (active->attn_block ? active->attn_block : attn_block_ref)(qc, nh, W, R, rows, bf16, ld, n, scale, scratch, m, l, o);
}
int attn_block_fast(void) { return active->attn_block != NULL; }
int attn_block_bf16_rounds(void) { return active->attn_block == attn_block_avx512bf16; }
void quantize_row_q8(const float *x, block_q8 *out, int n) { active->quantize_q8(x, out, n); }
void quantize_row_bf16(const float *x, uint16_t *out, int n) { active->quantize_bf16(x, out, n); }
int quantize_row_q8_K(const float *x, block_q8_K *out, int n) { return active->quantize_q8K(x, out, n); }
