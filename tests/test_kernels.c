/* test_kernels.c - every optimized kernel against its scalar reference, and the
 * thread pool.
 *
 * Legend
 *   variant   one implementation set (avx512, avx2, and the dispatching entry
 *             points); a variant the CPU lacks is skipped, not failed.
 *   exact     integer-valued data (small ints, power-of-two scales): every
 *             partial sum is an integer below 2^24, so every summation order
 *             gives the same f32 result and optimized == reference exactly.
 *             This catches a dropped or doubled column / row / token exactly.
 *   random    uniform [-1, 1) data, compared with a tolerance (below).
 *
 * Tolerance for dot products of length n (matvec, matmul, vec_dot):
 *   Both the reference (sequential f32 sum) and an optimized kernel (16 or 8
 *   lanes, FMA, then a tree) compute sum_c w_c x_c with floating-point error at
 *   most about (n + 8) u S, where S = sum_c |w_c x_c| and u = FLT_EPSILON / 2
 *   (Higham, recursive summation; +1 rounding for Q8 scale * q, the tree adds
 *   log2(16) levels). So |opt - ref| <= (n + 8) FLT_EPSILON S. A missing
 *   column changes the result by about S / n, which is larger than that for
 *   every n < 2800 used here, and the exact tests catch it regardless.
 * Elementwise kernels (rmsnorm, silu_mul, softmax, axpy) compare per element
 * with a relative bound from the few roundings involved (see each test).
 */
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "blas.h"
#include "kernels_impl.h"
#include "threadpool.h"

/* ---------------------------------------------------------------- helpers */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rng_u32(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}
static float rng_uniform(void) { return (float)((double)rng_u32() / 4294967296.0 * 2.0 - 1.0); } /* [-1, 1) */
static int rng_int(int lo, int hi) { return lo + (int)(rng_u32() % (uint32_t)(hi - lo + 1)); }
static void usleep_for_test(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* Row r of W as f32 (mat_get's values), cached: the tolerances read whole rows. make_mat
 * invalidates the cache (a new matrix may reuse a freed one's address). */
static struct { const void *data; int dtype, cols, r; float *row; int cap; } rc = {NULL, -1, 0, -1, NULL, 0};
static void row_cache_reset(void) { rc.data = NULL; }
static const float *row_f32(const mat *W, int r) {
    if (rc.data != W->data || rc.dtype != (int)W->dtype || rc.cols != W->cols || rc.r != r) {
        if (rc.cap < W->cols) { free(rc.row); rc.row = malloc(sizeof(float) * (size_t)W->cols); rc.cap = W->cols; }
        if (W->dtype == MAT_Q8P)   /* rows in panels: no row of its own to convert */
            for (int c = 0; c < W->cols; c++) rc.row[c] = mat_get(W, r, c);
        else mat_type_of(W->dtype)->to_f32((const char *)W->data + (size_t)r * mat_row_bytes(W->dtype, W->cols), rc.row, W->cols);
        rc.data = W->data; rc.dtype = (int)W->dtype; rc.cols = W->cols; rc.r = r;
    }
    return rc.row;
}

static uint16_t f16_of(float f) { return f16_from_f32(f); }

/* rows x cols of a ggml block type: random bits in every quant field, with scales that keep
 * values near [-1, 1] (random: d, dmin from f16 of small random values; some negative d);
 * exact: d = 1 (Q6_K 1/8), dmin = 1, so every value is a small integer (or eighth). */
static void *make_ggml_rows(mat_dtype dt, int rows, int cols, int exact) {
    size_t bytes = (size_t)rows * mat_row_bytes(dt, cols);
    unsigned char *buf = malloc(bytes ? bytes : 1);
    for (size_t i = 0; i < bytes; i++) buf[i] = (unsigned char)rng_u32();
    size_t n = (size_t)rows * cols;
    switch (dt) {
    case MAT_F16:
        for (size_t i = 0; i < n; i++) ((uint16_t *)buf)[i] = f16_of(exact ? (float)rng_int(-3, 3) : rng_uniform());
        break;
    case MAT_Q8_0:
        for (size_t i = 0; i < n / QK8_0; i++) {
            block_q8_0 *b = (block_q8_0 *)buf + i;
            b->d = f16_of(exact ? ((i & 1) ? 0.5f : 1.0f) : rng_uniform() / 127.0f);
            if (exact) for (int j = 0; j < QK8_0; j++) b->qs[j] = (int8_t)rng_int(-8, 8);
        }
        break;
    case MAT_Q4_0:
        for (size_t i = 0; i < n / QK4_0; i++) ((block_q4_0 *)buf)[i].d = f16_of(exact ? ((i & 1) ? 0.5f : 1.0f) : rng_uniform() / 8.0f);
        break;
    case MAT_Q5_0:
        for (size_t i = 0; i < n / QK4_0; i++) ((block_q5_0 *)buf)[i].d = f16_of(exact ? ((i & 1) ? 0.5f : 1.0f) : rng_uniform() / 16.0f);
        break;
    case MAT_Q4_K: case MAT_Q5_K:
        for (size_t i = 0; i < n / QK_K; i++) {
            block_q4_K *b4 = (block_q4_K *)buf + i;      /* d, dmin at the same place in both */
            block_q5_K *b5 = (block_q5_K *)buf + i;
            uint16_t *d = dt == MAT_Q4_K ? &b4->d : &b5->d, *dm = dt == MAT_Q4_K ? &b4->dmin : &b5->dmin;
            *d = f16_of(exact ? 1.0f : (rng_uniform() + 1.0f) / 1000.0f);
            *dm = f16_of(exact ? 1.0f : (rng_uniform() + 1.0f) / 2000.0f);
        }
        break;
    case MAT_Q6_K:
        for (size_t i = 0; i < n / QK_K; i++) ((block_q6_K *)buf)[i].d = f16_of(exact ? 0.125f : rng_uniform() / 4000.0f);
        break;
    default: break;
    }
    return buf;
}

/* A matrix of the given dtype; exact: small integers (Q8: scales 1 or 0.5). */
typedef struct {
    mat m;
    void *buf;
} test_mat;

static test_mat make_mat(mat_dtype dt, int rows, int cols, int exact) {
    test_mat t = {{dt, rows, cols, NULL}, NULL};
    row_cache_reset();
    size_t n = (size_t)rows * cols;
    if (dt == MAT_F32) {
        float *w = malloc(n * sizeof *w);
        for (size_t i = 0; i < n; i++) w[i] = exact ? (float)rng_int(-3, 3) : rng_uniform();
        t.buf = w;
    } else if (dt == MAT_BF16) {
        uint16_t *w = malloc(n * sizeof *w);
        for (size_t i = 0; i < n; i++) w[i] = f32_to_bf16(exact ? (float)rng_int(-3, 3) : rng_uniform());
        t.buf = w;
    } else if (dt == MAT_Q8) {
        block_q8 *b = malloc(n / QK8 * sizeof *b);
        float row[4096];
        for (int r = 0; r < rows; r++) {
            if (exact) {
                for (int k = 0; k < cols / QK8; k++) {
                    block_q8 *blk = b + (size_t)r * (cols / QK8) + k;
                    blk->scale = (k & 1) ? 0.5f : 1.0f;
                    for (int i = 0; i < QK8; i++) blk->q[i] = (int8_t)rng_int(-127, 127);
                }
            } else {
                for (int c = 0; c < cols; c++) row[c] = rng_uniform();
                quantize_row_q8(row, b + (size_t)r * (cols / QK8), cols);
            }
        }
        t.buf = b;
    } else {
        t.buf = make_ggml_rows(dt, rows, cols, exact);
    }
    t.m.data = t.buf;
    return t;
}

static float *make_vec(int n, int exact) {
    float *x = malloc((size_t)(n > 0 ? n : 1) * sizeof *x);
    for (int i = 0; i < n; i++) x[i] = exact ? (float)rng_int(-4, 4) : rng_uniform();
    return x;
}

/* S = sum_c |W[r, c] x[c]| in double. */
static double abs_dot(const mat *W, int r, const float *x) {
    const float *w = row_f32(W, r);
    double s = 0.0;
    for (int c = 0; c < W->cols; c++) s += fabs((double)w[c] * x[c]);
    return s;
}

static double dot_tol(int n, double S) { return (n + 8) * (double)FLT_EPSILON * S + 1e-30; }

/* Q8 and Q8_0 matvec on AVX-512 round x to int16 per 32-block (step dx <= 2 max|x_block| / 32767):
 * y moves by at most sum over blocks of dx/2 sum |W[r, c]|. 0 for other dtypes. */
static double q8x_tol(const mat *W, int r, const float *x) {
    if (W->dtype != MAT_Q8 && W->dtype != MAT_Q8_0 && W->dtype != MAT_Q8P) return 0.0;
    double t = 0.0;
    for (int k = 0; k < W->cols / QK8; k++) {
        double mx = 0.0, sw = 0.0;
        for (int i = 0; i < QK8; i++) {
            mx = fmax(mx, fabs(x[k * QK8 + i]));
            sw += fabs((double)mat_get(W, r, k * QK8 + i));
        }
        t += mx / 32767.0 * sw;
    }
    return t;
}

typedef struct {
    const char *name;
    void (*matvec)(const mat *, const float *, float *, int, int);
    void (*matmul)(const mat *, const float *, int, float *, int, int, int);
    void (*matvec_t)(const mat *, const float *, float *, int, int);
    int available;
} mv_variant;

static int n_mv_variants(mv_variant *v) {
    const cpu_features *f = cpu_get_features();
    int n = 0;
    v[n++] = (mv_variant){"dispatch", matvec_rows, matmul_rows, matvec_t_rows, 1};
    v[n++] = (mv_variant){"avx512", matvec_rows_avx512, matmul_rows_avx512, matvec_t_rows_avx512, f->avx512f && f->avx2_fma};
    v[n++] = (mv_variant){"avx2", matvec_rows_avx2, matmul_rows_avx2, matvec_t_rows_avx2, f->avx2_fma};
    return n;
}

static const int ROWS[] = {1, 7, 33, 257};
static const int COLS[] = {16, 24, 32, 96, 112, 129, 1000, 1024};   /* 112: 32-column steps then one of 16 */
#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ---------------------------------------------------------------- matvec */

static void check_matvec(mat_dtype dt, int exact) {
    mv_variant v[4];
    int nv = n_mv_variants(v);
    for (int ri = 0; ri < NELEM(ROWS); ri++)
        for (int ci = 0; ci < NELEM(COLS); ci++) {
            int rows = ROWS[ri], cols = COLS[ci];
            if (dt == MAT_Q8 && cols % QK8) continue;
            test_mat W = make_mat(dt, rows, cols, exact);
            float *x = make_vec(cols, exact);
            float *ref = malloc(sizeof(float) * rows), *y = malloc(sizeof(float) * (rows + 1));
            /* the full range and a range starting at row 1 (rows > 1) */
            for (int start = 0; start <= (rows > 1); start++) {
                matvec_rows_ref(&W.m, x, ref, start, rows);
                for (int k = 0; k < nv; k++) {
                    if (!v[k].available) continue;
                    y[rows - start] = 12345.0f; /* sentinel just past the range */
                    v[k].matvec(&W.m, x, y, start, rows);
                    assert_true(y[rows - start] == 12345.0f);
                    for (int r = start; r < rows; r++) {
                        double d = fabs((double)y[r - start] - ref[r - start]);
                        double tol = exact ? 0.0 : dot_tol(cols, abs_dot(&W.m, r, x)) + q8x_tol(&W.m, r, x);
                        if (d > tol)
                            fail_msg("matvec %s dtype %d exact %d rows %d cols %d row %d: %g vs %g (tol %g)",
                                     v[k].name, dt, exact, rows, cols, r, y[r - start], ref[r - start], tol);
                    }
                }
            }
            free(W.buf); free(x); free(ref); free(y);
        }
}

static void test_matvec_f32(void **state) { (void)state; check_matvec(MAT_F32, 1); check_matvec(MAT_F32, 0); }
static void test_matvec_bf16(void **state) { (void)state; check_matvec(MAT_BF16, 1); check_matvec(MAT_BF16, 0); }
static void test_matvec_q8(void **state) { (void)state; check_matvec(MAT_Q8, 1); check_matvec(MAT_Q8, 0); }

/* Every row count 1..67 (4-row blocks, then 1..3 tail rows) and row ranges starting at 0, 1
 * and 3, for the f32-activation kernels whose tiling and prefetch changed (F32, BF16, Q8,
 * F16, Q8_0), on short rows (one 32-column step, a 16-column step, a masked tail) and rows
 * of a few steps; each row against the reference within its bound. */
static void test_matvec_rows_sweep(void **state) {
    (void)state;
    static const mat_dtype dts[] = {MAT_F32, MAT_BF16, MAT_Q8, MAT_F16, MAT_Q8_0};
    static const int cols_list[] = {32, 48, 57, 256, 288};
    mv_variant v[4];
    int nv = n_mv_variants(v);
    for (int di = 0; di < NELEM(dts); di++)
        for (int ci = 0; ci < NELEM(cols_list); ci++) {
            mat_dtype dt = dts[di];
            int cols = cols_list[ci];
            if ((dt == MAT_Q8 || dt == MAT_Q8_0) && cols % 32) continue;
            for (int rows = 1; rows <= 67; rows++) {
                int exact = rows & 1;
                test_mat W = make_mat(dt, rows, cols, exact);
                float *x = make_vec(cols, exact);
                float *ref = malloc(sizeof(float) * rows), *y = malloc(sizeof(float) * (rows + 1));
                static const int starts[] = {0, 1, 3};
                for (int si = 0; si < NELEM(starts); si++) {
                    int start = starts[si];
                    if (start >= rows) continue;
                    matvec_rows_ref(&W.m, x, ref, start, rows);
                    for (int k = 0; k < nv; k++) {
                        if (!v[k].available) continue;
                        y[rows - start] = 12345.0f;
                        v[k].matvec(&W.m, x, y, start, rows);
                        assert_true(y[rows - start] == 12345.0f);
                        for (int r = start; r < rows; r++) {
                            double tol = exact ? 0.0 : dot_tol(cols, abs_dot(&W.m, r, x)) + q8x_tol(&W.m, r, x);
                            if (fabs((double)y[r - start] - ref[r - start]) > tol)
                                fail_msg("matvec %s %s exact %d rows %d cols %d start %d row %d: %g vs %g (tol %g)",
                                         v[k].name, mat_type_of(dt)->name, exact, rows, cols, start, r, y[r - start],
                                         ref[r - start], tol);
                        }
                    }
                }
                free(W.buf); free(x); free(ref); free(y);
            }
        }
}

/* MAT_Q8P (moe's Q8 in 16-row panels, kernels/matvec_q8p_avx512.c): packing (in place, or into
 * a buffer whose last panel is padded) keeps every value (mat_get) and the reference's sums bit
 * for bit; q8p_pack refuses what it cannot pack; the AVX-512 kernels against the reference within
 * the int16-x bound, on 16..272 rows (17, 40: a padded panel), widths
 * 32..1056 and row ranges that start and end inside a panel; each token of a batch (n = 1..20:
 * tiles of 1..8 tokens, several tiles) bit for bit what it gets alone, with vpdpwssd and with
 * vpmaddwd + vpaddd alike; a token whose x does not quantize (NaN, Inf, subnormal steps) the
 * reference's, the others unchanged. */
static int same_float(float a, float b) { return (isnan(a) && isnan(b)) || memcmp(&a, &b, sizeof a) == 0; }

static void test_q8p(void **state) {
    (void)state;
    const cpu_features *f = cpu_get_features();
    int simd = f->avx512f && f->avx2_fma;
    static const int rows_list[] = {16, 17, 40, 48, 272};
    static const int cols_list[] = {32, 96, 288, 1056};
    static const int ns[] = {1, 2, 3, 5, 8, 9, 17, 20};
    {   /* what q8p_pack refuses, unchanged */
        test_mat A = make_mat(MAT_Q8, 17, 64, 0), B = make_mat(MAT_F32, 16, 64, 0);
        assert_int_equal(q8p_pack(&A.m), -1);
        assert_int_equal(A.m.dtype, MAT_Q8);
        assert_int_equal(q8p_pack(&B.m), -1);
        assert_int_equal(B.m.dtype, MAT_F32);
        free(A.buf); free(B.buf);
    }
    for (int ri = 0; ri < NELEM(rows_list); ri++)
        for (int ci = 0; ci < NELEM(cols_list); ci++)
            for (int exact = 0; exact <= 1; exact++) {
                int rows = rows_list[ri], cols = cols_list[ci], N = 20, ldy = rows + 3;
                test_mat Q = make_mat(MAT_Q8, rows, cols, exact);
                size_t bytes = mat_bytes(&Q.m), pbytes = q8p_bytes(rows, cols);
                void *pb = malloc(pbytes);
                mat P = Q.m;
                P.data = pb;
                if (rows % Q8P_ROWS == 0) {   /* in place */
                    memcpy(pb, Q.buf, bytes);
                    assert_int_equal(q8p_pack(&P), 0);
                    assert_int_equal(pbytes, bytes);
                } else {   /* into a buffer whose last panel is padded */
                    assert_int_equal(q8p_pack_into(&Q.m, pb), 0);
                    P.dtype = MAT_Q8P;
                    assert_true(pbytes > bytes);
                }
                assert_int_equal(P.dtype, MAT_Q8P);
                assert_int_equal(mat_storage_bytes(&P), pbytes);
                assert_int_equal(mat_bytes(&P), bytes);
                for (int r = 0; r < rows; r++)
                    for (int c = 0; c < cols; c++) assert_true(mat_get(&P, r, c) == mat_get(&Q.m, r, c));
                float *X = make_vec(N * cols, exact);
                float *a = malloc(sizeof(float) * rows), *b = malloc(sizeof(float) * (rows + 1));
                matvec_rows_ref(&Q.m, X, a, 0, rows);
                matvec_rows_ref(&P, X, b, 0, rows);
                for (int r = 0; r < rows; r++) assert_true(same_float(a[r], b[r]));
                if (!simd) { free(Q.buf); free(pb); free(X); free(a); free(b); continue; }
                /* x edges for tokens 3 (a NaN), 5 (an Inf), 7 (a block of subnormal size) */
                X[3 * cols + cols / 2] = NAN;
                X[5 * cols + 1] = INFINITY;
                for (int i = 0; i < QK8; i++) X[7 * cols + i] = 1e-38f * (float)(i % 3);
                int ranges[3][2] = {{0, rows}, {16, rows}, {3, rows - 5}};
                float *alone = malloc(sizeof(float) * (size_t)N * ldy), *Y = malloc(sizeof(float) * (size_t)N * ldy);
                for (int g = 0; g < 3; g++) {
                    int r0 = ranges[g][0], r1 = ranges[g][1];
                    if (r0 >= r1) continue;
                    q8p_set_vnni(-1);
                    for (int t = 0; t < N; t++) {   /* alone, against the reference */
                        const float *x = X + (size_t)t * cols;
                        b[r1 - r0] = 12345.0f;
                        matvec_rows_q8p_avx512(&P, x, b, r0, r1);
                        assert_true(b[r1 - r0] == 12345.0f);
                        matvec_rows_ref(&P, x, a, r0, r1);
                        for (int r = r0; r < r1; r++) {
                            alone[(size_t)t * ldy + r] = b[r - r0];
                            if (t == 3 || t == 5 || t == 7) {   /* the reference, as is */
                                if (!same_float(b[r - r0], a[r - r0]))
                                    fail_msg("q8p edge token %d rows %d cols %d row %d: %g vs ref %g", t, rows, cols, r, b[r - r0], a[r - r0]);
                                continue;
                            }
                            double tol = exact ? 0.0 : dot_tol(cols, abs_dot(&P, r, x)) + q8x_tol(&P, r, x);
                            if (exact) tol = q8x_tol(&P, r, x);   /* integer x, int16 steps of 1: exact sums */
                            if (fabs((double)b[r - r0] - a[r - r0]) > tol)
                                fail_msg("q8p matvec rows %d cols %d exact %d row %d: %g vs ref %g (tol %g)", rows, cols, exact, r,
                                         b[r - r0], a[r - r0], tol);
                        }
                    }
                    for (int vn = 0; vn <= 1; vn++) {
                        q8p_set_vnni(vn);
                        for (int ni = 0; ni < NELEM(ns); ni++) {
                            int n = ns[ni];
                            for (size_t i = 0; i < (size_t)N * ldy; i++) Y[i] = 12345.0f;
                            matmul_rows_q8p_avx512(&P, X, n, Y, ldy, r0, r1);
                            for (int t = 0; t < n; t++) {
                                for (int r = r0; r < r1; r++)
                                    if (!same_float(Y[(size_t)t * ldy + r], alone[(size_t)t * ldy + r]))
                                        fail_msg("q8p matmul vnni %d n %d rows %d cols %d [%d, %d) token %d row %d: %.9g vs alone %.9g",
                                                 vn, n, rows, cols, r0, r1, t, r, Y[(size_t)t * ldy + r], alone[(size_t)t * ldy + r]);
                                if (r0 > 0) assert_true(Y[(size_t)t * ldy + r0 - 1] == 12345.0f);
                                assert_true(Y[(size_t)t * ldy + r1] == 12345.0f);
                            }
                        }
                    }
                    q8p_set_vnni(-1);
                }
                /* the dispatching entry points take the panel kernels on AVX-512 */
                matmul_rows(&P, X, N, Y, ldy, 0, rows);
                for (int t = 0; t < N; t++)
                    for (int r = 0; r < rows; r++) assert_true(same_float(Y[(size_t)t * ldy + r], alone[(size_t)t * ldy + r]));
                free(alone); free(Y);
                free(Q.buf); free(pb); free(X); free(a); free(b);
            }
}

/* Q8 matvec with x that the int16 path must not take (NaN, Inf, all-subnormal blocks) or
 * takes at its edges (zeros, one huge block): the same as the reference (f32 x) within the
 * rounding bounds, NaN and Inf where the reference has them. */
static void test_matvec_q8_x_edges(void **state) {
    (void)state;
    int rows = 9, cols = 96;
    test_mat W = make_mat(MAT_Q8, rows, cols, 0);
    float x[96], y[9], ref[9];
    for (int kind = 0; kind < 5; kind++) {
        for (int i = 0; i < cols; i++) x[i] = kind == 1 ? 1e-40f * (i % 5) : kind == 2 ? (i < 32 ? 1e30f : 0.5f) : (float)(i % 7) - 3.0f;
        if (kind == 0) for (int i = 0; i < cols; i++) x[i] = 0.0f;
        if (kind == 3) x[40] = NAN;
        if (kind == 4) x[70] = INFINITY;
        matvec_rows_ref(&W.m, x, ref, 0, rows);
        matvec_rows(&W.m, x, y, 0, rows);
        for (int r = 0; r < rows; r++) {
            if (isnan(ref[r]) || isinf(ref[r])) {
                if (!(isnan(y[r]) && isnan(ref[r])) && y[r] != ref[r]) fail_msg("kind %d row %d: %g vs %g", kind, r, y[r], ref[r]);
                continue;
            }
            double tol = dot_tol(cols, abs_dot(&W.m, r, x)) + q8x_tol(&W.m, r, x);
            if (fabs((double)y[r] - ref[r]) > tol) fail_msg("kind %d row %d: %g vs %g (tol %g)", kind, r, y[r], ref[r], tol);
        }
    }
    free(W.buf);
}

/* A single nonzero weight in the last column: the tail must be counted exactly once. */
static void test_matvec_tail_column(void **state) {
    (void)state;
    mv_variant v[4];
    int nv = n_mv_variants(v);
    for (int ci = 0; ci < NELEM(COLS); ci++) {
        int rows = 5, cols = COLS[ci];
        float *w = calloc((size_t)rows * cols, sizeof *w);
        uint16_t *wb = calloc((size_t)rows * cols, sizeof *wb);
        for (int r = 0; r < rows; r++) { w[(size_t)r * cols + cols - 1] = (float)(r + 1); wb[(size_t)r * cols + cols - 1] = f32_to_bf16((float)(r + 1)); }
        float *x = make_vec(cols, 1);
        x[cols - 1] = 2.0f;
        mat Wf = {MAT_F32, rows, cols, w}, Wb = {MAT_BF16, rows, cols, wb};
        float y[5];
        for (int k = 0; k < nv; k++) {
            if (!v[k].available) continue;
            v[k].matvec(&Wf, x, y, 0, rows);
            for (int r = 0; r < rows; r++) assert_true(y[r] == 2.0f * (r + 1));
            v[k].matvec(&Wb, x, y, 0, rows);
            for (int r = 0; r < rows; r++) assert_true(y[r] == 2.0f * (r + 1));
        }
        free(w); free(wb); free(x);
    }
}

/* ---------------------------------------------------------------- matmul */

static void check_matmul(mat_dtype dt, int exact) {
    static const int mrows[] = {1, 7, 33};
    /* every split of n into 4-row tiles of <= 6 tokens up to 3 tiles (kernels/README.md) */
    static const int ns[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 31};
    mv_variant v[4];
    int nv = n_mv_variants(v);
    for (int ri = 0; ri < NELEM(mrows); ri++)
        for (int ci = 0; ci < NELEM(COLS); ci++)
            for (int ni = 0; ni < NELEM(ns); ni++) {
                int rows = mrows[ri], cols = COLS[ci], n = ns[ni], ldy = rows + 3;
                if (dt == MAT_Q8 && cols % QK8) continue;
                test_mat W = make_mat(dt, rows, cols, exact);
                float *X = make_vec(n * cols, exact);
                float *ref = malloc(sizeof(float) * n * ldy), *Y = malloc(sizeof(float) * n * ldy);
                int row0 = rows > 1 ? 1 : 0;
                for (int i = 0; i < n * ldy; i++) ref[i] = -7.0f;
                matmul_rows_ref(&W.m, X, n, ref, ldy, row0, rows);
                for (int k = 0; k < nv; k++) {
                    if (!v[k].available) continue;
                    for (int i = 0; i < n * ldy; i++) Y[i] = -7.0f; /* outside [row0, rows) must stay */
                    v[k].matmul(&W.m, X, n, Y, ldy, row0, rows);
                    for (int t = 0; t < n; t++)
                        for (int r = 0; r < ldy; r++) {
                            float got = Y[t * ldy + r], want = ref[t * ldy + r];
                            double tol = (exact || r < row0 || r >= rows) ? 0.0
                                       : dot_tol(cols, abs_dot(&W.m, r, X + (size_t)t * cols));
                            if (fabs((double)got - want) > tol)
                                fail_msg("matmul %s dtype %d exact %d rows %d cols %d n %d t %d r %d: %g vs %g",
                                         v[k].name, dt, exact, rows, cols, n, t, r, got, want);
                        }
                }
                free(W.buf); free(X); free(ref); free(Y);
            }
}

static void test_matmul_f32(void **state) { (void)state; check_matmul(MAT_F32, 1); check_matmul(MAT_F32, 0); }
static void test_matmul_bf16(void **state) { (void)state; check_matmul(MAT_BF16, 1); check_matmul(MAT_BF16, 0); }
static void test_matmul_q8(void **state) { (void)state; check_matmul(MAT_Q8, 1); check_matmul(MAT_Q8, 0); }

/* matmul with n = 1 equals matvec (same reference), and a large n (64) works. */
/* Batches of 64 and more tokens (matmul_rows takes them in chunks of 64): exact, and rows
 * row0..row1 of a wider Y (ldy > rows) only. */
static void test_matmul_n64(void **state) {
    (void)state;
    static const int ns[] = {64, 65, 150};
    for (int dt = 0; dt < 3; dt++)
        for (int ni = 0; ni < 3; ni++) {
            int rows = 37, cols = 256, n = ns[ni], ldy = rows + 3;
            test_mat W = make_mat((mat_dtype)dt, rows, cols, 1);
            float *X = make_vec(n * cols, 1), *ref = malloc(sizeof(float) * n * ldy), *Y = malloc(sizeof(float) * n * ldy);
            for (int i = 0; i < n * ldy; i++) ref[i] = Y[i] = -7.0f;
            matmul_rows_ref(&W.m, X, n, ref, ldy, 2, rows);
            matmul_rows(&W.m, X, n, Y, ldy, 2, rows);
            assert_memory_equal(Y, ref, sizeof(float) * n * ldy);
            free(W.buf); free(X); free(ref); free(Y);
        }
}

/* ---------------------------------------------------------------- transposed matvec */

/* Columns around the vector widths (16, 8) and the register blocks (256 columns on
 * AVX-512, 64 on AVX2); Q8 needs cols % 32 == 0 (288 = one 256 block + two vectors,
 * 96 = 64 + 32). */
static const int TCOLS[] = {16, 17, 31, 33, 100, 256, 1000};
static const int TCOLS_Q8[] = {32, 96, 160, 288, 1024};

/* S = sum_r |x[r - row0] W[r, c]| in double. */
static double abs_dot_t(const mat *W, int c, const float *x, int row0, int row1) {
    double s = 0.0;
    for (int r = row0; r < row1; r++) s += fabs((double)mat_get(W, r, c) * x[r - row0]);
    return s;
}

/* Every row count 1..67 over rows [1, 1 + nr) of an (nr + 2)-row matrix (rows outside
 * the range must not count), every column count. Random data: y[c] is a dot product of
 * length nr summed in row order by both sides (FMA, and Q8's x_r * scale, add a few
 * roundings), so dot_tol(nr, S) bounds the difference as for matvec. */
static void check_matvec_t(mat_dtype dt, int exact) {
    mv_variant v[4];
    int nv = n_mv_variants(v);
    const int *cs = dt == MAT_Q8 ? TCOLS_Q8 : TCOLS;
    int ncs = dt == MAT_Q8 ? NELEM(TCOLS_Q8) : NELEM(TCOLS);
    for (int nr = 1; nr <= 67; nr++)
        for (int ci = 0; ci < ncs; ci++) {
            int cols = cs[ci], row0 = 1, row1 = 1 + nr;
            test_mat W = make_mat(dt, nr + 2, cols, exact);
            float *x = make_vec(nr, exact);
            float *ref = malloc(sizeof(float) * cols), *y = malloc(sizeof(float) * (cols + 1));
            matvec_t_rows_ref(&W.m, x, ref, row0, row1);
            for (int k = 0; k < nv; k++) {
                if (!v[k].available) continue;
                for (int c = 0; c <= cols; c++) y[c] = 12345.0f;   /* y[cols]: sentinel past the end */
                v[k].matvec_t(&W.m, x, y, row0, row1);
                assert_true(y[cols] == 12345.0f);
                for (int c = 0; c < cols; c++) {
                    double d = fabs((double)y[c] - ref[c]);
                    double tol = exact ? 0.0 : dot_tol(nr, abs_dot_t(&W.m, c, x, row0, row1));
                    if (d > tol)
                        fail_msg("matvec_t %s dtype %d exact %d rows %d cols %d col %d: %g vs %g (tol %g)",
                                 v[k].name, dt, exact, nr, cols, c, y[c], ref[c], tol);
                }
            }
            free(W.buf); free(x); free(ref); free(y);
        }
}

static void test_matvec_t_f32(void **state) { (void)state; check_matvec_t(MAT_F32, 1); check_matvec_t(MAT_F32, 0); }
static void test_matvec_t_bf16(void **state) { (void)state; check_matvec_t(MAT_BF16, 1); check_matvec_t(MAT_BF16, 0); }
static void test_matvec_t_q8(void **state) { (void)state; check_matvec_t(MAT_Q8, 1); check_matvec_t(MAT_Q8, 0); }

/* One row with x = {1} is the row as f32, bit for bit (-0 and all; mat_row_f32 relies on
 * it); an empty range gives y = 0. */
static void test_matvec_t_row_exact(void **state) {
    (void)state;
    mv_variant v[4];
    int nv = n_mv_variants(v);
    const float one = 1.0f;
    for (int dt = 0; dt < 3; dt++)
        for (int ci = 0; ci < NELEM(TCOLS_Q8); ci++) {
            int rows = 3, cols = TCOLS_Q8[ci] + (dt == MAT_Q8 ? 0 : 1);
            test_mat W = make_mat((mat_dtype)dt, rows, cols, 0);
            if (dt == MAT_F32) ((float *)W.buf)[cols + 5] = -0.0f;
            if (dt == MAT_BF16) ((uint16_t *)W.buf)[cols + 5] = 0x8000;   /* -0 */
            float *want = malloc(sizeof(float) * cols), *y = malloc(sizeof(float) * cols);
            for (int c = 0; c < cols; c++) want[c] = mat_get(&W.m, 1, c);
            for (int k = 0; k < nv; k++) {
                if (!v[k].available) continue;
                v[k].matvec_t(&W.m, &one, y, 1, 2);
                assert_memory_equal(y, want, sizeof(float) * cols);
                v[k].matvec_t(&W.m, &one, y, 2, 2);
                for (int c = 0; c < cols; c++) assert_true(y[c] == 0.0f);
            }
            matvec_t_rows_ref(&W.m, &one, y, 1, 2);
            assert_memory_equal(y, want, sizeof(float) * cols);
            free(W.buf); free(want); free(y);
        }
}

/* ---------------------------------------------------------------- low-precision activations */

static void test_q8q8(void **state) {
    (void)state;
    const cpu_features *f = cpu_get_features();
    struct { const char *name; void (*fn)(const mat *, const block_q8 *, float *, int, int); int ok; } v[] = {
        {"dispatch", matvec_rows_q8q8, 1},
        {"vnni", matvec_rows_q8q8_avx512vnni, f->avx512_vnni && f->avx2_fma},
        {"avx2", matvec_rows_q8q8_avx2, f->avx2_fma},
    };
    static const int cols_q8[] = {32, 96, 1024, 2048};
    for (int exact = 1; exact >= 0; exact--)
        for (int ri = 0; ri < NELEM(ROWS); ri++)
            for (int ci = 0; ci < NELEM(cols_q8); ci++) {
                int rows = ROWS[ri], cols = cols_q8[ci], nb = cols / QK8;
                if (exact && cols > 1024) continue;
                test_mat W = make_mat(MAT_Q8, rows, cols, exact);
                block_q8 *xq = malloc(sizeof(block_q8) * nb);
                if (exact) {
                    /* partial sums are multiples of 0.5 below 127 * 63 * 1024 < 2^23 */
                    for (int k = 0; k < nb; k++) {
                        xq[k].scale = 1.0f;
                        for (int i = 0; i < QK8; i++) xq[k].q[i] = (int8_t)rng_int(-63, 63);
                    }
                } else {
                    float *x = make_vec(cols, 0);
                    quantize_row_q8(x, xq, cols);
                    free(x);
                }
                float *ref = malloc(sizeof(float) * rows), *y = malloc(sizeof(float) * rows);
                matvec_rows_q8q8_ref(&W.m, xq, ref, 0, rows);
                for (int k = 0; k < NELEM(v); k++) {
                    if (!v[k].ok) continue;
                    v[k].fn(&W.m, xq, y, 0, rows);
                    for (int r = 0; r < rows; r++) {
                        /* exact data: integer sums below 2^24 and power-of-two scales;
                         * random: (nb + 8) roundings of terms bounded by S. */
                        double S = 0.0;
                        const block_q8 *b = (const block_q8 *)W.m.data + (size_t)r * nb;
                        for (int kb = 0; kb < nb; kb++)
                            for (int i = 0; i < QK8; i++)
                                S += fabs((double)b[kb].scale * xq[kb].scale * b[kb].q[i] * xq[kb].q[i]);
                        double tol = exact ? 0.0 : (nb + 16) * (double)FLT_EPSILON * S + 1e-30;
                        if (fabs((double)y[r] - ref[r]) > tol)
                            fail_msg("q8q8 %s rows %d cols %d r %d: %g vs %g", v[k].name, rows, cols, r, y[r], ref[r]);
                    }
                }
                free(W.buf); free(xq); free(ref); free(y);
            }
}

static void test_bf16bf16(void **state) {
    (void)state;
    const cpu_features *f = cpu_get_features();
    struct { const char *name; void (*fn)(const mat *, const uint16_t *, float *, int, int); int ok; } v[] = {
        {"dispatch", matvec_rows_bf16bf16, 1},
        {"avx512bf16", matvec_rows_bf16bf16_avx512bf16, f->avx512_bf16 && f->avx2_fma},
    };
    for (int exact = 1; exact >= 0; exact--)
        for (int ri = 0; ri < NELEM(ROWS); ri++)
            for (int ci = 0; ci < NELEM(COLS); ci++) {
                int rows = ROWS[ri], cols = COLS[ci];
                test_mat W = make_mat(MAT_BF16, rows, cols, exact);
                float *x = make_vec(cols, exact);
                uint16_t *xb = malloc(sizeof(uint16_t) * cols);
                quantize_row_bf16(x, xb, cols);
                float *ref = malloc(sizeof(float) * rows), *y = malloc(sizeof(float) * rows);
                matvec_rows_bf16bf16_ref(&W.m, xb, ref, 0, rows);
                for (int k = 0; k < NELEM(v); k++) {
                    if (!v[k].ok) continue;
                    v[k].fn(&W.m, xb, y, 0, rows);
                    for (int r = 0; r < rows; r++) {
                        double S = 0.0;
                        for (int c = 0; c < cols; c++)
                            S += fabs((double)mat_get(&W.m, r, c) * bf16_to_f32(xb[c]));
                        double tol = exact ? 0.0 : dot_tol(cols, S);
                        if (fabs((double)y[r] - ref[r]) > tol)
                            fail_msg("bf16bf16 %s rows %d cols %d r %d: %g vs %g", v[k].name, rows, cols, r, y[r], ref[r]);
                    }
                }
                free(W.buf); free(x); free(xb); free(ref); free(y);
            }
}

/* Low-precision mode through matvec_rows: Q8 x Q8 / bf16 results stay within
 * the quantization error of x (|dx| <= scale / 2 per element; bf16: 2^-9 relative). */
static void test_low_precision_mode(void **state) {
    (void)state;
    int rows = 33, cols = 1024;
    float *x = make_vec(cols, 0), *y = malloc(sizeof(float) * rows), *ref = malloc(sizeof(float) * rows);
    for (int dt = MAT_BF16; dt <= MAT_Q8; dt++) {
        test_mat W = make_mat((mat_dtype)dt, rows, cols, 0);
        matvec_rows_ref(&W.m, x, ref, 0, rows);
        cpu_set_low_precision(1);
        assert_int_equal(cpu_low_precision(), 1);
        matvec_rows(&W.m, x, y, 0, rows);
        cpu_set_low_precision(0);
        for (int r = 0; r < rows; r++) {
            double S = abs_dot(&W.m, r, x);
            /* x error per element: Q8 at most amax/254 <= 1/254; bf16 at most 2^-9 |x|. */
            double tol = (dt == MAT_Q8 ? 1.0 / 254 : 1.0 / 512) * S + dot_tol(cols, S);
            if (fabs((double)y[r] - ref[r]) > tol) fail_msg("lowp dtype %d r %d: %g vs %g", dt, r, y[r], ref[r]);
        }
        free(W.buf);
    }
    free(x); free(y); free(ref);
}

/* The low-precision matmuls (matmul_rows_q8q8 / matmul_rows_bf16bf16 and their tiles): every
 * token's Y row is bit for bit the matvec of the same kernel family on that token alone (the
 * VNNI tile = the VNNI matvec, the AVX-512 no-VNNI tile = the AVX2 matvec, the dispatcher = the
 * dispatching matvec), over rows 1..67 (tile row tails), columns with block tails (BF16), n
 * 1..17 and more (pair and tile tails); outputs outside [row0, row1) are not touched; the
 * scalar refs are within the quantization bound of an f64 dot with the unquantized x. */
typedef void (*q8mm_fn)(const mat *, const block_q8 *, int, float *, int, int, int);
typedef void (*q8mv_fn)(const mat *, const block_q8 *, float *, int, int);
typedef void (*bbmm_fn)(const mat *, const uint16_t *, int, float *, int, int, int);
typedef void (*bbmv_fn)(const mat *, const uint16_t *, float *, int, int);

static void check_lowp_mm(int dt, int rows, int cols, int n) {
    const cpu_features *f = cpu_get_features();
    struct { const char *name; q8mm_fn mm; q8mv_fn mv; int ok; } vq[] = {
        {"dispatch", matmul_rows_q8q8, matvec_rows_q8q8, 1},
        {"vnni", matmul_rows_q8q8_avx512vnni, matvec_rows_q8q8_avx512vnni, f->avx512_vnni && f->avx2_fma},
        {"avx512 (no vnni)", matmul_rows_q8q8_avx512, matvec_rows_q8q8_avx2, f->avx512f && f->avx2_fma},
        {"ref", matmul_rows_q8q8_ref, matvec_rows_q8q8_ref, 1},
    };
    struct { const char *name; bbmm_fn mm; bbmv_fn mv; int ok; } vb[] = {
        {"dispatch", matmul_rows_bf16bf16, matvec_rows_bf16bf16, 1},
        {"avx512bf16", matmul_rows_bf16bf16_avx512bf16, matvec_rows_bf16bf16_avx512bf16, f->avx512_bf16 && f->avx2_fma},
        {"ref", matmul_rows_bf16bf16_ref, matvec_rows_bf16bf16_ref, 1},
    };
    int nb = cols / QK8, ldy = rows + 3, row0 = rows > 2 ? 1 : 0, row1 = rows, nr = row1 - row0;
    test_mat W = make_mat((mat_dtype)dt, rows, cols, 0);
    float *X = malloc(sizeof(float) * (size_t)n * cols);
    for (size_t i = 0; i < (size_t)n * cols; i++) X[i] = rng_uniform() * (i % 97 == 5 ? 8.0f : 1.0f);   /* a few outliers */
    block_q8 *XQ = malloc(sizeof(block_q8) * (size_t)n * (nb > 0 ? nb : 1));
    uint16_t *XB = malloc(sizeof(uint16_t) * (size_t)n * cols);
    for (int t = 0; t < n; t++) {
        if (dt == MAT_Q8) quantize_row_q8(X + (size_t)t * cols, XQ + (size_t)t * nb, cols);
        else quantize_row_bf16(X + (size_t)t * cols, XB + (size_t)t * cols, cols);
    }
    float *Y = malloc(sizeof(float) * (size_t)n * ldy), *y = malloc(sizeof(float) * rows);
    int nv = dt == MAT_Q8 ? NELEM(vq) : NELEM(vb);
    for (int v = 0; v < nv; v++) {
        const char *name = dt == MAT_Q8 ? vq[v].name : vb[v].name;
        if (!(dt == MAT_Q8 ? vq[v].ok : vb[v].ok)) continue;
        for (size_t i = 0; i < (size_t)n * ldy; i++) Y[i] = -777.0f;
        if (dt == MAT_Q8) vq[v].mm(&W.m, XQ, n, Y, ldy, row0, row1);
        else vb[v].mm(&W.m, XB, n, Y, ldy, row0, row1);
        for (int t = 0; t < n; t++) {
            if (dt == MAT_Q8) vq[v].mv(&W.m, XQ + (size_t)t * nb, y, row0, row1);
            else vb[v].mv(&W.m, XB + (size_t)t * cols, y, row0, row1);
            if (memcmp(y, Y + (size_t)t * ldy + row0, sizeof(float) * nr))
                for (int r = 0; r < nr; r++)
                    if (memcmp(&y[r], &Y[(size_t)t * ldy + row0 + r], sizeof(float)))
                        fail_msg("lowp matmul %s dt %d rows %d cols %d n %d: token %d row %d: %.9g vs matvec %.9g", name, dt,
                                 rows, cols, n, t, row0 + r, Y[(size_t)t * ldy + row0 + r], y[r]);
            for (int r = 0; r < ldy; r++)
                if ((r < row0 || r >= row1) && Y[(size_t)t * ldy + r] != -777.0f)
                    fail_msg("lowp matmul %s: wrote outside [row0, row1) at token %d row %d", name, t, r);
        }
        if (strcmp(name, "ref")) continue;
        /* the ref against an f64 dot with the unquantized x: |x - xq| <= step / 2 per element
         * (Q8: step = the block's scale; bf16: 2^-8 |x|), plus f32 summation */
        for (int t = 0; t < n; t++)
            for (int r = row0; r < row1; r++) {
                const float *x = X + (size_t)t * cols;
                const float *w = row_f32(&W.m, r);
                double exact = 0, S = 0, qb = 0;
                for (int c = 0; c < cols; c++) {
                    exact += (double)w[c] * x[c];
                    double xq = dt == MAT_Q8 ? (double)XQ[(size_t)t * nb + c / QK8].scale * XQ[(size_t)t * nb + c / QK8].q[c % QK8]
                                             : (double)bf16_to_f32(XB[(size_t)t * cols + c]);
                    S += fabs((double)w[c] * xq);
                    qb += fabs((double)w[c]) * (dt == MAT_Q8 ? 0.5 * XQ[(size_t)t * nb + c / QK8].scale * (1 + 1e-6)
                                                             : fabs((double)x[c]) / 256.0);
                }
                double tol = qb + dot_tol(cols + 2 * QK8, S);
                double got = Y[(size_t)t * ldy + r];
                if (fabs(got - exact) > tol)
                    fail_msg("lowp matmul ref dt %d rows %d cols %d n %d: token %d row %d: %.9g vs f64 %.9g (bound %.3g)", dt,
                             rows, cols, n, t, r, got, exact, tol);
            }
    }
    free(W.buf); free(X); free(XQ); free(XB); free(Y); free(y);
}

static void test_lowp_matmul(void **state) {
    (void)state;
    static const int rows_v[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 33, 67};
    static const int cols_q8[] = {32, 64, 96, 160, 1024};
    static const int cols_bf[] = {1, 16, 24, 31, 32, 33, 63, 96, 112, 129, 1000, 1024};
    static const int n_v[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 24, 33, 64, 77};
    for (int d = 0; d < 2; d++) {
        int dt = d ? MAT_BF16 : MAT_Q8;
        int nc = d ? NELEM(cols_bf) : NELEM(cols_q8);
        for (int ri = 0; ri < NELEM(rows_v); ri++)
            for (int ci = 0; ci < nc; ci++)
                for (int ni = 0; ni < NELEM(n_v); ni++) {
                    int rows = rows_v[ri], cols = d ? cols_bf[ci] : cols_q8[ci], n = n_v[ni];
                    if ((size_t)rows * cols * n > (size_t)2 << 20 && n > 9) continue;   /* big shapes: the small n only */
                    check_lowp_mm(dt, rows, cols, n);
                }
    }
    /* more tokens than one pass of the Q8 kernel's packed X (256 KiB: 170 tokens at 1024 columns) */
    check_lowp_mm(MAT_Q8, 5, 1024, 181);
    check_lowp_mm(MAT_BF16, 5, 1024, 131);
}

/* With low precision on, matmul_rows and matmul_parallel (f32 X, quantized per token inside)
 * give each token the bits matvec_rows / matvec_parallel give it alone. */
static void test_lowp_matmul_mode(void **state) {
    (void)state;
    static const int n_v[] = {2, 3, 8, 17};
    threadpool *pool = threadpool_create(3);
    assert_non_null(pool);
    for (int dt = MAT_BF16; dt <= MAT_Q8; dt++)
        for (int ni = 0; ni < NELEM(n_v); ni++) {
            int rows = 67, cols = 1024, n = n_v[ni];
            test_mat W = make_mat((mat_dtype)dt, rows, cols, 0);
            float *X = malloc(sizeof(float) * (size_t)n * cols), *Y = malloc(sizeof(float) * (size_t)n * rows);
            float *Yp = malloc(sizeof(float) * (size_t)n * rows), *y = malloc(sizeof(float) * rows);
            float *yp = malloc(sizeof(float) * rows), *yf = malloc(sizeof(float) * rows);
            for (size_t i = 0; i < (size_t)n * cols; i++) X[i] = rng_uniform();
            cpu_set_low_precision(1);
            matmul_rows(&W.m, X, n, Y, rows, 0, rows);
            matmul_parallel(pool, &W.m, X, n, Yp, rows);
            for (int t = 0; t < n; t++) {
                matvec_rows(&W.m, X + (size_t)t * cols, y, 0, rows);
                matvec_parallel(pool, &W.m, X + (size_t)t * cols, yp);
                assert_memory_equal(y, Y + (size_t)t * rows, sizeof(float) * rows);
                assert_memory_equal(yp, Yp + (size_t)t * rows, sizeof(float) * rows);
                assert_memory_equal(y, yp, sizeof(float) * rows);
            }
            cpu_set_low_precision(0);
            /* and it is the low-precision path: differs from the f32 activations somewhere */
            matvec_rows(&W.m, X, yf, 0, rows);
            if (cpu_get_features()->avx512_bf16 && cpu_get_features()->avx512_vnni)
                assert_true(memcmp(yf, Y, sizeof(float) * rows) != 0);
            free(W.buf); free(X); free(Y); free(Yp); free(y); free(yp); free(yf);
        }
    threadpool_free(pool);
}

/* ---------------------------------------------------------------- small kernels */

static const int VN[] = {1, 7, 15, 16, 17, 33, 64, 100, 512, 1000, 7168};

typedef struct {
    const char *name;
    void (*rmsnorm)(float *, const float *, const float *, int, float);
    void (*softmax)(float *, int);
    void (*silu_mul)(float *, const float *, int);
    float (*vec_dot)(const float *, const float *, int);
    void (*vec_axpy)(float *, float, const float *, int);
    int available;
} vec_variant;

static int vec_variants(vec_variant *v) {
    const cpu_features *f = cpu_get_features();
    int n = 0;
    v[n++] = (vec_variant){"dispatch", rmsnorm, softmax, silu_mul, vec_dot, vec_axpy, 1};
    v[n++] = (vec_variant){"avx512", rmsnorm_avx512, softmax_avx512, silu_mul_avx512, vec_dot_avx512, vec_axpy_avx512,
                           f->avx512f && f->avx2_fma};
    v[n++] = (vec_variant){"avx2", rmsnorm_avx2, softmax_avx2, silu_mul_avx2, vec_dot_avx2, vec_axpy_avx2, f->avx2_fma};
    return n;
}

/* rmsnorm: the sum of squares is in double in both, so the scale agrees to ~1 ulp;
 * then two f32 products: <= 4 ulp of the value. */
static void test_rmsnorm(void **state) {
    (void)state;
    vec_variant v[4];
    int nv = vec_variants(v);
    for (int i = 0; i < NELEM(VN); i++) {
        int n = VN[i];
        float *x = make_vec(n, 0), *w = make_vec(n, 0), *ref = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * (n + 1));
        rmsnorm_ref(ref, x, w, n, 1e-6f);
        for (int k = 0; k < nv; k++) {
            if (!v[k].available) continue;
            y[n] = 99.0f;
            v[k].rmsnorm(y, x, w, n, 1e-6f);
            assert_true(y[n] == 99.0f);
            for (int j = 0; j < n; j++)
                if (fabs((double)y[j] - ref[j]) > 4 * FLT_EPSILON * fabs(ref[j]) + 1e-30)
                    fail_msg("rmsnorm %s n %d j %d: %g vs %g", v[k].name, n, j, y[j], ref[j]);
            /* in place */
            memcpy(y, x, sizeof(float) * n);
            v[k].rmsnorm(y, y, w, n, 1e-6f);
            for (int j = 0; j < n; j++) assert_true(fabs((double)y[j] - ref[j]) <= 4 * FLT_EPSILON * fabs(ref[j]) + 1e-30);
        }
        free(x); free(w); free(ref); free(y);
    }
}

/* softmax: exp within ~2 ulp, the sum within (n/8 + 8) u relative (f32 lanes vs double),
 * the final scale 1 ulp: relative 8 eps + n eps / 8; absolute 1e-30 for underflowed entries. */
static void test_softmax(void **state) {
    (void)state;
    vec_variant v[4];
    int nv = vec_variants(v);
    for (int i = 0; i < NELEM(VN); i++) {
        int n = VN[i];
        float *x = make_vec(n, 0), *ref = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * (n + 1));
        for (int j = 0; j < n; j++) x[j] *= 20.0f;
        if (n > 3) { x[1] = -INFINITY; x[2] = -200.0f; }
        memcpy(ref, x, sizeof(float) * n);
        softmax_ref(ref, n);
        for (int k = 0; k < nv; k++) {
            if (!v[k].available) continue;
            memcpy(y, x, sizeof(float) * n);
            y[n] = 99.0f;
            v[k].softmax(y, n);
            assert_true(y[n] == 99.0f);
            double s = 0.0;
            for (int j = 0; j < n; j++) {
                s += y[j];
                if (fabs((double)y[j] - ref[j]) > (8 + n / 8.0) * FLT_EPSILON * ref[j] + 1e-30)
                    fail_msg("softmax %s n %d j %d: %g vs %g", v[k].name, n, j, y[j], ref[j]);
            }
            assert_true(fabs(s - 1.0) < 1e-5);
        }
        free(x); free(ref); free(y);
    }
}

/* silu_mul: exp within ~2 ulp, then add, divide, multiply: <= 6 ulp relative;
 * absolute 1e-30 where the reference gives -0 (exp overflow) and ours a tiny value. */
static void test_silu_mul(void **state) {
    (void)state;
    vec_variant v[4];
    int nv = vec_variants(v);
    for (int i = 0; i < NELEM(VN); i++) {
        int n = VN[i];
        float *g = make_vec(n, 0), *u = make_vec(n, 0), *ref = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * (n + 1));
        for (int j = 0; j < n; j++) g[j] *= 12.0f;
        if (n > 3) { g[0] = -100.0f; g[1] = 100.0f; g[2] = 0.0f; }
        memcpy(ref, g, sizeof(float) * n);
        silu_mul_ref(ref, u, n);
        for (int k = 0; k < nv; k++) {
            if (!v[k].available) continue;
            memcpy(y, g, sizeof(float) * n);
            y[n] = 99.0f;
            v[k].silu_mul(y, u, n);
            assert_true(y[n] == 99.0f);
            for (int j = 0; j < n; j++)
                if (fabs((double)y[j] - ref[j]) > 6 * FLT_EPSILON * fabs(ref[j]) + 1e-30)
                    fail_msg("silu_mul %s n %d j %d (g %g): %g vs %g", v[k].name, n, j, g[j], y[j], ref[j]);
        }
        free(g); free(u); free(ref); free(y);
    }
}

static void test_vec_dot_axpy(void **state) {
    (void)state;
    vec_variant v[4];
    int nv = vec_variants(v);
    for (int i = 0; i < NELEM(VN); i++) {
        int n = VN[i];
        float *a = make_vec(n, 0), *b = make_vec(n, 0), *ref = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * (n + 1));
        float *ai = make_vec(n, 1), *bi = make_vec(n, 1);
        double S = 0.0;
        for (int j = 0; j < n; j++) S += fabs((double)a[j] * b[j]);
        float dref = vec_dot_ref(a, b, n), diref = vec_dot_ref(ai, bi, n);
        memcpy(ref, b, sizeof(float) * n);
        vec_axpy_ref(ref, 0.37f, a, n);
        for (int k = 0; k < nv; k++) {
            if (!v[k].available) continue;
            float d = v[k].vec_dot(a, b, n);
            if (fabs((double)d - dref) > dot_tol(n, S)) fail_msg("vec_dot %s n %d: %g vs %g", v[k].name, n, d, dref);
            assert_true(v[k].vec_dot(ai, bi, n) == diref); /* exact data */
            memcpy(y, b, sizeof(float) * n);
            y[n] = 99.0f;
            v[k].vec_axpy(y, 0.37f, a, n);
            assert_true(y[n] == 99.0f);
            /* FMA vs multiply-then-add: one rounding apart */
            for (int j = 0; j < n; j++)
                if (fabs((double)y[j] - ref[j]) > FLT_EPSILON * (fabs(b[j]) + fabs(0.37 * a[j])))
                    fail_msg("vec_axpy %s n %d j %d: %g vs %g", v[k].name, n, j, y[j], ref[j]);
        }
        free(a); free(b); free(ai); free(bi); free(ref); free(y);
    }
}

/* vec_dot_bf16 / vec_axpy_bf16 (the bf16 KV cache): the same tolerances as vec_dot /
 * vec_axpy against the reference over the widened values; exact data gives exact sums;
 * nothing written past n. */
static void test_vec_bf16(void **state) {
    (void)state;
    const cpu_features *f = cpu_get_features();
    struct {
        const char *name;
        float (*dot)(const float *, const uint16_t *, int);
        void (*axpy)(float *, float, const uint16_t *, int);
        int ok;
    } v[] = {
        {"dispatch", vec_dot_bf16, vec_axpy_bf16, 1},
        {"avx512", vec_dot_bf16_avx512, vec_axpy_bf16_avx512, f->avx512f && f->avx2_fma},
        {"avx2", vec_dot_bf16_avx2, vec_axpy_bf16_avx2, f->avx2_fma},
    };
    int tested = 0;
    for (int i = 0; i < NELEM(VN); i++) {
        int n = VN[i];
        float *a = make_vec(n, 0), *bf = make_vec(n, 0), *ai = make_vec(n, 1), *bif = make_vec(n, 1);
        uint16_t *b = malloc(2 * (size_t)n), *bi = malloc(2 * (size_t)n);
        float *ref = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * (n + 1)), *b32 = malloc(sizeof(float) * n);
        for (int j = 0; j < n; j++) {
            b[j] = f32_to_bf16(bf[j]);
            bi[j] = f32_to_bf16(bif[j]);   /* small integers: exact in bf16 */
            b32[j] = bf16_to_f32(b[j]);
        }
        double S = 0.0;
        for (int j = 0; j < n; j++) S += fabs((double)a[j] * b32[j]);
        float dref = vec_dot_bf16_ref(a, b, n), diref = vec_dot_bf16_ref(ai, bi, n);
        assert_true(dref == vec_dot_ref(a, b32, n));   /* the reference is vec_dot over the widened values */
        memcpy(ref, b32, sizeof(float) * n);
        vec_axpy_bf16_ref(ref, 0.37f, b, n);
        for (int k = 0; k < NELEM(v); k++) {
            if (!v[k].ok) continue;
            tested++;
            float d = v[k].dot(a, b, n);
            if (fabs((double)d - dref) > dot_tol(n, S)) fail_msg("vec_dot_bf16 %s n %d: %g vs %g", v[k].name, n, d, dref);
            assert_true(v[k].dot(ai, bi, n) == diref);
            memcpy(y, b32, sizeof(float) * n);
            y[n] = 99.0f;
            v[k].axpy(y, 0.37f, b, n);
            assert_true(y[n] == 99.0f);
            for (int j = 0; j < n; j++)
                if (fabs((double)y[j] - ref[j]) > FLT_EPSILON * (fabs(b32[j]) + fabs(0.37 * b32[j])))
                    fail_msg("vec_axpy_bf16 %s n %d j %d: %g vs %g", v[k].name, n, j, y[j], ref[j]);
        }
        free(a); free(bf); free(ai); free(bif); free(b); free(bi); free(ref); free(y); free(b32);
    }
    assert_true(tested >= NELEM(VN));
}

/* attn_block (decode attention over a block of cache rows, all heads at once): each kernel
 * (the f32-FMA one, the vdpbf16ps one, and the dispatch attn_block) on head counts, row widths
 * and block lengths that hit every tile tail (4 heads x 4 rows for the scores, 8 heads x 32
 * values for the mix, W % 32 and R % 32 for the bf16 pairs, odd n for the row pairs).
 * f32 arithmetic (attn_block_ref's): a score is a dot of W terms (dot_tol); e = exp(s - m)
 * moves by e (|ds| + |dm|) plus the polynomial's few ulp; l and o are sums of n such terms
 * (their own (n + 8) u rounding on top).
 * bf16 arithmetic (attn_block_bf16_ref's; the reference is checked the same way): s and m from
 * the bf16-rounded query in double within dot_tol; each e the bf16 rounding of a value within
 * the f32 bound above of exp(s - m) (so at most one bf16 step from the reference's where the
 * f32 value sits at a rounding boundary); l the sum of the kernel's own e and o the e-weighted
 * sum of the rows, both in double within (n + 8) u. A dropped row, head or column moves a
 * value by far more. */
typedef void (*attn_block_fn)(const float *, int, int, int, const void *, int, size_t, int, float, float *, float *, float *,
                              float *);
static void attn_block_bf16_ref_fn(const float *qc, int nh, int W, int R, const void *rows, int bf16, size_t ld, int n,
                                   float scale, float *scratch, float *m, float *l, float *o) {
    assert_int_equal(bf16, 1);
    attn_block_bf16_ref(qc, nh, W, R, rows, ld, n, scale, scratch, m, l, o);
}

/* checks one kernel's output on one shape; rounds = bf16 arithmetic. Returns max |o - o_exact| / max |o_exact|. */
static double check_attn_block(const char *name, attn_block_fn fn, int rounds, int nh, int R, int dr, int n, int bf16,
                               size_t ld) {
    int W = R + dr;
    float *q = make_vec(nh * W, 0), *rows32 = make_vec((int)(ld * n), 0);
    uint16_t *rows16 = malloc(2 * ld * n);
    for (size_t i = 0; i < ld * n; i++) { rows16[i] = f32_to_bf16(rows32[i]); if (bf16) rows32[i] = bf16_to_f32(rows16[i]); }
    const void *rows = bf16 ? (const void *)rows16 : rows32;
    float scale = 0.125f;
    size_t ns = attn_block_scratch(nh, W, n);
    float *sa = malloc(sizeof(float) * nh * n), *sb = malloc(sizeof(float) * ns);
    float ma[32], la[32], mb[32], lb[32], *oa = malloc(sizeof(float) * nh * R), *ob = malloc(sizeof(float) * nh * R);
    attn_block_ref(q, nh, W, R, rows, bf16, ld, n, scale, sa, ma, la, oa);
    fn(q, nh, W, R, rows, bf16, ld, n, scale, sb, mb, lb, ob);
    double err = 0, omax = 0;
    for (int h = 0; h < nh; h++) {
        for (int c = 0; c < R; c++) { err = fmax(err, fabs(ob[h * R + c] / lb[h] - oa[h * R + c] / la[h])); omax = fmax(omax, fabs(oa[h * R + c] / la[h])); }
        double tol_s = 0;
        for (int j = 0; j < n; j++) {
            double S = 0;
            for (int c = 0; c < W; c++) S += fabs((double)q[h * W + c] * rows32[j * ld + c]);
            tol_s = fmax(tol_s, dot_tol(W, S) * scale);
        }
        if (!rounds) {
            if (fabs(ma[h] - mb[h]) > tol_s) fail_msg("%s nh %d R %d n %d bf16 %d: m[%d] %g vs %g", name, nh, R, n, bf16, h, mb[h], ma[h]);
            double tol_l = 0;
            for (int j = 0; j < n; j++) {
                double e = sa[h * n + j], te = e * (2 * tol_s + 8 * FLT_EPSILON) + 1e-30;
                if (fabs(sb[h * n + j] - e) > te) fail_msg("%s nh %d R %d n %d bf16 %d: e[%d][%d] %g vs %g", name, nh, R, n, bf16, h, j, sb[h * n + j], e);
                tol_l += te + (n + 8) * FLT_EPSILON * e;
            }
            if (fabs(lb[h] - la[h]) > tol_l) fail_msg("%s nh %d R %d n %d bf16 %d: l[%d] %g vs %g", name, nh, R, n, bf16, h, lb[h], la[h]);
            for (int c = 0; c < R; c++) {
                double tol_o = 1e-30;
                for (int j = 0; j < n; j++) {
                    double e = sa[h * n + j], x = fabs(rows32[j * ld + c]);
                    tol_o += (e * (2 * tol_s + 8 * FLT_EPSILON) + (n + 8) * FLT_EPSILON * e) * x;
                }
                if (fabs(ob[h * R + c] - oa[h * R + c]) > tol_o)
                    fail_msg("%s nh %d R %d n %d bf16 %d: o[%d][%d] %g vs %g", name, nh, R, n, bf16, h, c, ob[h * R + c], oa[h * R + c]);
            }
            continue;
        }
        /* bf16 arithmetic: scores of the rounded query in double */
        double *sd = malloc(sizeof(double) * n), md = -INFINITY, L = 0;
        for (int j = 0; j < n; j++) {
            double S = 0;
            for (int c = 0; c < W; c++) S += (double)bf16_to_f32(f32_to_bf16(q[h * W + c])) * rows32[j * ld + c];
            sd[j] = scale * S;
            md = fmax(md, sd[j]);
        }
        if (fabs(mb[h] - md) > tol_s) fail_msg("%s nh %d R %d n %d: m[%d] %g vs %g", name, nh, R, n, h, mb[h], md);
        for (int j = 0; j < n; j++) {
            double e = exp(sd[j] - md), te = e * (2 * tol_s + 8 * FLT_EPSILON) + 1e-30;
            float lo = bf16_to_f32(f32_to_bf16((float)(e - te))), hi = bf16_to_f32(f32_to_bf16((float)(e + te)));
            float eb = sb[h * n + j];
            if (!(eb >= lo && eb <= hi) || bf16_to_f32(f32_to_bf16(eb)) != eb)
                fail_msg("%s nh %d R %d n %d: e[%d][%d] %.9g not a bf16 in [%.9g, %.9g] (exp %.9g)", name, nh, R, n, h, j, eb, lo, hi, e);
            L += eb;
        }
        if (fabs(lb[h] - L) > (n + 8) * FLT_EPSILON * L) fail_msg("%s nh %d R %d n %d: l[%d] %.9g vs sum e %.9g", name, nh, R, n, h, lb[h], L);
        for (int c = 0; c < R; c++) {
            double O = 0, A = 0;
            for (int j = 0; j < n; j++) { O += (double)sb[h * n + j] * rows32[j * ld + c]; A += fabs((double)sb[h * n + j] * rows32[j * ld + c]); }
            if (fabs(ob[h * R + c] - O) > (n + 8) * FLT_EPSILON * A + 1e-30)
                fail_msg("%s nh %d R %d n %d: o[%d][%d] %.9g vs %.9g", name, nh, R, n, h, c, ob[h * R + c], O);
        }
        free(sd);
    }
    free(q); free(rows32); free(rows16); free(sa); free(sb); free(oa); free(ob);
    return err / (omax > 0 ? omax : 1);
}

static void test_attn_block(void **state) {
    (void)state;
    static const int shapes[][4] = {   /* nh, R, dr, n */
        {8, 256, 32, 256}, {8, 256, 32, 1}, {8, 256, 32, 7}, {8, 256, 32, 2}, {8, 256, 32, 255}, {1, 32, 8, 5},
        {3, 40, 8, 17}, {5, 48, 16, 4}, {12, 64, 16, 33}, {16, 512, 64, 9}, {8, 20, 4, 3}, {9, 96, 32, 64},
        {2, 16, 0, 6}, {4, 33, 31, 11}, {6, 70, 2, 1}, {7, 128, 64, 130}, {10, 24, 8, 8}, {13, 31, 1, 12},
    };
    const cpu_features *f = cpu_get_features();
    struct { const char *name; attn_block_fn fn; int bf16_rounds, on; } v[] = {
        {"attn_block_avx512", attn_block_avx512, 0, f->avx512f && f->avx2_fma},
        {"attn_block_avx512bf16", attn_block_avx512bf16, 1, f->avx512_bf16 && f->avx512f && f->avx2_fma},
        {"attn_block_bf16_ref", attn_block_bf16_ref_fn, 1, 1},
        {"attn_block", attn_block, attn_block_bf16_rounds(), 1},
    };
    if (!attn_block_fast()) print_message("attn_block: no fast kernel on this CPU (reference only)\n");
    if (!v[1].on) print_message("attn_block: no AVX512_BF16 on this CPU: the vdpbf16ps kernel is not tested\n");
    assert_int_equal(attn_block_bf16_rounds(), v[1].on);
    int tested = 0;
    for (int k = 0; k < NELEM(v); k++) {
        if (!v[k].on) continue;
        for (int si = 0; si < NELEM(shapes); si++)
            for (int bf16 = 0; bf16 < 2; bf16++) {
                if (v[k].fn == attn_block_bf16_ref_fn && !bf16) continue;
                int nh = shapes[si][0], R = shapes[si][1], dr = shapes[si][2], n = shapes[si][3];
                size_t ld = (size_t)(R + dr) + 3 * (si % 2);   /* rows with a gap between them on some shapes */
                double e = check_attn_block(v[k].name, v[k].fn, bf16 && v[k].bf16_rounds, nh, R, dr, n, bf16, ld);
                if (si == 0 && bf16)
                    print_message("%s, bf16 rows, nh 8 R 256 dr 32 n 256: o / l vs f32 arithmetic: max rel.err %.2e\n", v[k].name, e);
                tested++;
            }
    }
    assert_true(tested >= 3 * NELEM(shapes));
}

/* ---------------------------------------------------------------- quantization */

/* Same operations as the references: bit-identical output. */
static void test_quantize(void **state) {
    (void)state;
    const cpu_features *f = cpu_get_features();
    static const int qn[] = {32, 64, 96, 1024, 7168};
    for (int i = 0; i < NELEM(qn); i++) {
        int n = qn[i], nb = n / QK8;
        float *x = make_vec(n, 0);
        for (int j = 0; j < n; j++) x[j] *= (j % 7) ? 3.0f : 0.001f;
        for (int j = 0; j < QK8 && j < n; j++) x[j] = 0.0f;          /* an all-zero block */
        if (n > 40) { x[33] = 1e-40f; x[34] = -2.5f; x[35] = 2.5f; }  /* subnormal, ties */
        block_q8 *a = calloc((size_t)nb, sizeof *a), *b = calloc((size_t)nb, sizeof *b);
        uint16_t *ha = calloc((size_t)n + 1, 2), *hb = calloc((size_t)n + 1, 2);
        quantize_row_q8_ref(x, a, n);
        quantize_row_bf16_ref(x, ha, n);
        struct { void (*q8)(const float *, block_q8 *, int); void (*bf)(const float *, uint16_t *, int); int ok; } v[] = {
            {quantize_row_q8, quantize_row_bf16, 1},
            {quantize_row_q8_avx512, quantize_row_bf16_avx512, f->avx512f && f->avx2_fma},
            {quantize_row_q8_avx2, quantize_row_bf16_ref, f->avx2_fma},
        };
        for (int k = 0; k < NELEM(v); k++) {
            if (!v[k].ok) continue;
            memset(b, 0x55, sizeof *b * nb);
            v[k].q8(x, b, n);
            assert_memory_equal(a, b, sizeof *a * nb);
            for (int m = n - 5; m <= n; m++) {   /* odd lengths: tails, nothing written past m */
                hb[m] = 0xABCD;
                v[k].bf(x, hb, m);
                assert_memory_equal(ha, hb, 2 * (size_t)m);
                assert_int_equal(hb[m], 0xABCD);
            }
        }
        free(x); free(a); free(b); free(ha); free(hb);
    }
}

/* ---------------------------------------------------------------- top-k */

static void test_topk(void **state) {
    (void)state;
    static const int tn[] = {1, 2, 8, 9, 32, 64, 256};
    for (int i = 0; i < NELEM(tn); i++)
        for (int mode = 0; mode < 3; mode++) {
            int n = tn[i];
            float *x = make_vec(n, mode == 1);  /* mode 1: many ties */
            if (mode == 2 && n > 4) { x[0] = NAN; x[3] = NAN; x[1] = -INFINITY; }
            for (int k = 1; k <= n && k <= 9; k++) {
                int a[16], b[16];
                topk_indices_ref(x, n, k, a);
                topk_indices(x, n, k, b);
                assert_memory_equal(a, b, sizeof(int) * k);
                for (int j = 1; j < k; j++) { /* descending, ties by lower index */
                    float p = x[a[j - 1]], q = x[a[j]];
                    if (!isnan(q)) assert_true(!isnan(p) && (p > q || (p == q && a[j - 1] < a[j])));
                }
            }
            free(x);
        }
    float t[] = {1, 3, 3, 2, 3};
    int idx[3];
    topk_indices(t, 5, 3, idx);
    assert_int_equal(idx[0], 1);
    assert_int_equal(idx[1], 2);
    assert_int_equal(idx[2], 4);
}

/* The router's top-k kernels against router_topk_ref (engine/router.c's k passes of argmax):
 * bit-identical ids on many shapes, with ties, -inf blocks (groups cut by group-limited routing)
 * and the DeepSeek-V3 / toy shape (E = 256, k = 8 and 9 for the runner-up). */
static void test_router_topk(void **state) {
    (void)state;
    const cpu_features *f = cpu_get_features();
    static const int tn[] = {1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 160, 256, 257, 384};
    static const int tk[] = {1, 2, 3, 6, 8, 9, 16, 17};
    uint32_t r = 12345;
    float *x = malloc(sizeof(float) * 384);
    int a[20], b[20];
    int checked = 0;
    for (int i = 0; i < NELEM(tn); i++)
        for (int mode = 0; mode < 4; mode++) {
            int n = tn[i];
            for (int e = 0; e < n; e++) {
                r = r * 1664525u + 1013904223u;
                float u = (float)(r >> 8) / 16777216.0f;
                x[e] = mode == 1 ? (float)(int)(u * 4) * 0.25f      /* many ties */
                     : mode == 3 ? (float)e * 1e-3f                  /* ascending: every score enters */
                     : u + 0.01f * (float)(e % 7);
            }
            if (mode == 2)                                           /* groups of 8 cut to -inf */
                for (int e = 0; e < n; e++) if ((e / 8) % 3 != 1) x[e] = -INFINITY;
            for (int ki = 0; ki < NELEM(tk); ki++) {
                int k = tk[ki];
                if (k > n) continue;
                router_topk_ref(x, n, k, a);
                for (int j = 1; j < k; j++)
                    assert_true(x[a[j - 1]] > x[a[j]] || (x[a[j - 1]] == x[a[j]] && a[j - 1] < a[j]));
                if (f->avx2_fma) { router_topk_avx2(x, n, k, b); assert_memory_equal(a, b, sizeof(int) * (size_t)k); checked++; }
                if (f->avx512f) {
                    router_topk_avx512(x, n, k, b);
                    assert_memory_equal(a, b, sizeof(int) * (size_t)k);
                }
                router_topk(x, n, k, b);
                assert_memory_equal(a, b, sizeof(int) * (size_t)k);
            }
        }
    if (f->avx2_fma) assert_true(checked > 100);
    free(x);
    float t[] = {1, 3, 3, 2, 3, -INFINITY};
    router_topk(t, 6, 4, a);
    assert_int_equal(a[0], 1); assert_int_equal(a[1], 2); assert_int_equal(a[2], 4); assert_int_equal(a[3], 3);
}

/* ---------------------------------------------------------------- dispatch */

static void test_dispatch(void **state) {
    (void)state;
    const char *best = cpu_kernel_name();
    cpu_force_scalar(1);
    assert_string_equal(cpu_kernel_name(), "scalar");
    cpu_force_scalar(0);
    assert_string_equal(cpu_kernel_name(), best);
    if (cpu_get_features()->avx512f) assert_true(strncmp(best, "avx512", 6) == 0);
}

/* ---------------------------------------------------------------- thread pool */

typedef struct {
    int *counts;      /* per thread id: how often it ran */
    int64_t *sums;
    int round;
} pool_job;

static void pool_fn(void *arg, int id, int n) {
    pool_job *j = arg;
    j->counts[id]++;
    j->sums[id] += (int64_t)j->round * (id + 1) + n;
}

static void test_threadpool_rounds(void **state) {
    (void)state;
    for (int nt = 1; nt <= 4; nt++) {
        threadpool *p = threadpool_create(nt);
        assert_non_null(p);
        assert_int_equal(threadpool_threads(p), nt);
        int counts[4] = {0};
        int64_t sums[4] = {0}, want[4] = {0};
        pool_job j = {counts, sums, 0};
        int rounds = nt <= 2 ? 20000 : 2000;  /* more threads than this machine's 2 CPUs: slow */
        for (int r = 0; r < rounds; r++) {
            j.round = r;
            threadpool_run(p, pool_fn, &j);
            for (int i = 0; i < nt; i++) want[i] += (int64_t)r * (i + 1) + nt;
            if (r % 5000 == 4999) usleep_for_test(2000); /* lets the workers fall asleep */
        }
        for (int i = 0; i < nt; i++) {
            assert_int_equal(counts[i], rounds);
            assert_true(sums[i] == want[i]);
        }
        threadpool_free(p);
    }
    threadpool_free(NULL);
    assert_true(threadpool_default_threads() >= 1);
}

typedef struct {
    _Atomic int *hits;   /* per task */
    int n_tasks;
    int bad;
} task_job;

static void task_fn(void *arg, int task, int n) {
    task_job *j = arg;
    if (n != j->n_tasks || task < 0 || task >= n) { j->bad = 1; return; }
    atomic_fetch_add(&j->hits[task], 1);
}

/* Every task runs exactly once per run, for any number of tasks and threads. */
/* Rounds of 2 and 8 tasks back to back (what `moe bench --membw` does: 2-task bandwidth
 * sweeps between 8-task matvecs): every task of every round runs exactly once, with its
 * own round's fn, count and arg. The claim once held the count in a separate field: a
 * worker late from a 2-task round could run a task of the next round and count it there,
 * and the caller then waited for ever (the alarm turns such a hang into a failure). Also
 * a run of more tasks than one round holds (65535). */
static void test_threadpool_alternating_counts(void **state) {
    (void)state;
    threadpool *p = threadpool_create(2);
    assert_non_null(p);
    alarm(120);
    _Atomic int hits2[2], hits8[8];
    task_job j2 = {hits2, 2, 0}, j8 = {hits8, 8, 0};
    int rounds = 100000;
    for (int t = 0; t < 2; t++) atomic_store(&hits2[t], 0);
    for (int t = 0; t < 8; t++) atomic_store(&hits8[t], 0);
    for (int r = 0; r < rounds; r++) {
        threadpool_run_tasks(p, task_fn, &j2, 2);
        threadpool_run_tasks(p, task_fn, &j8, 8);
    }
    assert_int_equal(j2.bad, 0);
    assert_int_equal(j8.bad, 0);
    for (int t = 0; t < 2; t++) assert_int_equal(atomic_load(&hits2[t]), rounds);
    for (int t = 0; t < 8; t++) assert_int_equal(atomic_load(&hits8[t]), rounds);
    int big = 70000;
    _Atomic int *hb = calloc((size_t)big, sizeof *hb);
    task_job jb = {hb, big, 0};
    threadpool_run_tasks(p, task_fn, &jb, big);
    assert_int_equal(jb.bad, 0);
    for (int t = 0; t < big; t++) assert_int_equal(atomic_load(&hb[t]), 1);
    free(hb);
    alarm(0);
    threadpool_free(p);
}

static void test_threadpool_tasks(void **state) {
    (void)state;
    static const int nts[] = {1, 2, 3, 5, 64, 1000};
    for (int nt = 1; nt <= 3; nt++) {
        threadpool *p = threadpool_create(nt);
        assert_non_null(p);
        for (int i = 0; i < NELEM(nts); i++) {
            int n = nts[i], rounds = 300;
            _Atomic int *hits = calloc((size_t)n, sizeof *hits);
            task_job j = {hits, n, 0};
            for (int r = 0; r < rounds; r++) threadpool_run_tasks(p, task_fn, &j, n);
            assert_int_equal(j.bad, 0);
            for (int t = 0; t < n; t++) assert_int_equal(atomic_load(&hits[t]), rounds);
            free(hits);
        }
        threadpool_run_tasks(p, task_fn, NULL, 0);   /* no tasks: returns at once */
        threadpool_free(p);
    }
    for (int rows = 0; rows < 100; rows++)           /* shares tile [0, rows) in 16-row units */
        for (int nt = 1; nt <= 5; nt++) {
            int next = 0;
            for (int id = 0; id < nt; id++) {
                int r0, r1;
                threadpool_split_rows(rows, id, nt, &r0, &r1);
                assert_int_equal(r0, next);
                assert_true(r1 >= r0 && (r0 % 16 == 0 || r0 == rows));
                next = r1;
            }
            assert_int_equal(next, rows);
        }
}

static void test_matvec_parallel(void **state) {
    (void)state;
    static const int pr[] = {1, 7, 33, 257, 1000};
    for (int nt = 1; nt <= 3; nt++) {
        threadpool *p = threadpool_create(nt);
        assert_non_null(p);
        for (int dt = 0; dt < 3; dt++)
            for (int ri = 0; ri < NELEM(pr); ri++) {
                int rows = pr[ri], cols = 96, n = 5;
                test_mat W = make_mat((mat_dtype)dt, rows, cols, 0);
                float *x = make_vec(n * cols, 0), *ref = malloc(sizeof(float) * n * rows), *y = malloc(sizeof(float) * n * rows);
                /* the same kernel on one thread over all rows: bitwise equal (rows are independent) */
                matvec_rows(&W.m, x, ref, 0, rows);
                matvec_parallel(p, &W.m, x, y);
                assert_memory_equal(y, ref, sizeof(float) * rows);
                matmul_rows(&W.m, x, n, ref, rows, 0, rows);
                matmul_parallel(p, &W.m, x, n, y, rows);
                assert_memory_equal(y, ref, sizeof(float) * n * rows);
                /* low precision: x quantized once by the pool, same result as per-call */
                cpu_set_low_precision(1);
                matvec_rows(&W.m, x, ref, 0, rows);
                matvec_parallel(p, &W.m, x, y);
                cpu_set_low_precision(0);
                assert_memory_equal(y, ref, sizeof(float) * rows);
                free(W.buf); free(x); free(ref); free(y);
            }
        threadpool_free(p);
    }
}

/* Batched matvec: several matrices of mixed dtypes and sizes in one run. */
static void test_matvec_parallel_batch(void **state) {
    (void)state;
    static const int br[] = {1, 7, 16, 33, 257, 100};
    enum { NJ = 6 };
    for (int nt = 1; nt <= 3; nt++) {
        threadpool *p = threadpool_create(nt);
        assert_non_null(p);
        test_mat W[NJ];
        float *x[NJ], *y[NJ], *ref[NJ];
        matvec_job jobs[NJ];
        for (int i = 0; i < NJ; i++) {
            int cols = 32 * (i + 1);
            W[i] = make_mat((mat_dtype)(i % 3), br[i], cols, 0);
            x[i] = make_vec(cols, 0);
            y[i] = malloc(sizeof(float) * (br[i] + 1));
            ref[i] = malloc(sizeof(float) * br[i]);
            y[i][br[i]] = 55.0f;
            matvec_rows(&W[i].m, x[i], ref[i], 0, br[i]);
            jobs[i] = (matvec_job){&W[i].m, x[i], y[i]};
        }
        for (int round = 0; round < 50; round++) {
            for (int i = 0; i < NJ; i++) memset(y[i], 0, sizeof(float) * br[i]);
            matvec_parallel_batch(p, jobs, NJ - (round % 3));   /* 6, 5 or 4 jobs */
            for (int i = 0; i < NJ - (round % 3); i++) {
                assert_memory_equal(y[i], ref[i], sizeof(float) * br[i]);
                assert_true(y[i][br[i]] == 55.0f);
            }
        }
        matvec_parallel_batch(p, jobs, 0);
        for (int i = 0; i < NJ; i++) { free(W[i].buf); free(x[i]); free(y[i]); free(ref[i]); }
        threadpool_free(p);
    }
}

/* vec_argmax: every variant equals the reference (first of equals, NaN never wins, NaN at
 * 0 returns 0) on odd sizes, ties, -inf, -0/+0 and NaNs anywhere. */
static void test_vec_argmax(void **state) {
    (void)state;
    const cpu_features *f = cpu_get_features();
    static const int ns[] = {1, 2, 15, 16, 17, 31, 33, 100, 1000, 8191};
    float *x = malloc(sizeof(float) * 8191);
    for (int ni = 0; ni < NELEM(ns); ni++)
        for (int kind = 0; kind < 7; kind++) {
            int n = ns[ni];
            for (int i = 0; i < n; i++) {
                float r = (float)((i * 7919 + kind * 104729) % 1000) / 10.0f - 50.0f;
                x[i] = kind == 1 ? (float)((i * 13) % 5) : kind == 2 ? -INFINITY : kind == 3 ? (i % 2 ? 0.0f : -0.0f) : r;
            }
            if (kind == 4) x[n / 2] = NAN;                    /* NaN in the middle */
            if (kind == 5) x[0] = NAN;                        /* NaN first: 0 */
            if (kind == 6) for (int i = 1; i < n; i++) x[i] = NAN;
            if (kind == 0 && n > 3) x[n - 1] = x[n - 2] = 1e6f; /* a tie at the end: the first */
            int want = vec_argmax_ref(x, n);
            assert_int_equal(vec_argmax(x, n), want);
            if (f->avx512f) assert_int_equal(vec_argmax_avx512(x, n), want);
        }
    free(x);
}

/* ---------------------------------------------------------------- blas.c */

/* OpenBLAS is found (a declared dependency), its kernels are the ones blas_init chose (or
 * the environment's), and blas_sgemm equals the plain product on odd shapes, both
 * transpositions, alpha and beta, strided operands. */
static void test_blas_sgemm(void **state) {
    (void)state;
    const char *env = getenv("OPENBLAS_CORETYPE");
    blas_init();
    const char *name = blas_name();
    if (strncmp(name, "OpenBLAS (", 10)) fail_msg("blas: %s", name);
    const cpu_features *f = cpu_get_features();
    const char *want = env ? env : f->avx512f && f->avx2_fma ? "SkylakeX" : f->avx2_fma ? "Haswell" : NULL;
    if (want && !strstr(name, want)) fail_msg("blas: %s, wanted kernels %s", name, want);
    static const int dims[][3] = {{1, 1, 1}, {3, 5, 7}, {8, 33, 64}, {17, 129, 31}, {64, 96, 288}};
    for (int d = 0; d < 5; d++)
        for (int bt = 0; bt <= 1; bt++) {
            int m = dims[d][0], n = dims[d][1], k = dims[d][2], lda = k + 3, ldb = (bt ? k : n) + 2, ldc = n + 1;
            float *A = make_vec(m * lda, 0), *B = make_vec((bt ? n : k) * ldb, 0);
            float *C = make_vec(m * ldc, 0), *R = malloc(sizeof(float) * m * ldc);
            memcpy(R, C, sizeof(float) * m * ldc);
            float beta = d % 2 ? 0.5f : 0.0f;
            blas_sgemm(bt, m, n, k, 0.75f, A, lda, B, ldb, beta, C, ldc);
            blas_sgemm_ref(bt, m, n, k, 0.75f, A, lda, B, ldb, beta, R, ldc);
            for (int i = 0; i < m; i++)
                for (int j = 0; j < ldc; j++) {
                    double S = 0;   /* sum of |products|: the rounding bound's scale */
                    for (int p = 0; p < k && j < n; p++)
                        S += fabs(0.75 * A[i * lda + p] * (bt ? B[j * ldb + p] : B[p * ldb + j]));
                    double tol = j < n ? dot_tol(k, S) + fabs(beta * R[i * ldc + j]) * FLT_EPSILON : 0.0;
                    if (fabs(C[i * ldc + j] - R[i * ldc + j]) > tol)   /* j >= n: the padding stays untouched */
                        fail_msg("sgemm bt %d %dx%dx%d [%d,%d]: %g vs %g", bt, m, n, k, i, j, C[i * ldc + j], R[i * ldc + j]);
                }
            free(A); free(B); free(C); free(R);
        }
}

/* ---------------------------------------------------------------- ggml block types */

/* The ggml types (MAT_F16 ...), their column counts (multiples of the block; F16 any). */
static const mat_dtype GTYPES[] = {MAT_F16, MAT_Q8_0, MAT_Q4_0, MAT_Q5_0, MAT_Q4_K, MAT_Q5_K, MAT_Q6_K};
static int gcols(mat_dtype dt, int i) {   /* i-th test column count of dt, 0 when past the list */
    static const int c1[] = {16, 17, 31, 100, 1000, 0}, c32[] = {32, 96, 256, 288, 1024, 64, 160, 384, 0}, c256[] = {256, 512, 768, 2048, 0};
    const int *c = dt == MAT_F16 ? c1 : mat_type_of(dt)->block_elems == 32 ? c32 : c256;
    return c[i];
}
/* 1 when the SIMD entry points quantize x to q8_K for dt (Q5_K: AVX-512 only). */
static int has_kq_path_for(mat_dtype dt, const char *variant) {
    if (dt == MAT_Q5_K) return strcmp(variant, "avx512") == 0 || (strcmp(variant, "dispatch") == 0 && strncmp(cpu_kernel_name(), "avx512", 6) == 0);
    return dt == MAT_Q4_K || dt == MAT_Q6_K;
}
/* 1 when the entry points quantize x per 32 to int8 for dt (Q4_0, Q5_0: AVX-512 only). */
static int has_q8a_path_for(mat_dtype dt, const char *variant) {
    if (dt != MAT_Q4_0 && dt != MAT_Q5_0) return 0;
    return strcmp(variant, "avx512") == 0 || (strcmp(variant, "dispatch") == 0 && strncmp(cpu_kernel_name(), "avx512", 6) == 0);
}

/* Packs 8 6-bit (scale, min) pairs as ggml's Q4_K / Q5_K (written from the layout, not the decoder). */
static void pack_scales(const int *sc, const int *m, uint8_t *out) {
    memset(out, 0, K_SCALE_SIZE);
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            out[j] = (uint8_t)sc[j];
            out[j + 4] = (uint8_t)m[j];
        } else {
            out[j + 4] = (uint8_t)((sc[j] & 15) | ((m[j] & 15) << 4));
            out[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
            out[j] |= (uint8_t)((m[j] >> 4) << 6);
        }
    }
}

static void expect_row(mat_dtype dt, const void *blocks, int n, const double *want) {
    float got[512];
    mat_type_of(dt)->to_f32(blocks, got, n);
    mat W = {dt, 1, n, blocks};
    for (int i = 0; i < n; i++) {
        if (got[i] != want[i]) fail_msg("%s element %d: %.9g, want %.9g", mat_type_of(dt)->name, i, got[i], want[i]);
        assert_true(mat_get(&W, 0, i) == got[i]);
    }
}

/* Every type's to_f32 on blocks built by hand with known scales and quants: the values are
 * exact dyadic numbers, so equality is the test. */
static void test_ggml_dequant_hand(void **state) {
    (void)state;
    double want[512];
    /* f16: known bit patterns */
    static const struct { uint16_t h; double v; } hv[] = {
        {0x3C00, 1}, {0xC000, -2}, {0x7BFF, 65504}, {0x0001, 5.9604644775390625e-08}, {0x03FF, 1023 * 5.9604644775390625e-08},
        {0x0400, 6.103515625e-05}, {0x8000, -0.0}, {0x3555, 0.333251953125}, {0x3C01, 1.0009765625}, {0xFBFF, -65504}};
    uint16_t h[10];
    for (int i = 0; i < 10; i++) { h[i] = hv[i].h; want[i] = hv[i].v; }
    expect_row(MAT_F16, h, 10, want);
    assert_true(isinf(f16_to_f32(0x7C00)) && f16_to_f32(0x7C00) > 0 && isinf(f16_to_f32(0xFC00)) && isnan(f16_to_f32(0x7E00)));
    assert_true(signbit(f16_to_f32(0x8000)));
    /* q8_0: d = 0.5, then d = -1 */
    block_q8_0 q8[2];
    q8[0].d = 0x3800;
    q8[1].d = 0xBC00;
    for (int i = 0; i < 32; i++) {
        q8[0].qs[i] = (int8_t)(8 * i - 128); want[i] = 0.5 * (8 * i - 128);
        q8[1].qs[i] = (int8_t)(i - 16); want[32 + i] = -(double)(i - 16);
    }
    expect_row(MAT_Q8_0, q8, 64, want);
    /* q4_0: d = 2; byte i holds element i (low) and i + 16 (high) */
    block_q4_0 q4;
    q4.d = 0x4000;
    for (int i = 0; i < 16; i++) {
        q4.qs[i] = (uint8_t)(i | ((15 - i) << 4));
        want[i] = 2.0 * (i - 8);
        want[16 + i] = 2.0 * (7 - i);
    }
    expect_row(MAT_Q4_0, &q4, 32, want);
    /* q4_K / q5_K: d = 1, dmin = 0.25, scales and mins across the 6-bit range */
    static const int sc[8] = {1, 2, 33, 63, 17, 40, 5, 62}, mn[8] = {0, 3, 63, 10, 48, 1, 31, 33};
    block_q4_K k4;
    block_q5_K k5;
    k4.d = k5.d = 0x3C00;
    k4.dmin = k5.dmin = 0x3400;
    pack_scales(sc, mn, k4.scales);
    pack_scales(sc, mn, k5.scales);
    memset(k5.qh, 0, sizeof k5.qh);
    for (int g = 0; g < 4; g++)
        for (int l = 0; l < 32; l++) {
            int e0 = 64 * g + l, e1 = e0 + 32;
            int a = (e0 * 7) % 16, b = (e1 * 7) % 16;
            k4.qs[32 * g + l] = (uint8_t)(a | (b << 4));
            int a5 = (e0 * 11) % 32, b5 = (e1 * 11) % 32;
            k5.qs[32 * g + l] = (uint8_t)((a5 & 15) | ((b5 & 15) << 4));
            k5.qh[l] |= (uint8_t)(((a5 >> 4) << (2 * g)) | ((b5 >> 4) << (2 * g + 1)));
        }
    for (int e = 0; e < 256; e++) want[e] = (double)sc[e / 32] * ((e * 7) % 16) - 0.25 * mn[e / 32];
    expect_row(MAT_Q4_K, &k4, 256, want);
    for (int e = 0; e < 256; e++) want[e] = (double)sc[e / 32] * ((e * 11) % 32) - 0.25 * mn[e / 32];
    expect_row(MAT_Q5_K, &k5, 256, want);
    /* q6_K: d = 0.25, int8 scales including -128 and 127 */
    static const int s6[16] = {-128, 127, -1, 0, 5, -7, 64, -64, 1, 2, 3, -3, 100, -100, 31, -32};
    block_q6_K k6;
    k6.d = 0x3400;
    for (int j = 0; j < 16; j++) k6.scales[j] = (int8_t)s6[j];
    int L[256];
    for (int e = 0; e < 256; e++) L[e] = (e * 13) % 64;
    for (int hh = 0; hh < 2; hh++)
        for (int l = 0; l < 32; l++) {
            const int *q = L + 128 * hh;
            k6.ql[64 * hh + l] = (uint8_t)((q[l] & 15) | ((q[l + 64] & 15) << 4));
            k6.ql[64 * hh + l + 32] = (uint8_t)((q[l + 32] & 15) | ((q[l + 96] & 15) << 4));
            k6.qh[32 * hh + l] = (uint8_t)((q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) | ((q[l + 96] >> 4) << 6));
        }
    for (int e = 0; e < 256; e++) want[e] = 0.25 * s6[e / 16] * (L[e] - 32);
    expect_row(MAT_Q6_K, &k6, 256, want);
    /* q5_0: d = 0.5, q = (5i) % 32 with the fifth bit from qh (little-endian) */
    block_q5_0 k50;
    k50.d = 0x3800;
    uint32_t qh50 = 0;
    memset(k50.qs, 0, sizeof k50.qs);
    for (int e = 0; e < 32; e++) {
        int q = (5 * e) % 32;
        if (q & 16) qh50 |= 1u << e;
        k50.qs[e % 16] |= (uint8_t)((q & 15) << (e < 16 ? 0 : 4));
        want[e] = 0.5 * (q - 16);
    }
    for (int j = 0; j < 4; j++) k50.qh[j] = (uint8_t)(qh50 >> (8 * j));
    expect_row(MAT_Q5_0, &k50, 32, want);
    assert_int_equal(mat_type_of(MAT_Q5_0)->block_bytes, 22);
    /* the table: block sizes as in GGUF */
    assert_int_equal(mat_type_of(MAT_Q4_K)->block_bytes, 144);
    assert_int_equal(mat_type_of(MAT_Q5_K)->block_bytes, 176);
    assert_int_equal(mat_type_of(MAT_Q6_K)->block_bytes, 210);
    assert_int_equal(mat_type_of(MAT_Q8_0)->block_bytes, 34);
    assert_int_equal(mat_type_of(MAT_Q4_0)->block_bytes, 18);
    assert_int_equal((int)mat_row_bytes(MAT_Q4_K, 7168), 28 * 144);
    assert_null(mat_type_of((mat_dtype)MAT_N_TYPES));
}

/* f16_from_f32: known roundings (ties to even, subnormals, overflow), every half back to
 * itself, and a sweep of f32 bit patterns against the compiler's _Float16 conversion. */
static void test_f16_from_f32(void **state) {
    (void)state;
    static const struct { float f; uint16_t h; } k[] = {
        {1.0f, 0x3C00}, {0.33333334f, 0x3555}, {65504.0f, 0x7BFF}, {65519.0f, 0x7BFF}, {65520.0f, 0x7C00},
        {-1e10f, 0xFC00}, {0x1p-25f, 0x0000}, {0x1.8p-24f, 0x0002}, {0x1.8p-25f, 0x0001}, {-0.0f, 0x8000},
        {1.0f + 0x1p-11f, 0x3C00}, {1.0f + 0x3p-11f, 0x3C02}, {0x1.ffcp-15f, 0x0400}, {0x1p-14f, 0x0400}};
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        if (f16_from_f32(k[i].f) != k[i].h) fail_msg("f16_from_f32(%a) = %04x, want %04x", k[i].f, f16_from_f32(k[i].f), k[i].h);
    assert_true(isnan(f16_to_f32(f16_from_f32(NAN))));
    for (uint32_t h = 0; h < 65536; h++) {
        float f = f16_to_f32((uint16_t)h);
        if (isnan(f)) { assert_true(isnan(f16_to_f32(f16_from_f32(f)))); continue; }
        assert_int_equal(f16_from_f32(f), h);
    }
    for (uint64_t u = 0; u < (1ull << 32); u += 4093) {
        union { uint32_t u; float f; } v = {(uint32_t)u};
        _Float16 c = (_Float16)v.f;
        uint16_t want;
        memcpy(&want, &c, 2);
        uint16_t got = f16_from_f32(v.f);
        if (isnan(v.f)) { assert_true(isnan(f16_to_f32(got))); continue; }
        if (got != want) fail_msg("f16_from_f32(%a) = %04x, _Float16 %04x", v.f, got, want);
    }
}

/* from_f32 -> to_f32 within each format's bound. */
static void test_ggml_roundtrip(void **state) {
    (void)state;
    enum { N = 2048 };
    float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
    void *buf = malloc(mat_row_bytes(MAT_F16, N));
    for (int kind = 0; kind < 4; kind++) {
        /* 0: uniform; 1: sum of uniforms (bell-shaped) with a scale per 32; 2: outliers; 3: one-signed */
        for (int i = 0; i < N; i++) {
            float v = kind == 1 ? (rng_uniform() + rng_uniform() + rng_uniform()) * (float)(1 + (i / 32) % 7) : rng_uniform();
            if (kind == 2 && i % 97 == 0) v *= 40.0f;
            if (kind == 3) v = fabsf(v) + 0.25f;
            x[i] = v;
        }
        for (int i = 0; i < 64; i++) x[256 + i] = 0.0f;   /* zero sub-blocks / blocks */
        /* f16: relative 2^-11 */
        mat_type_of(MAT_F16)->from_f32(x, buf, N);
        mat_type_of(MAT_F16)->to_f32(buf, y, N);
        for (int i = 0; i < N; i++) assert_true(fabs((double)y[i] - x[i]) <= 0x1p-11 * fabs(x[i]));
        /* q8_0: q = round(x / d), d = amax / 127 rounded to f16: |err| <= d/2 + 127 d 2^-11 */
        mat_type_of(MAT_Q8_0)->from_f32(x, buf, N);
        mat_type_of(MAT_Q8_0)->to_f32(buf, y, N);
        for (int b = 0; b < N / 32; b++) {
            double amax = 0;
            for (int i = 0; i < 32; i++) amax = fmax(amax, fabs(x[32 * b + i]));
            for (int i = 0; i < 32; i++)
                if (fabs((double)y[32 * b + i] - x[32 * b + i]) > amax / 127 * (0.5 + 127 * 0x1p-11) + 1e-30)
                    fail_msg("q8_0 kind %d element %d: %g vs %g", kind, 32 * b + i, y[32 * b + i], x[32 * b + i]);
        }
        /* q4_0: d = -max/8; round to nearest except at the clamped end (q 16 -> 15): |err| <= |d| (1 + 2^-8) */
        mat_type_of(MAT_Q4_0)->from_f32(x, buf, N);
        mat_type_of(MAT_Q4_0)->to_f32(buf, y, N);
        for (int b = 0; b < N / 32; b++) {
            double amax = 0;
            for (int i = 0; i < 32; i++) amax = fmax(amax, fabs(x[32 * b + i]));
            for (int i = 0; i < 32; i++) {
                double e = fabs((double)y[32 * b + i] - x[32 * b + i]), lim = amax / 8 * (1 + 0x1p-8);
                if (fabs(x[32 * b + i]) == amax) lim = amax * 0x1p-10;   /* the extreme maps to q = 0: exact but d's f16 rounding */
                if (e > lim + 1e-30) fail_msg("q4_0 kind %d element %d: %g vs %g", kind, 32 * b + i, y[32 * b + i], x[32 * b + i]);
            }
        }
        /* q4_K: each value is rounded onto its sub-block's stored grid dj q - mj, q = 0..15
         * (dj = d sc_j, mj = dmin m_j): within dj / 2 of x, or the nearer end of the grid when x
         * lies outside it (the 6-bit scales can leave an extreme just outside). Quality: the RMS
         * error is at most that of a plain 15-step grid over each sub-block's range including 0
         * (range / 15 / sqrt(12); Q4_K's grid always reaches 0, min >= 0): the fit gains what
         * the 6-bit rounding of scales and mins loses (measured 0.88-0.91 of it here). */
        mat_type_of(MAT_Q4_K)->from_f32(x, buf, N);
        mat_type_of(MAT_Q4_K)->to_f32(buf, y, N);
        double se = 0, sstep = 0;
        for (int j = 0; j < N / 32; j++) {
            const block_q4_K *b = (const block_q4_K *)buf + j / 8;
            uint8_t sc, m;
            kq_scale_min(j % 8, b->scales, &sc, &m);
            double dj = (double)f16_to_f32(b->d) * sc, mj = (double)f16_to_f32(b->dmin) * m;
            double lo = 0, hi = 0;
            for (int i = 0; i < 32; i++) { lo = fmin(lo, x[32 * j + i]); hi = fmax(hi, x[32 * j + i]); }
            for (int i = 0; i < 32; i++) {
                double xv = x[32 * j + i], e = fabs((double)y[32 * j + i] - xv);
                double out = xv < -mj ? -mj - xv : xv > 15 * dj - mj ? xv - (15 * dj - mj) : 0;
                se += e * e;
                if (e > fmax(dj / 2, out) * (1 + 1e-5) + 1e-6 * (hi - lo) + 1e-30)
                    fail_msg("q4_K kind %d element %d: %g vs %g (dj %g, mj %g)", kind, 32 * j + i, y[32 * j + i], xv, dj, mj);
            }
            sstep += 32 * ((hi - lo) / 15) * ((hi - lo) / 15) / 12;
        }
        if (!(se <= sstep)) fail_msg("q4_K kind %d: rms error %g vs step rms %g", kind, sqrt(se / N), sqrt(sstep / N));
        for (int i = 256; i < 320; i++) assert_true(y[i] == 0.0f);   /* zero sub-blocks stay zero */
    }
    /* all-zero and constant blocks */
    for (int i = 0; i < 256; i++) x[i] = 0.0f;
    for (int t = 0; t < NELEM(GTYPES); t++) {
        const mat_type *ty = mat_type_of(GTYPES[t]);
        if (!ty->from_f32) continue;
        ty->from_f32(x, buf, 256);
        ty->to_f32(buf, y, 256);
        for (int i = 0; i < 256; i++) assert_true(y[i] == 0.0f);
    }
    free(x); free(y); free(buf);
}

/* ---- matrix kernels for the ggml types */

/* Bound on |y(x quantized to q8_K) - y(f32 x)| for row r: each x moves by at most
 * dx/2 (dx = max|x_block| / 127, plus the rounding of x * 127/max), so y by at most
 * sum_b dx_b / 2 sum_{i in b} |w_i|; plus the f32 rounding of both sides (dot_tol of the
 * larger sum, twice: the integer path's f32 steps are a (nb + 16)-term sum, fewer than cols). */
static double qx_tol(const mat *W, int r, const float *x, int blk) {
    double t = 0, S = 0;
    const float *wr = row_f32(W, r);
    for (int b = 0; b < W->cols / blk; b++) {
        double amax = 0, sw = 0;
        for (int i = 0; i < blk; i++) {
            int c = b * blk + i;
            double w = fabs((double)wr[c]);
            amax = fmax(amax, fabs(x[c]));
            sw += w;
            S += w * fabs(x[c]);
        }
        t += amax / 127 * (0.5 + 1e-5) * sw;
    }
    return t + 2 * dot_tol(W->cols, S + t);
}
static double kq_tol(const mat *W, int r, const float *x) { return qx_tol(W, r, x, QK_K); }
/* The same bound for x quantized per 32 (Q4_0, Q5_0 on AVX-512). */
static double q8a_tol(const mat *W, int r, const float *x) { return qx_tol(W, r, x, QK8); }
/* The bound of the path variant `name` takes for dt; 0 when it computes the reference. */
static double path_tol(mat_dtype dt, const char *name, const mat *W, int r, const float *x) {
    return has_kq_path_for(dt, name) ? kq_tol(W, r, x) : has_q8a_path_for(dt, name) ? q8a_tol(W, r, x) : -1.0;
}

static void check_ggml_matvec(mat_dtype dt, int exact) {
    mv_variant v[4];
    int nv = n_mv_variants(v);
    static const int rows_list[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 33, 67};
    for (int ri = 0; ri < NELEM(rows_list); ri++)
        for (int ci = 0; gcols(dt, ci); ci++) {
            int rows = rows_list[ri], cols = gcols(dt, ci);
            test_mat W = make_mat(dt, rows, cols, exact);
            float *x = make_vec(cols, exact);
            float *ref = malloc(sizeof(float) * rows), *y = malloc(sizeof(float) * (rows + 1));
            for (int start = 0; start <= (rows > 1); start++) {
                matvec_rows_ref(&W.m, x, ref, start, rows);
                for (int k = 0; k < nv; k++) {
                    if (!v[k].available) continue;
                    int kq = (has_kq_path_for(dt, v[k].name) || has_q8a_path_for(dt, v[k].name)) &&
                             !(k == 0 && strcmp(cpu_kernel_name(), "scalar") == 0);
                    y[rows - start] = 12345.0f;
                    v[k].matvec(&W.m, x, y, start, rows);
                    assert_true(y[rows - start] == 12345.0f);
                    for (int r = start; r < rows; r++) {
                        double tol = kq ? path_tol(dt, v[k].name, &W.m, r, x) : exact ? 0.0 : dot_tol(cols, abs_dot(&W.m, r, x)) + q8x_tol(&W.m, r, x);
                        if (fabs((double)y[r - start] - ref[r - start]) > tol)
                            fail_msg("matvec %s %s exact %d rows %d cols %d row %d: %g vs %g (tol %g)", v[k].name,
                                     mat_type_of(dt)->name, exact, rows, cols, r, y[r - start], ref[r - start], tol);
                    }
                }
            }
            free(W.buf); free(x); free(ref); free(y);
        }
}

static void check_ggml_matmul(mat_dtype dt, int exact) {
    mv_variant v[4];
    int nv = n_mv_variants(v);
    static const int rows_list[] = {1, 2, 3, 5, 8, 33};
    static const int ns[] = {1, 2, 3, 4, 5, 7, 8, 9, 17, 64, 65};
    for (int ri = 0; ri < NELEM(rows_list); ri++)
        for (int ci = 0; gcols(dt, ci) && ci < 3; ci++)
            for (int ni = 0; ni < NELEM(ns); ni++) {
                int rows = rows_list[ri], cols = gcols(dt, ci), n = ns[ni], ldy = rows + 3;
                if (n > 9 && rows > 8) continue;   /* time */
                test_mat W = make_mat(dt, rows, cols, exact);
                float *X = make_vec(n * cols, exact);
                float *ref = malloc(sizeof(float) * n * ldy), *Y = malloc(sizeof(float) * n * ldy);
                int row0 = rows > 1 ? 1 : 0;
                for (int i = 0; i < n * ldy; i++) ref[i] = -7.0f;
                matmul_rows_ref(&W.m, X, n, ref, ldy, row0, rows);
                for (int k = 0; k < nv; k++) {
                    if (!v[k].available) continue;
                    int kq = (has_kq_path_for(dt, v[k].name) || has_q8a_path_for(dt, v[k].name)) &&
                             !(k == 0 && strcmp(cpu_kernel_name(), "scalar") == 0);
                    for (int i = 0; i < n * ldy; i++) Y[i] = -7.0f;
                    v[k].matmul(&W.m, X, n, Y, ldy, row0, rows);
                    for (int t = 0; t < n; t++)
                        for (int r = 0; r < ldy; r++) {
                            float got = Y[t * ldy + r], want = ref[t * ldy + r];
                            const float *xt = X + (size_t)t * cols;
                            double tol = (r < row0 || r >= rows) ? 0.0 : kq ? path_tol(dt, v[k].name, &W.m, r, xt) : exact ? 0.0 : dot_tol(cols, abs_dot(&W.m, r, xt));
                            if (fabs((double)got - want) > tol)
                                fail_msg("matmul %s %s exact %d rows %d cols %d n %d t %d r %d: %g vs %g (tol %g)", v[k].name,
                                         mat_type_of(dt)->name, exact, rows, cols, n, t, r, got, want, tol);
                        }
                }
                free(W.buf); free(X); free(ref); free(Y);
            }
}

/* Transposed matvec: rows 1..67 of a range starting at row 1; one row with x = {1} is the
 * row as f32, bit for bit. */
static void check_ggml_matvec_t(mat_dtype dt, int exact) {
    mv_variant v[4];
    int nv = n_mv_variants(v);
    const float one = 1.0f;
    for (int nr = 1; nr <= 67; nr += (nr < 9 ? 1 : 11))
        for (int ci = 0; gcols(dt, ci) && ci < 3; ci++) {
            int cols = gcols(dt, ci), row0 = 1, row1 = 1 + nr;
            test_mat W = make_mat(dt, nr + 2, cols, exact);
            float *x = make_vec(nr, exact), *ref = malloc(sizeof(float) * cols), *y = malloc(sizeof(float) * (cols + 1));
            float *row = malloc(sizeof(float) * cols);
            mat_type_of(dt)->to_f32((const char *)W.buf + mat_row_bytes(dt, cols), row, cols);
            matvec_t_rows_ref(&W.m, x, ref, row0, row1);
            for (int k = 0; k < nv; k++) {
                if (!v[k].available) continue;
                for (int c = 0; c <= cols; c++) y[c] = 12345.0f;
                v[k].matvec_t(&W.m, x, y, row0, row1);
                assert_true(y[cols] == 12345.0f);
                for (int c = 0; c < cols; c++) {
                    double tol = exact ? 0.0 : dot_tol(nr, abs_dot_t(&W.m, c, x, row0, row1));
                    if (fabs((double)y[c] - ref[c]) > tol)
                        fail_msg("matvec_t %s %s rows %d cols %d col %d: %g vs %g", v[k].name, mat_type_of(dt)->name, nr, cols, c, y[c], ref[c]);
                }
                v[k].matvec_t(&W.m, &one, y, 1, 2);
                assert_memory_equal(y, row, sizeof(float) * cols);
                v[k].matvec_t(&W.m, &one, y, 2, 2);
                for (int c = 0; c < cols; c++) assert_true(y[c] == 0.0f);
            }
            free(W.buf); free(x); free(ref); free(y); free(row);
        }
}

static void test_ggml_matvec(void **state) {
    (void)state;
    for (int t = 0; t < NELEM(GTYPES); t++) { check_ggml_matvec(GTYPES[t], 1); check_ggml_matvec(GTYPES[t], 0); }
}
static void test_ggml_matmul(void **state) {
    (void)state;
    for (int t = 0; t < NELEM(GTYPES); t++) { check_ggml_matmul(GTYPES[t], 1); check_ggml_matmul(GTYPES[t], 0); }
}
static void test_ggml_matvec_t(void **state) {
    (void)state;
    for (int t = 0; t < NELEM(GTYPES); t++) { check_ggml_matvec_t(GTYPES[t], 1); check_ggml_matvec_t(GTYPES[t], 0); }
}

/* The same tests with the scalar kernel set (the dispatching entry points then are the
 * references for every type, also the k-quants). */
static void test_ggml_scalar_set(void **state) {
    (void)state;
    cpu_force_scalar(1);
    check_ggml_matvec(MAT_Q4_K, 0);
    check_ggml_matmul(MAT_Q6_K, 0);
    cpu_force_scalar(0);
}

/* ---- the q8_K integer path */

/* xq for nb blocks: exact (d = 1, qs in [-2, 2]) or x quantized. */
static block_q8_K *make_xq(int nb, int exact) {
    block_q8_K *xq = malloc(sizeof *xq * (size_t)(nb > 0 ? nb : 1));
    if (exact) {
        for (int b = 0; b < nb; b++) {
            xq[b].d = 1.0f;
            for (int i = 0; i < QK_K; i++) xq[b].qs[i] = (int8_t)rng_int(-2, 2);
            for (int g = 0; g < 16; g++) {
                int s = 0;
                for (int i = 0; i < 16; i++) s += xq[b].qs[16 * g + i];
                xq[b].bsums[g] = (int16_t)s;
            }
        }
    } else {
        float *x = make_vec(nb * QK_K, 0);
        for (int i = 0; i < nb * QK_K; i++) x[i] *= (float)(1 + (i / 256) % 3);
        assert_true(quantize_row_q8_K_ref(x, xq, nb * QK_K));
        free(x);
    }
    return xq;
}

/* sum over the terms of the integer algorithm of |term| (the scale of its f32 rounding):
 * |d dx| sum |sc_j u_i xq_i| (Q6_K: u = q with its +32, and the 32 bsum correction) +
 * |dmin dx| sum |m_j bsum_j|. */
static double kq_abs_int(const mat *W, int r, const block_q8_K *xq) {
    int nb = W->cols / QK_K;
    double S = 0;
    for (int b = 0; b < nb; b++) {
        const unsigned char *blk = (const unsigned char *)W->data + (size_t)r * mat_row_bytes(W->dtype, W->cols) + (size_t)b * mat_type_of(W->dtype)->block_bytes;
        double dx = fabs(xq[b].d);
        if (W->dtype == MAT_Q6_K) {
            const block_q6_K *w = (const block_q6_K *)blk;
            for (int i = 0; i < QK_K; i++) S += fabs(f16_to_f32(w->d)) * dx * abs(w->scales[i / 16]) * 96.0 * abs(xq[b].qs[i]);
        } else {
            const block_q4_K *w = (const block_q4_K *)blk;   /* d, dmin, scales at the same place in Q5_K */
            for (int j = 0; j < 8; j++) {
                uint8_t sc, m;
                kq_scale_min(j, w->scales, &sc, &m);
                for (int i = 0; i < 32; i++) S += fabs(f16_to_f32(w->d)) * dx * sc * 31.0 * abs(xq[b].qs[32 * j + i]);
                S += fabs(f16_to_f32(w->dmin)) * dx * m * abs(xq[b].bsums[2 * j] + xq[b].bsums[2 * j + 1]);
            }
        }
    }
    return S;
}

typedef struct {
    const char *name;
    void (*mv)(const mat *, const block_q8_K *, float *, int, int);
    void (*mm)(const mat *, const block_q8_K *, int, float *, int, int, int);
    int ok;
} q8K_variant;

static int q8K_variants(mat_dtype dt, q8K_variant *v) {
    const cpu_features *f = cpu_get_features();
    int n = 0, a5 = f->avx512f && f->avx2_fma, a2 = f->avx2_fma;
    v[n++] = (q8K_variant){"dispatch", matvec_rows_q8K, matmul_rows_q8K, 1};
    if (dt == MAT_Q4_K) {
        v[n++] = (q8K_variant){"avx512", matvec_rows_q8K_q4k_avx512, matmul_rows_q8K_q4k_avx512, a5};
        v[n++] = (q8K_variant){"avx2", matvec_rows_q8K_q4k_avx2, matmul_rows_q8K_q4k_avx2, a2};
    } else if (dt == MAT_Q5_K) {
        v[n++] = (q8K_variant){"avx512", matvec_rows_q8K_q5k_avx512, matmul_rows_q8K_q5k_avx512, a5};
    } else if (dt == MAT_Q6_K) {
        v[n++] = (q8K_variant){"avx512", matvec_rows_q8K_q6k_avx512, matmul_rows_q8K_q6k_avx512, a5};
        v[n++] = (q8K_variant){"avx2", matvec_rows_q8K_q6k_avx2, matmul_rows_q8K_q6k_avx2, a2};
    }
    return n;
}

/* Every integer kernel against matvec_rows_q8K_ref / matmul_rows_q8K_ref: exact data
 * (integer sums below 2^24, d = dx = 1, dmin = 1; Q6_K d = 1/8): equal; random: the f32
 * steps are (nb + a few)-term sums of terms bounded by kq_abs_int (+ the int32 -> f32
 * conversion of lane sums), so (2 nb + 40) eps S. */
static void check_q8K_kernels(void) {
    static const mat_dtype kt[] = {MAT_Q4_K, MAT_Q5_K, MAT_Q6_K};
    static const int rows_list[] = {1, 2, 3, 4, 5, 7, 8, 33, 67}, nbs[] = {1, 2, 3, 8}, ns[] = {1, 2, 3, 4, 5, 7, 8, 13, 64, 65};
    for (int ti = 0; ti < 3; ti++)
        for (int exact = 1; exact >= 0; exact--)
            for (int ri = 0; ri < NELEM(rows_list); ri++)
                for (int bi = 0; bi < NELEM(nbs); bi++) {
                    mat_dtype dt = kt[ti];
                    int rows = rows_list[ri], nb = nbs[bi], cols = nb * QK_K;
                    if (exact && nb > 3) continue;
                    q8K_variant v[4];
                    int nv = q8K_variants(dt, v);
                    test_mat W = make_mat(dt, rows, cols, exact);
                    int nmax = rows <= 8 ? 65 : 5, ldy = rows + 2, row0 = rows > 1 ? 1 : 0;
                    block_q8_K *XQ = make_xq(nb * nmax, exact);
                    float *ref = malloc(sizeof(float) * nmax * ldy), *Y = malloc(sizeof(float) * nmax * ldy);
                    /* matvec, rows [row0, rows) */
                    matvec_rows_q8K_ref(&W.m, XQ, ref, row0, rows);
                    for (int k = 0; k < nv; k++) {
                        if (!v[k].ok) continue;
                        Y[rows - row0] = 777.0f;
                        v[k].mv(&W.m, XQ, Y, row0, rows);
                        assert_true(Y[rows - row0] == 777.0f);
                        for (int r = row0; r < rows; r++) {
                            double tol = exact ? 0.0 : (2 * nb + 40) * (double)FLT_EPSILON * kq_abs_int(&W.m, r, XQ) + 1e-30;
                            if (fabs((double)Y[r - row0] - ref[r - row0]) > tol)
                                fail_msg("q8K matvec %s %s rows %d nb %d r %d: %.9g vs %.9g (tol %g)", v[k].name,
                                         mat_type_of(dt)->name, rows, nb, r, Y[r - row0], ref[r - row0], tol);
                        }
                    }
                    /* matmul */
                    for (int ni = 0; ni < NELEM(ns) && ns[ni] <= nmax; ni++) {
                        int n = ns[ni];
                        for (int i = 0; i < n * ldy; i++) ref[i] = -7.0f;
                        matmul_rows_q8K_ref(&W.m, XQ, n, ref, ldy, row0, rows);
                        for (int k = 0; k < nv; k++) {
                            if (!v[k].ok) continue;
                            for (int i = 0; i < n * ldy; i++) Y[i] = -7.0f;
                            v[k].mm(&W.m, XQ, n, Y, ldy, row0, rows);
                            for (int t = 0; t < n; t++)
                                for (int r = 0; r < ldy; r++) {
                                    double tol = (exact || r < row0 || r >= rows) ? 0.0
                                               : (2 * nb + 40) * (double)FLT_EPSILON * kq_abs_int(&W.m, r, XQ + (size_t)t * nb) + 1e-30;
                                    if (fabs((double)Y[t * ldy + r] - ref[t * ldy + r]) > tol)
                                        fail_msg("q8K matmul %s %s rows %d nb %d n %d t %d r %d: %.9g vs %.9g", v[k].name,
                                                 mat_type_of(dt)->name, rows, nb, n, t, r, Y[t * ldy + r], ref[t * ldy + r]);
                                }
                        }
                    }
                    free(W.buf); free(XQ); free(ref); free(Y);
                }
}

static void test_q8K_kernels(void **state) {
    (void)state;
    check_q8K_kernels();
}

/* The AVX-512 k-quant kernels without VNNI (vpmaddwd + vpaddd instead of vpdpwssd): the same
 * integers. On a CPU with VNNI the feature flag is turned off for this test (the kernels read
 * it per call), then back on. */
static void test_q8K_kernels_no_vnni(void **state) {
    (void)state;
    cpu_features *f = (cpu_features *)cpu_get_features();
    int had = f->avx512_vnni;
    f->avx512_vnni = 0;
    check_q8K_kernels();
    f->avx512_vnni = had;
}

/* ---- Q4_0 / Q5_0 x int8 activations (AVX-512) */

/* sum of |d dx (u - off) xq| over a row: the scale of the integer path's f32 rounding. */
static double q8a_abs_int(const mat *W, int r, const block_q8 *xq) {
    int nb = W->cols / QK8;
    const float *w = row_f32(W, r);
    double S = 0;
    for (int b = 0; b < nb; b++)
        for (int i = 0; i < QK8; i++) S += fabs((double)w[b * QK8 + i]) * fabs((double)xq[b].scale) * abs(xq[b].q[i]);
    return S;
}

/* matvec_rows_q4_0_avx512 / q5_0 (f32 x in, quantized inside) against matvec_rows_q8a_ref
 * on x quantized by quantize_row_q8a_ref (the same integers: the f32 steps are sums of
 * 4 nb lane terms, so (4 nb + 40) eps S), over odd rows, tails of 1..3 blocks past the
 * 4-block groups, and n = 1..17 tokens; then the f32 reference within q8a_tol. */
static void check_q8a_kernels(void) {
    static const mat_dtype qt[] = {MAT_Q4_0, MAT_Q5_0};
    static const int rows_list[] = {1, 2, 3, 4, 5, 7, 8, 9, 33, 67}, nbs[] = {1, 2, 3, 4, 5, 6, 7, 8, 12, 32, 33};
    const cpu_features *f = cpu_get_features();
    if (!(f->avx512f && f->avx2_fma)) return;
    for (int ti = 0; ti < 2; ti++)
        for (int exact = 1; exact >= 0; exact--)
            for (int ri = 0; ri < NELEM(rows_list); ri++)
                for (int bi = 0; bi < NELEM(nbs); bi++) {
                    mat_dtype dt = qt[ti];
                    int rows = rows_list[ri], nb = nbs[bi], cols = nb * QK8, nmax = rows <= 9 ? 17 : 3;
                    int ldy = rows + 2, row0 = rows > 1 ? 1 : 0;
                    void (*mv)(const mat *, const float *, float *, int, int) = dt == MAT_Q4_0 ? matvec_rows_q4_0_avx512 : matvec_rows_q5_0_avx512;
                    void (*mm)(const mat *, const float *, int, float *, int, int, int) = dt == MAT_Q4_0 ? matmul_rows_q4_0_avx512 : matmul_rows_q5_0_avx512;
                    test_mat W = make_mat(dt, rows, cols, exact);
                    float *X = make_vec(nmax * cols, exact);
                    for (int i = 0; i < nmax * cols; i++) X[i] *= (float)(1 + (i / 32) % 5);   /* blocks of different steps */
                    block_q8 *XQ = malloc(sizeof(block_q8) * (size_t)nmax * nb);
                    assert_true(quantize_row_q8a_ref(X, XQ, nmax * cols));
                    float *ref = malloc(sizeof(float) * nmax * ldy), *Y = malloc(sizeof(float) * nmax * ldy), *rf = malloc(sizeof(float) * nmax * ldy);
                    matvec_rows_q8a_ref(&W.m, XQ, ref, row0, rows);
                    matvec_rows_ref(&W.m, X, rf, row0, rows);
                    Y[rows - row0] = 777.0f;
                    mv(&W.m, X, Y, row0, rows);
                    assert_true(Y[rows - row0] == 777.0f);
                    for (int r = row0; r < rows; r++) {
                        double tol = (4 * nb + 40) * (double)FLT_EPSILON * q8a_abs_int(&W.m, r, XQ) + 1e-30;
                        if (fabs((double)Y[r - row0] - ref[r - row0]) > tol)
                            fail_msg("q8a matvec %s exact %d rows %d nb %d r %d: %.9g vs %.9g (tol %g)", mat_type_of(dt)->name, exact,
                                     rows, nb, r, Y[r - row0], ref[r - row0], tol);
                        if (fabs((double)Y[r - row0] - rf[r - row0]) > q8a_tol(&W.m, r, X))
                            fail_msg("q8a matvec %s vs f32 rows %d nb %d r %d: %.9g vs %.9g", mat_type_of(dt)->name, rows, nb, r,
                                     Y[r - row0], rf[r - row0]);
                    }
                    for (int n = 1; n <= nmax; n++) {
                        for (int i = 0; i < n * ldy; i++) ref[i] = Y[i] = -7.0f;
                        matmul_rows_q8a_ref(&W.m, XQ, n, ref, ldy, row0, rows);
                        mm(&W.m, X, n, Y, ldy, row0, rows);
                        for (int t = 0; t < n; t++)
                            for (int r = 0; r < ldy; r++) {
                                double tol = (r < row0 || r >= rows) ? 0.0
                                           : (4 * nb + 40) * (double)FLT_EPSILON * q8a_abs_int(&W.m, r, XQ + (size_t)t * nb) + 1e-30;
                                if (fabs((double)Y[t * ldy + r] - ref[t * ldy + r]) > tol)
                                    fail_msg("q8a matmul %s exact %d rows %d nb %d n %d t %d r %d: %.9g vs %.9g", mat_type_of(dt)->name,
                                             exact, rows, nb, n, t, r, Y[t * ldy + r], ref[t * ldy + r]);
                            }
                    }
                    free(W.buf); free(X); free(XQ); free(ref); free(Y); free(rf);
                }
}

static void test_q8a_kernels(void **state) {
    (void)state;
    check_q8a_kernels();
    cpu_features *f = (cpu_features *)cpu_get_features();   /* and without VNNI (vpmaddubsw + vpmaddwd) */
    int had = f->avx512_vnni;
    f->avx512_vnni = 0;
    check_q8a_kernels();
    f->avx512_vnni = had;
}

/* quantize_row_q8a_ref: steps, round to even, the refusals. */
static void test_quantize_q8a(void **state) {
    (void)state;
    float x[64];
    block_q8 q[2];
    for (int i = 0; i < 64; i++) x[i] = (float)(i - 20) * 0.25f;
    assert_true(quantize_row_q8a_ref(x, q, 64));
    assert_true(q[0].scale == 5.0f / 127.0f && q[0].q[0] == -127 && q[0].q[20] == 0);
    assert_true(q[1].q[31] == 127);
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < 32; i++) assert_true(fabsf(q[b].q[i] * q[b].scale - x[32 * b + i]) <= q[b].scale * 0.5f * (1 + 1e-5f));
    memset(x, 0, sizeof x);
    assert_true(quantize_row_q8a_ref(x, q, 64) && q[0].scale == 0.0f && q[1].q[5] == 0);
    x[40] = 1e-35f;
    assert_false(quantize_row_q8a_ref(x, q, 64));
    x[40] = NAN;
    assert_false(quantize_row_q8a_ref(x, q, 64));
    x[40] = -INFINITY;
    assert_false(quantize_row_q8a_ref(x, q, 64));
}

/* The integer reference computes the f32 reference's function: with x = dx * xq exactly
 * (dx a power of two), matvec_rows_q8K_ref and matvec_rows_ref agree within both sides'
 * rounding. Checks the algebra (mins, Q6_K's -32, the sub-block order). */
static void test_q8K_ref_algebra(void **state) {
    (void)state;
    static const mat_dtype kt[] = {MAT_Q4_K, MAT_Q5_K, MAT_Q6_K};
    for (int ti = 0; ti < 3; ti++) {
        int rows = 9, nb = 3, cols = nb * QK_K;
        test_mat W = make_mat(kt[ti], rows, cols, 0);
        block_q8_K *xq = make_xq(nb, 1);
        float *x = malloc(sizeof(float) * cols), yi[9], yf[9];
        for (int b = 0; b < nb; b++) {
            xq[b].d = ldexpf(1.0f, -3 - b);
            for (int i = 0; i < QK_K; i++) {
                xq[b].qs[i] = (int8_t)rng_int(-127, 127);
                x[b * QK_K + i] = xq[b].d * xq[b].qs[i];
            }
            for (int g = 0; g < 16; g++) {
                int s = 0;
                for (int i = 0; i < 16; i++) s += xq[b].qs[16 * g + i];
                xq[b].bsums[g] = (int16_t)s;
            }
        }
        matvec_rows_q8K_ref(&W.m, xq, yi, 0, rows);
        matvec_rows_ref(&W.m, x, yf, 0, rows);
        for (int r = 0; r < rows; r++) {
            double tol = dot_tol(cols, abs_dot(&W.m, r, x)) + (nb + 24) * (double)FLT_EPSILON * kq_abs_int(&W.m, r, xq);
            if (fabs((double)yi[r] - yf[r]) > tol) fail_msg("%s row %d: integer %g, f32 %g", mat_type_of(kt[ti])->name, r, yi[r], yf[r]);
        }
        free(W.buf); free(xq); free(x);
    }
}

/* quantize_row_q8_K: every variant bit-identical to the reference; |x - d q| <= d/2 (+ the
 * rounding of x * 127/max); bsums the sums of 16; 0 for Inf, NaN, a nearly subnormal block. */
static void test_quantize_q8K(void **state) {
    (void)state;
    const cpu_features *f = cpu_get_features();
    struct { int (*fn)(const float *, block_q8_K *, int); int ok; } v[] = {
        {quantize_row_q8_K, 1}, {quantize_row_q8_K_avx512, f->avx512f && f->avx2_fma}, {quantize_row_q8_K_avx2, f->avx2_fma}};
    int n = 4 * QK_K;
    float *x = make_vec(n, 0);
    for (int i = 0; i < n; i++) x[i] *= (i % 7) ? 3.0f : 0.001f;
    for (int i = 256; i < 512; i++) x[i] = 0.0f;   /* an all-zero block */
    x[600] = 1e-40f; x[601] = 1e30f;               /* subnormal next to huge */
    for (int i = 0; i < 16; i++) x[800 + i] = 127.0f / 2 * (float)(i - 8) / 8;   /* ties after scaling */
    block_q8_K a[4], b[4];
    assert_true(quantize_row_q8_K_ref(x, a, n));
    for (int k = 0; k < 3; k++) {
        if (!v[k].ok) continue;
        memset(b, 0x55, sizeof b);
        assert_true(v[k].fn(x, b, n));
        assert_memory_equal(a, b, sizeof a);
    }
    for (int blk = 0; blk < 4; blk++)
        for (int i = 0; i < QK_K; i++) {
            double e = fabs((double)x[blk * QK_K + i] - (double)a[blk].d * a[blk].qs[i]);
            assert_true(e <= a[blk].d * (0.5 + 1e-5) + 1e-37);
            if (i % 16 == 0) {
                int s = 0;
                for (int j = 0; j < 16; j++) s += a[blk].qs[i + j];
                assert_int_equal(s, a[blk].bsums[i / 16]);
            }
        }
    for (int kind = 0; kind < 4; kind++) {
        float *z = make_vec(n, 0);
        if (kind == 0) z[300] = NAN;
        if (kind == 1) z[5] = -INFINITY;
        if (kind == 2) for (int i = 512; i < 768; i++) z[i] = 1e-35f * (float)(i % 3);
        if (kind == 3) z[n - 1] = NAN;
        for (int k = 0; k < 3; k++)
            if (v[k].ok) assert_int_equal(v[k].fn(z, b, n), 0);
        assert_int_equal(quantize_row_q8_K_ref(z, b, n), 0);
        free(z);
    }
    free(x);
}

/* Edge cases through matvec_rows / matmul_rows for every ggml type: zero weights give 0;
 * huge x (1e30, finite) stays within the bound relative to its size; NaN or Inf in x takes
 * the f32 reference, so y is bit for bit the reference's (NaN in every row for NaN). */
static void test_ggml_edges(void **state) {
    (void)state;
    mv_variant v[4];
    int nv = n_mv_variants(v);
    for (int ti = 0; ti < NELEM(GTYPES); ti++) {
        mat_dtype dt = GTYPES[ti];
        int rows = 6, cols = 512;
        test_mat W = make_mat(dt, rows, cols, 0);
        test_mat Z = make_mat(dt, rows, cols, 0);
        memset(Z.buf, 0, mat_bytes(&Z.m));
        row_cache_reset();
        float x[512], y[6], ref[6], Y[2 * 6];
        for (int kind = 0; kind < 4; kind++) {
            for (int i = 0; i < cols; i++) x[i] = rng_uniform();
            if (kind == 1) for (int i = 0; i < cols; i++) x[i] *= 1e30f;
            if (kind == 2) x[333] = NAN;
            if (kind == 3) x[17] = INFINITY;
            matvec_rows_ref(&W.m, x, ref, 0, rows);
            for (int k = 0; k < nv; k++) {
                if (!v[k].available) continue;
                v[k].matvec(&Z.m, x, y, 0, rows);
                for (int r = 0; r < rows; r++) assert_true(kind >= 2 ? isnan(y[r]) || y[r] == 0.0f : y[r] == 0.0f);
                v[k].matvec(&W.m, x, y, 0, rows);
                for (int r = 0; r < rows; r++) {
                    if (kind == 2) { if (!isnan(y[r])) fail_msg("%s %s NaN x: row %d = %g", v[k].name, mat_type_of(dt)->name, r, y[r]); continue; }
                    if (kind == 3) { assert_true((isnan(y[r]) && isnan(ref[r])) || y[r] == ref[r]); continue; }
                    double tol = path_tol(dt, v[k].name, &W.m, r, x);
                    if (tol < 0) tol = dot_tol(cols, abs_dot(&W.m, r, x));
                    if (fabs((double)y[r] - ref[r]) > tol) fail_msg("%s %s kind %d row %d: %g vs %g", v[k].name, mat_type_of(dt)->name, kind, r, y[r], ref[r]);
                }
                if (kind >= 2) {   /* matmul: the bad token only takes the reference */
                    float X2[1024];
                    for (int i = 0; i < cols; i++) { X2[i] = rng_uniform(); X2[cols + i] = x[i]; }
                    v[k].matmul(&W.m, X2, 2, Y, rows, 0, rows);
                    for (int r = 0; r < rows; r++) assert_true((isnan(Y[rows + r]) && isnan(ref[r])) || Y[rows + r] == ref[r]);
                    for (int r = 0; r < rows; r++) assert_true(isfinite(Y[r]));
                }
            }
        }
        free(W.buf); free(Z.buf);
    }
}


/* The pool with ggml weights: matvec_parallel (k-quants: x quantized once for all shares) and
 * matmul_parallel give the bits of matvec_rows / matmul_rows over all rows. */
static void test_ggml_parallel(void **state) {
    (void)state;
    for (int nt = 1; nt <= 3; nt++) {
        threadpool *p = threadpool_create(nt);
        assert_non_null(p);
        for (int ti = 0; ti < NELEM(GTYPES); ti++) {
            int rows = 77, cols = 512, n = 5;
            test_mat W = make_mat(GTYPES[ti], rows, cols, 0);
            float *x = make_vec(n * cols, 0), *ref = malloc(sizeof(float) * n * rows), *y = malloc(sizeof(float) * n * rows);
            matvec_rows(&W.m, x, ref, 0, rows);
            matvec_parallel(p, &W.m, x, y);
            assert_memory_equal(y, ref, sizeof(float) * rows);
            matmul_rows(&W.m, x, n, ref, rows, 0, rows);
            matmul_parallel(p, &W.m, x, n, y, rows);
            assert_memory_equal(y, ref, sizeof(float) * n * rows);
            free(W.buf); free(x); free(ref); free(y);
        }
        threadpool_free(p);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blas_sgemm),
        cmocka_unit_test(test_vec_argmax),
        cmocka_unit_test(test_dispatch),
        cmocka_unit_test(test_matvec_f32),
        cmocka_unit_test(test_matvec_bf16),
        cmocka_unit_test(test_matvec_q8),
        cmocka_unit_test(test_matvec_rows_sweep),
        cmocka_unit_test(test_matvec_q8_x_edges),
        cmocka_unit_test(test_q8p),
        cmocka_unit_test(test_matvec_tail_column),
        cmocka_unit_test(test_matmul_f32),
        cmocka_unit_test(test_matmul_bf16),
        cmocka_unit_test(test_matmul_q8),
        cmocka_unit_test(test_matmul_n64),
        cmocka_unit_test(test_matvec_t_f32),
        cmocka_unit_test(test_matvec_t_bf16),
        cmocka_unit_test(test_matvec_t_q8),
        cmocka_unit_test(test_matvec_t_row_exact),
        cmocka_unit_test(test_q8q8),
        cmocka_unit_test(test_bf16bf16),
        cmocka_unit_test(test_low_precision_mode),
        cmocka_unit_test(test_lowp_matmul),
        cmocka_unit_test(test_lowp_matmul_mode),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_silu_mul),
        cmocka_unit_test(test_vec_dot_axpy),
        cmocka_unit_test(test_vec_bf16),
        cmocka_unit_test(test_attn_block),
        cmocka_unit_test(test_quantize),
        cmocka_unit_test(test_topk),
        cmocka_unit_test(test_router_topk),
        cmocka_unit_test(test_threadpool_rounds),
        cmocka_unit_test(test_threadpool_tasks),
        cmocka_unit_test(test_threadpool_alternating_counts),
        cmocka_unit_test(test_matvec_parallel),
        cmocka_unit_test(test_matvec_parallel_batch),
        cmocka_unit_test(test_ggml_dequant_hand),
        cmocka_unit_test(test_f16_from_f32),
        cmocka_unit_test(test_ggml_roundtrip),
        cmocka_unit_test(test_quantize_q8K),
        cmocka_unit_test(test_q8K_ref_algebra),
        cmocka_unit_test(test_q8K_kernels),
        cmocka_unit_test(test_q8K_kernels_no_vnni),
        cmocka_unit_test(test_quantize_q8a),
        cmocka_unit_test(test_q8a_kernels),
        cmocka_unit_test(test_ggml_matvec),
        cmocka_unit_test(test_ggml_matmul),
        cmocka_unit_test(test_ggml_matvec_t),
        cmocka_unit_test(test_ggml_scalar_set),
        cmocka_unit_test(test_ggml_edges),
        cmocka_unit_test(test_ggml_parallel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
