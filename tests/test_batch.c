/* test_batch.c - many sequences in one pass give what each gets alone.
 *
 * On every golden checkpoint, six sequences run through a schedule of batched passes that
 * mix prefill chunks (spans of 8+ tokens take the matrix-product attention path) with
 * single decode tokens of other sequences, at different positions; slot 3 is cleared and
 * reused by a sequence that starts from a prefix copied out of slot 0, slot 1 is cleared and
 * reused from scratch. After every main pass the MTP module runs over the same tokens.
 * Then each sequence is replayed alone, in a fresh one-slot session, with the same chunks
 * at the same positions: its main and MTP logits must agree to max|err| / max|logit| <= 1e-6
 * and its routing (expert set and gate weights of every MoE layer, MTP included) must be the
 * same wherever the alone run's routing margin exceeds 1e-5.
 * The same again with a bf16 cache (--kv-dtype bf16) on two checkpoints: batching does not
 * change what the rounded cache gives either.
 * And with low-precision activations (--act-lowp: bf16 x bf16 on tiny-bf16, int8 x q8 on
 * mix-f32 and v2lite-f32 converted to q8): every product of a token gives the same bits alone or
 * in a batch, so each sequence again equals its alone run.
 * A second test runs malformed batches: every one is refused with one clear line.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "session.h"

#define GOLDEN "tests/data/golden/"
#define TOL 1e-6
/* --dtype q8 on AVX-512 (check_q8): see there */
#define Q8_TOL 3e-4
static double g_tol = TOL;   /* the logit bound of check_checkpoint */
#define N_SEQ 6
#define MAX_LEN 40
#define MAX_LAYERS 8
#define MAX_K 8

static kv_dtype g_kv_dtype = KV_F32;   /* the cache type of every session (the *_kvbf16 tests set it) */
static weights_dtype g_dtype = WEIGHTS_AUTO;   /* the weight format (the *_lowp tests set q8) */

/* ------------------------------------------------------------------ sequences and the schedule */

/* Logical sequence s lives on slot SLOT[s]; s4 starts from s0's first PREFIX tokens. */
static const int SLOT[N_SEQ] = {0, 1, 2, 3, 3, 1};
#define PREFIX 10

typedef struct { int seq, n; } chunk;   /* n tokens of sequence seq, from where it stands */
/* one pass per row, up to 5 chunks, n = 0 ends a row; a row with seq < 0 is a slot event */
static const chunk PLAN[][5] = {
    {{0, 13}, {1, 5}},                       /* s0 prefill (a matrix-product span), s1 a short chunk */
    {{0, 1}, {1, 4}, {2, 8}, {3, 1}},        /* decode s0, prefill s1, s2 (span), s3 */
    {{0, 1}, {1, 1}, {2, 12}, {3, 3}},
    {{3, 1}, {2, 1}, {1, 1}, {0, 1}},        /* order in the batch is free */
    {{-1, 4}},                               /* event: slot 3 <- s0's first PREFIX positions, s4 on it */
    {{4, 8}, {0, 1}, {2, 1}},                /* s4 continues at position PREFIX */
    {{-1, 5}},                               /* event: slot 1 cleared, s5 on it */
    {{5, 6}, {4, 1}, {0, 1}, {2, 1}, {3, 0}},
    {{5, 1}, {4, 1}, {0, 1}},
};
#define N_PLAN (int)(sizeof PLAN / sizeof PLAN[0])

static int token_of(int s, int p, int V) {
    if (s == 4 && p < PREFIX) s = 0;        /* s4's prefix is s0's */
    return (int)(((unsigned)(s * 7919 + p * 104729 + 13) * 2654435761u >> 7) % (unsigned)V);
}

/* What one run records per logical sequence, by position. */
typedef struct {
    int V, K, n_layers, has_mtp;
    float *logits[N_SEQ], *mtp[N_SEQ];                 /* [MAX_LEN, V] */
    int ids[N_SEQ][MAX_LAYERS][MAX_LEN][MAX_K];
    float w[N_SEQ][MAX_LAYERS][MAX_LEN][MAX_K];
    float margin[N_SEQ][MAX_LAYERS][MAX_LEN];
    unsigned char seen[N_SEQ][MAX_LAYERS][MAX_LEN];
    int slot_seq[4];                                   /* which logical sequence a slot holds now */
    int fixed_seq;                                     /* alone runs: the one sequence (-1: by slot) */
} recording;

static void on_route(void *ctx, int layer, int slot, int pos, const route_decision *d) {
    recording *r = ctx;
    int s = r->fixed_seq >= 0 ? r->fixed_seq : r->slot_seq[slot];
    assert_true(layer < MAX_LAYERS && pos < MAX_LEN && d->k == r->K);
    memcpy(r->ids[s][layer][pos], d->ids, sizeof(int) * (size_t)d->k);
    memcpy(r->w[s][layer][pos], d->weights, sizeof(float) * (size_t)d->k);
    r->margin[s][layer][pos] = d->margin;
    r->seen[s][layer][pos] = 1;
}

static void recording_init(recording *r, const moe_session *e) {
    memset(r, 0, sizeof *r);
    r->V = e->m.cfg.vocab_size;
    r->K = e->m.K;
    r->n_layers = e->m.w.n_layers;
    r->has_mtp = e->m.cfg.num_nextn_predict_layers > 0;
    r->fixed_seq = -1;
    assert_true(r->n_layers <= MAX_LAYERS && r->K <= MAX_K);
    for (int s = 0; s < N_SEQ; s++) {
        r->logits[s] = calloc((size_t)MAX_LEN * r->V, sizeof(float));
        r->mtp[s] = calloc((size_t)MAX_LEN * r->V, sizeof(float));
    }
}

static void recording_free(recording *r) {
    for (int s = 0; s < N_SEQ; s++) { free(r->logits[s]); free(r->mtp[s]); }
}

static void open_session(moe_session *e, const char *name, int n_slots) {
    char dir[256];
    snprintf(dir, sizeof dir, GOLDEN "%s", name);
    model_options opt = { .max_seq = MAX_LEN, .batch_max = 64, .kv_dtype = g_kv_dtype, .dtype = g_dtype };
    moe_error err = {{0}};
    if (session_open(e, dir, &opt, n_slots, &err)) fail_msg("load %s: %s", dir, err.msg);
}

/* Runs the batch's main pass and the MTP pass over the same tokens, and files the logits
 * of every token under its logical sequence and position. */
static void run_pass(moe_session *e, const moe_batch *b, const int *logical, recording *r) {
    moe_error err = {{0}};
    int V = r->V, H = e->m.cfg.hidden_size, n = b->n;
    float *logits = malloc(sizeof(float) * (size_t)n * V), *hidden = malloc(sizeof(float) * (size_t)n * H);
    if (model_forward(&e->m, &e->c, &e->kv, b, logits, hidden, &err)) fail_msg("batch: %s", err.msg);
    for (int i = 0; i < n; i++) memcpy(r->logits[logical[i]] + (size_t)b->pos[i] * V, logits + (size_t)i * V, sizeof(float) * V);
    if (r->has_mtp) {
        moe_batch mb;
        assert_int_equal(batch_init(&mb, n, &err), 0);
        for (int i = 0; i < n; i++) batch_add(&mb, token_of(logical[i], b->pos[i] + 1, V), b->pos[i], b->seq[i], 1);
        if (model_forward_mtp(&e->m, &e->c, &e->kv, 0, &mb, hidden, logits, NULL, &err)) fail_msg("MTP batch: %s", err.msg);
        for (int i = 0; i < n; i++) memcpy(r->mtp[logical[i]] + (size_t)b->pos[i] * V, logits + (size_t)i * V, sizeof(float) * V);
        batch_free(&mb);
    }
    free(logits);
    free(hidden);
}

/* ------------------------------------------------------------------ the batched run */

static void run_batched(const char *name, recording *r, int fed_out[N_SEQ]) {
    moe_session e;
    open_session(&e, name, 4);
    recording_init(r, &e);
    e.c.on_route = on_route;
    e.c.on_route_ctx = r;
    int fed[N_SEQ] = {0};
    moe_error err = {{0}};
    moe_batch b;
    assert_int_equal(batch_init(&b, 64, &err), 0);
    for (int s = 0; s < 4; s++) r->slot_seq[s] = s;
    for (int p = 0; p < N_PLAN; p++) {
        if (PLAN[p][0].seq < 0) {   /* slot events */
            int s = PLAN[p][0].n;
            if (s == 4) {
                kv_clear(&e.kv, SLOT[4]);
                assert_int_equal(e.kv.len[SLOT[4]], 0);
                kv_copy_prefix(&e.kv, SLOT[4], SLOT[0], PREFIX);
                assert_int_equal(e.kv.len[SLOT[4]], PREFIX);
                assert_int_equal(e.kv.mtp_len[SLOT[4]], r->has_mtp ? PREFIX : 0);
                fed[4] = PREFIX;
            } else {
                kv_clear(&e.kv, SLOT[s]);
                fed[s] = 0;
            }
            r->slot_seq[SLOT[s]] = s;
            continue;
        }
        batch_clear(&b);
        int logical[64];
        for (int c = 0; c < 5 && PLAN[p][c].n > 0; c++) {
            int s = PLAN[p][c].seq;
            for (int t = 0; t < PLAN[p][c].n; t++) {
                logical[b.n] = s;
                batch_add(&b, token_of(s, fed[s], r->V), fed[s], SLOT[s], 1);
                fed[s]++;
            }
        }
        run_pass(&e, &b, logical, r);
        for (int c = 0; c < 5 && PLAN[p][c].n > 0; c++)
            assert_int_equal(e.kv.len[SLOT[PLAN[p][c].seq]], fed[PLAN[p][c].seq]);
    }
    memcpy(fed_out, fed, sizeof fed);
    batch_free(&b);
    session_close(&e);
}

/* ------------------------------------------------------------------ the same sequence alone */

/* Replays sequence s's chunks, in the plan's order and sizes, in a one-slot session. */
static void run_alone(const char *name, int s, recording *r) {
    moe_session e;
    open_session(&e, name, 1);
    e.c.on_route = on_route;
    e.c.on_route_ctx = r;
    r->fixed_seq = s;
    moe_error err = {{0}};
    moe_batch b;
    assert_int_equal(batch_init(&b, 64, &err), 0);
    int fed = 0, logical[64];
    if (s == 4) {   /* s0's first chunk (it computed the copied prefix), then keep PREFIX positions */
        r->fixed_seq = 0;
        batch_clear(&b);
        for (int t = 0; t < PLAN[0][0].n; t++) { logical[b.n] = 0; batch_add(&b, token_of(0, t, r->V), t, 0, 1); }
        run_pass(&e, &b, logical, r);   /* filed under s0: not compared */
        kv_keep(&e.kv, 0, PREFIX);
        fed = PREFIX;
        r->fixed_seq = 4;
    }
    for (int p = 0; p < N_PLAN; p++) {
        if (PLAN[p][0].seq < 0) continue;
        for (int c = 0; c < 5 && PLAN[p][c].n > 0; c++) {
            if (PLAN[p][c].seq != s) continue;
            batch_clear(&b);
            for (int t = 0; t < PLAN[p][c].n; t++) {
                logical[b.n] = s;
                batch_add(&b, token_of(s, fed, r->V), fed, 0, 1);
                fed++;
            }
            run_pass(&e, &b, logical, r);
        }
    }
    batch_free(&b);
    session_close(&e);
}

/* ------------------------------------------------------------------ comparison */

static double rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)a[i] - b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return den > 0 ? num / den : num;
}

static int sorted_equal(const int *a, const int *b, int k) {
    int x[MAX_K], y[MAX_K];
    memcpy(x, a, sizeof(int) * (size_t)k);
    memcpy(y, b, sizeof(int) * (size_t)k);
    for (int i = 1; i < k; i++)
        for (int j = i; j > 0 && x[j] < x[j - 1]; j--) { int t = x[j]; x[j] = x[j - 1]; x[j - 1] = t; }
    for (int i = 1; i < k; i++)
        for (int j = i; j > 0 && y[j] < y[j - 1]; j--) { int t = y[j]; y[j] = y[j - 1]; y[j - 1] = t; }
    return !memcmp(x, y, sizeof(int) * (size_t)k);
}

static void check_checkpoint(const char *name) {
    recording *bat = malloc(sizeof *bat), *one = malloc(sizeof *one);
    int fed[N_SEQ];
    run_batched(name, bat, fed);
    double worst = 0;
    for (int s = 0; s < N_SEQ; s++) {
        moe_session probe;
        open_session(&probe, name, 1);
        recording_init(one, &probe);
        session_close(&probe);
        run_alone(name, s, one);
        int p0 = s == 4 ? PREFIX : 0, n = fed[s] - p0, V = bat->V;
        assert_true(n > 0);
        double e = rel_err(bat->logits[s] + (size_t)p0 * V, one->logits[s] + (size_t)p0 * V, (size_t)n * V);
        if (e > g_tol) fail_msg("%s: sequence %d: batched logits differ from alone by %.3e (max %.0e)", name, s, e, g_tol);
        worst = fmax(worst, e);
        if (bat->has_mtp) {
            e = rel_err(bat->mtp[s] + (size_t)p0 * V, one->mtp[s] + (size_t)p0 * V, (size_t)n * V);
            if (e > g_tol) fail_msg("%s: sequence %d: batched MTP logits differ from alone by %.3e (max %.0e)", name, s, e, g_tol);
            worst = fmax(worst, e);
        }
        int routed = 0;
        for (int l = 0; l < bat->n_layers; l++)
            for (int p = p0; p < fed[s]; p++) {
                if (!one->seen[s][l][p]) continue;
                if (!bat->seen[s][l][p]) fail_msg("%s: sequence %d layer %d position %d: no routing when batched", name, s, l, p);
                routed++;
                if (one->margin[s][l][p] <= 1e-5f) continue;   /* a near tie may flip */
                if (!sorted_equal(bat->ids[s][l][p], one->ids[s][l][p], bat->K))
                    fail_msg("%s: sequence %d layer %d position %d: experts differ when batched", name, s, l, p);
                for (int j = 0; j < bat->K; j++)
                    if (bat->ids[s][l][p][j] == one->ids[s][l][p][j] &&
                        fabsf(bat->w[s][l][p][j] - one->w[s][l][p][j]) > (g_tol > 1e-5 ? (float)g_tol : 1e-5f) * (1 + fabsf(one->w[s][l][p][j])))
                        fail_msg("%s: sequence %d layer %d position %d: gate weight differs", name, s, l, p);
            }
        if (bat->K > 0) assert_true(routed > 0);   /* the comparison compared something */
        recording_free(one);
    }
    print_message("%s: %d sequences, worst batched-vs-alone logit difference %.2e\n", name, N_SEQ, worst);
    recording_free(bat);
    free(bat);
    free(one);
}

static void test_batch_tiny_bf16(void **state) { (void)state; check_checkpoint("tiny-bf16"); }
static void check_kvbf16(const char *name) {
    g_kv_dtype = KV_BF16;
    check_checkpoint(name);
    g_kv_dtype = KV_F32;
}
static void check_lowp(const char *name, weights_dtype dt) {
    cpu_set_low_precision(1);
    g_dtype = dt;
    check_checkpoint(name);
    g_dtype = WEIGHTS_AUTO;
    cpu_set_low_precision(0);
}
/* --dtype q8 with f32 activations: on AVX-512 the Q8 projections are in 16-row panels, whose
 * kernels give every token of a batch the bits it gets alone (matvec_q8p_avx512.c; test_kernels
 * test_q8p checks that product by product). The BF16 tables (router; here also q_b, whose 24
 * columns are no Q8 row, and the tied head) are not bit-identical batched (the f32 tile sums in
 * another order: ~1e-7), and a downstream product rounds x to int16 per block, where such a
 * difference can move one value by a step (<= max|x_block| / 32767): so the bound here is
 * Q8_TOL, the int16 rounding's (test_gguf_quant's Q8X16_TOL), not 1e-6 (measured 4e-5 .. 9e-5).
 * Run where the panels are (elsewhere q8's matvec and matmul differ by that rounding anyway). */
static void check_q8(const char *name) {
    if (!q8p_preferred()) { print_message("%s q8: no AVX-512 panels on this CPU, skipped\n", name); return; }
    g_dtype = WEIGHTS_Q8;
    g_tol = Q8_TOL;
    check_checkpoint(name);
    g_tol = TOL;
    g_dtype = WEIGHTS_AUTO;
}
static void test_batch_mix_f32_q8(void **state) { (void)state; check_q8("mix-f32"); }
static void test_batch_v2lite_q8(void **state) { (void)state; check_q8("v2lite-f32"); }
static void test_batch_tiny_bf16_lowp(void **state) { (void)state; check_lowp("tiny-bf16", WEIGHTS_AUTO); }
static void test_batch_mix_f32_q8_lowp(void **state) { (void)state; check_lowp("mix-f32", WEIGHTS_Q8); }
static void test_batch_v2lite_q8_lowp(void **state) { (void)state; check_lowp("v2lite-f32", WEIGHTS_Q8); }
static void test_batch_mix_f32_kvbf16(void **state) { (void)state; check_kvbf16("mix-f32"); }
static void test_batch_tiny_yarn_fp8_kvbf16(void **state) { (void)state; check_kvbf16("tiny-yarn-fp8"); }
static void test_batch_tiny_yarn_fp8(void **state) { (void)state; check_checkpoint("tiny-yarn-fp8"); }
static void test_batch_mix_f32(void **state) { (void)state; check_checkpoint("mix-f32"); }
static void test_batch_v2lite_f32(void **state) { (void)state; check_checkpoint("v2lite-f32"); }
static void test_batch_v2lite_f16_shard(void **state) { (void)state; check_checkpoint("v2lite-f16-shard"); }

/* ------------------------------------------------------------------ malformed batches */

static void expect_refused(moe_session *e, const moe_batch *b, const char *what) {
    moe_error err = {{0}};
    int V = e->m.cfg.vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)b->n * V);
    int len0 = e->kv.len[0], len1 = e->kv.len[1];
    if (model_forward(&e->m, &e->c, &e->kv, b, logits, NULL, &err) == MOE_OK) fail_msg("accepted a batch with %s", what);
    if (!strstr(err.msg, what)) fail_msg("error \"%s\" does not say \"%s\"", err.msg, what);
    assert_null(strchr(err.msg, '\n'));
    assert_int_equal(e->kv.len[0], len0);   /* nothing was run */
    assert_int_equal(e->kv.len[1], len1);
    free(logits);
}

static void test_bad_batches(void **state) {
    (void)state;
    moe_session e;
    open_session(&e, "tiny-bf16", 2);
    moe_error err = {{0}};
    moe_batch b;
    assert_int_equal(batch_init(&b, 8, &err), 0);
    int V = e.m.cfg.vocab_size;
    batch_add(&b, 1, 0, 0, 1); batch_add(&b, 2, 1, 0, 1); batch_add(&b, 3, 0, 1, 1);
    float *logits = malloc(sizeof(float) * 3 * (size_t)V);
    assert_int_equal(model_forward(&e.m, &e.c, &e.kv, &b, logits, NULL, &err), MOE_OK);   /* the control */
    assert_int_equal(e.kv.len[0], 2);
    assert_int_equal(e.kv.len[1], 1);
    batch_clear(&b); batch_add(&b, 1, 2, 0, 1); batch_add(&b, 1, 4, 0, 1);
    expect_refused(&e, &b, "not right after its previous token");
    batch_clear(&b); batch_add(&b, 1, 5, 1, 1);
    expect_refused(&e, &b, "the slot holds only 1 positions");
    batch_clear(&b); batch_add(&b, 1, 0, 2, 1);
    expect_refused(&e, &b, "the cache has 2 slots");
    batch_clear(&b); batch_add(&b, V, 2, 0, 1);
    expect_refused(&e, &b, "outside the vocabulary");
    batch_clear(&b); batch_add(&b, 1, MAX_LEN, 0, 1);
    expect_refused(&e, &b, "does not fit the context");
    batch_clear(&b);
    expect_refused(&e, &b, "no tokens");
    /* rewriting from an earlier position drops what the slot held after it */
    batch_clear(&b); batch_add(&b, 4, 1, 0, 1);
    assert_int_equal(model_forward(&e.m, &e.c, &e.kv, &b, logits, NULL, &err), MOE_OK);
    assert_int_equal(e.kv.len[0], 2);
    /* a full batch refuses one more token */
    batch_clear(&b);
    for (int i = 0; i < 8; i++) assert_int_equal(batch_add(&b, 1, i, 0, 0), i);
    assert_int_equal(batch_add(&b, 1, 8, 0, 0), -1);
    free(logits);
    batch_free(&b);
    session_close(&e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_tiny_bf16),
        cmocka_unit_test(test_batch_tiny_yarn_fp8),
        cmocka_unit_test(test_batch_mix_f32),
        cmocka_unit_test(test_batch_v2lite_f32),
        cmocka_unit_test(test_batch_v2lite_f16_shard),
        cmocka_unit_test(test_batch_mix_f32_kvbf16),
        cmocka_unit_test(test_batch_tiny_yarn_fp8_kvbf16),
        cmocka_unit_test(test_batch_tiny_bf16_lowp),
        cmocka_unit_test(test_batch_mix_f32_q8_lowp),
        cmocka_unit_test(test_batch_mix_f32_q8),
        cmocka_unit_test(test_batch_v2lite_q8),
        cmocka_unit_test(test_batch_v2lite_q8_lowp),
        cmocka_unit_test(test_bad_batches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
