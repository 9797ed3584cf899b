/* test_ep.c - expert-parallel helpers (engine/ep/ep.h) and the single-process exchange layer:
 *   - the replica split: the holders' shares tile an expert's slots (each slot exactly once),
 *     the active shares' sizes differ by at most one and are >= 2 (no one-token share of a
 *     busier expert), the rotation moves them between holders, ep_holder_of_slot inverts
 *     ep_share_range; ep_holders / ep_slot_rank follow a plan;
 *   - ep_hash_checkpoint: the same on two opens of a golden checkpoint, different when the
 *     config text, a tensor's shape, its dtype or the extra string changes;
 *   - ep_comm single backend: size 1, reserve, batch broadcast, allgatherv copy (exact bytes,
 *     in place too), ep_check_same, an oversize batch is an error, asking for MPI when it is
 *     not linked is an error that says how to build it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ep.h"
#include "json_util.h"
#include "kernels.h"

static void test_copy_split(void **state) {
    (void)state;
    for (int n = 0; n <= 40; n++)
        for (int h = 1; h <= 7; h++)
            for (int rot = 0; rot < 9; rot++) {
                int a = n < 2 ? 1 : (h < n / 2 ? h : n / 2), used = 0, covered[41] = {0};
                for (int j = 0; j < h; j++) {
                    int lo, hi, k = ((j - rot) % h + h) % h;
                    ep_share_range(n, h, rot, j, &lo, &hi);
                    assert_true(lo >= 0 && lo <= hi && hi <= n);
                    if (k < a) {   /* share k: [n*k/a, n*(k+1)/a), sizes differ by at most one */
                        assert_int_equal(lo, n * k / a);
                        assert_int_equal(hi, n * (k + 1) / a);
                        assert_true(hi - lo == n / a || hi - lo == n / a + 1);
                    } else assert_int_equal(hi - lo, 0);
                    if (n >= 2 && hi > lo) assert_true(hi - lo >= 2);   /* never one token of a busier expert */
                    used += hi > lo;
                    for (int i = lo; i < hi; i++) {
                        covered[i]++;
                        assert_int_equal(ep_holder_of_slot(n, h, rot, i), j);
                    }
                }
                for (int i = 0; i < n; i++) assert_int_equal(covered[i], 1);   /* exactly one holder a slot */
                assert_int_equal(used, n ? a : 0);
            }
    /* the rotation moves a one-token expert between its holders from one position to the next */
    int seen[3] = {0};
    for (int pos = 0; pos < 6; pos++) seen[ep_holder_of_slot(1, 3, ep_rotation(pos, 5), 0)]++;
    assert_true(seen[0] == 2 && seen[1] == 2 && seen[2] == 2);
    /* a plan: expert 0 has 3 copies (on ranks 0 and 1), expert 1 one copy */
    int64_t w[2] = {90, 10};
    eplb_counts cts = {1, 2, (int[]){1}, w};
    eplb_plan p;
    moe_error err = {{0}};
    assert_int_equal(eplb_rebalance(&p, &cts, 2, 2, 1, 1, &err), MOE_OK);
    assert_int_equal(p.copies[0] + p.copies[1], 4);
    int ranks[2], h = ep_holders(&p, 0, 0, ranks);
    assert_int_equal(h, 2);
    assert_true(ranks[0] == 0 && ranks[1] == 1);
    for (int rot = 0; rot < 3; rot++) {
        int on[2] = {0};
        for (int i = 0; i < 9; i++) {
            int r = ep_slot_rank(&p, 0, 0, 9, rot, i);
            assert_int_equal(r, ranks[ep_holder_of_slot(9, 2, rot, i)]);
            on[r]++;
        }
        assert_true(on[0] >= 4 && on[1] >= 4);   /* 9 slots: 4 + 5 */
    }
    assert_int_equal(ep_holders(&p, 0, 1, ranks), 1);
    eplb_plan_free(&p);
}

static void test_checkpoint_hash(void **state) {
    (void)state;
    const char *dir = "tests/data/golden/tiny-bf16";
    st_set a, b;
    moe_error err = {{0}};
    if (st_open_dir(&a, dir, &err)) fail_msg("%s", err.msg);
    if (st_open_dir(&b, dir, &err)) fail_msg("%s", err.msg);
    char *cfg;
    size_t len;
    if (file_read_all("tests/data/golden/tiny-bf16/config.json", 1 << 20, &cfg, &len, &err)) fail_msg("%s", err.msg);
    uint64_t h = ep_hash_checkpoint(cfg, len, &a, "avx512 f32");
    assert_true(h == ep_hash_checkpoint(cfg, len, &b, "avx512 f32"));       /* deterministic */
    assert_true(h != ep_hash_checkpoint(cfg, len - 1, &a, "avx512 f32"));   /* config text */
    assert_true(h != ep_hash_checkpoint(cfg, len, &a, "avx2 f32"));         /* kernels */
    assert_true(h != ep_hash_checkpoint(cfg, len, NULL, "avx512 f32"));     /* no tensors */
    assert_true(b.n_tensors > 1);
    b.tensors[1].shape[0] += 1;                                             /* one shape */
    assert_true(h != ep_hash_checkpoint(cfg, len, &b, "avx512 f32"));
    b.tensors[1].shape[0] -= 1;
    b.tensors[0].dtype = b.tensors[0].dtype == ST_F32 ? ST_BF16 : ST_F32;   /* one dtype */
    assert_true(h != ep_hash_checkpoint(cfg, len, &b, "avx512 f32"));
    free(cfg);
    st_close(&a);
    st_close(&b);
    int ids[4] = {1, 2, 3, 4}, ids2[4] = {1, 2, 4, 3};
    float wt[4] = {0.25f, 0.25f, 0.25f, 0.25f};
    assert_true(ep_hash_route(EP_HASH_INIT, 1, ids, wt, 4) != ep_hash_route(EP_HASH_INIT, 1, ids2, wt, 4));
    assert_true(ep_hash_route(EP_HASH_INIT, 1, ids, wt, 4) != ep_hash_route(EP_HASH_INIT, 2, ids, wt, 4));
}

static void test_single_comm(void **state) {
    (void)state;
    ep_comm c;
    moe_error err = {{0}};
    if (!ep_comm_have_mpi()) {
        assert_int_equal(ep_comm_init(&c, EP_COMM_MPI, NULL, NULL, &err), MOE_FAIL);
        assert_non_null(strstr(err.msg, "make MPI=1"));
    }
    assert_int_equal(ep_comm_init(&c, EP_COMM_SINGLE, NULL, NULL, &err), MOE_OK);
    assert_int_equal(c.rank, 0);
    assert_int_equal(c.size, 1);
    assert_string_equal(c.ops->name, "single");
    assert_int_equal(ep_barrier(&c, &err), MOE_OK);
    assert_int_equal(ep_comm_reserve(&c, 8, &err), MOE_OK);
    assert_int_equal(c.batch_max, 8);
    int tok[8] = {5, 6, 7}, pos[8] = {0, 1, 2}, seq[8] = {0, 0, 1};
    unsigned char want[8] = {0, 1, 1};
    ep_batch b = {3, 8, tok, pos, seq, want};
    assert_int_equal(ep_bcast_batch(&c, &b, &err), MOE_OK);
    assert_int_equal(b.n, 3);
    assert_int_equal(tok[2], 7);
    ep_batch big = {9, 16, (int[16]){0}, (int[16]){0}, (int[16]){0}, (unsigned char[16]){0}};
    assert_int_equal(ep_bcast_batch(&c, &big, &err), MOE_FAIL);
    assert_non_null(strstr(err.msg, "rank 0's batch has 9 tokens, outside [0, 8]"));
    float rows[6] = {1, -0.0f, 3, 4, 5, 6}, all[6];
    uint32_t nan = 0x7fc00123u;
    memcpy(&rows[5], &nan, 4);
    int rows_of[1] = {3};
    assert_int_equal(ep_allgatherv_rows(&c, rows, rows_of, 2, all, "rows", &err), MOE_OK);
    assert_memory_equal(all, rows, sizeof rows);
    assert_int_equal(ep_allgatherv_rows(&c, all, rows_of, 2, all, "rows in place", &err), MOE_OK);
    assert_memory_equal(all, rows, sizeof rows);
    int neg[1] = {-1};
    assert_int_equal(ep_allgatherv_rows(&c, rows, neg, 2, all, "layer 7 rows", &err), MOE_FAIL);
    assert_non_null(strstr(err.msg, "layer 7 rows: rank 0 contributes -1 rows"));
    assert_int_equal(ep_check_same(&c, 42, "hash", &err), MOE_OK);
    ep_comm_free(&c);
    ep_comm_free(&c);   /* a freed (zeroed) one: no-op */
}

/* What the replica split relies on (ep.h): a token's row of matmul_rows does not depend on the
 * other tokens of the batch (any n >= 2), for every weight type. (One token runs matvec_rows,
 * whose bf16 and q8 rows differ from matmul's: that is why no copy gets a one-token share.) */
static void test_kernel_rows_batch_independent(void **state) {
    (void)state;
    enum { ROWS = 50, COLS = 256, N = 14 };   /* 50: row blocks of 4 and single rows */
    float *wf = malloc(sizeof(float) * ROWS * COLS), *X = malloc(sizeof(float) * N * COLS);
    uint16_t *wb = malloc(2 * ROWS * COLS);
    block_q8 *wq = malloc(sizeof(block_q8) * ROWS * COLS / QK8);
    float *full = malloc(sizeof(float) * N * ROWS), *part = malloc(sizeof(float) * N * ROWS);
    uint32_t r = 12345;
    for (int i = 0; i < ROWS * COLS; i++) { r = r * 1664525u + 1013904223u; wf[i] = (float)(r >> 8) / 16777216.0f - 0.5f; }
    for (int i = 0; i < N * COLS; i++) { r = r * 1664525u + 1013904223u; X[i] = (float)(r >> 8) / 16777216.0f - 0.5f; }
    mat_type_of(MAT_BF16)->from_f32(wf, wb, ROWS * COLS);
    for (int i = 0; i < ROWS; i++)
        mat_type_of(MAT_Q8)->from_f32(wf + (size_t)i * COLS, wq + (size_t)i * (COLS / QK8), COLS);
    const mat W[3] = {{MAT_F32, ROWS, COLS, wf}, {MAT_BF16, ROWS, COLS, wb}, {MAT_Q8, ROWS, COLS, wq}};
    for (int d = 0; d < 3; d++) {
        matmul_rows(&W[d], X, N, full, ROWS, 0, ROWS);
        for (int n = 2; n < N; n++)
            for (int t0 = 0; t0 + n <= N; t0++) {
                matmul_rows(&W[d], X + (size_t)t0 * COLS, n, part, ROWS, 0, ROWS);
                assert_memory_equal(part, full + (size_t)t0 * ROWS, sizeof(float) * (size_t)n * ROWS);
            }
    }
    free(wf); free(X); free(wb); free(wq); free(full); free(part);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copy_split),
        cmocka_unit_test(test_checkpoint_hash),
        cmocka_unit_test(test_single_comm),
        cmocka_unit_test(test_kernel_rows_batch_independent),
    };
    return cmocka_run_group_tests_name("ep", tests, NULL, NULL);
}
