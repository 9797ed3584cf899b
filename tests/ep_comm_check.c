/* ep_comm_check.c - the exchange layer (engine/ep/ep_comm.h) run by tests/cli_ep.sh, alone
 * (the single-process backend) and under mpirun (-np 2, 3) when built as ep_comm_check_mpi.
 *
 *   ep_comm_check MODE       prints "ep_comm_check MODE: rank R of N: ok ..." on success
 *
 * Modes
 *   bcast         rank 0's batch (37 tokens: token, pos, seq, want patterns) reaches every rank
 *                 exactly; then a 0-token batch
 *   bcast-big     rank 0 sends more tokens than the ranks reserved: every rank fails with the
 *                 same line and exits 2 (ep_comm_exit_all)
 *   allgatherv    rank r contributes 3r + 1 rows of 5 floats whose bits include NaN payloads,
 *                 -0, denormals and infinities; every rank compares all bytes with what each
 *                 rank sent (memcmp), in place and from a separate buffer
 *   moe           the EP MoE layer in miniature: T tokens, top-K of E experts, experts owned by
 *                 contiguous blocks; each rank computes the unweighted outputs of the (token,
 *                 choice) slots of its experts, allgathers them, and reduces in the one fixed
 *                 order; the result must be bit-identical to the same reduction done alone
 *   hash          every rank hashes config.json + the tensor table of tests/data/golden/tiny-bf16
 *                 (ep_hash_checkpoint): ep_check_same passes
 *   hash-mismatch the last rank opens mix-f32 instead: every rank ends with one line, exit 3
 *   early-exit    the last rank _exits(5) without a word right after init; the others wait
 *                 in an allgather: every rank must end (the launcher's SIGTERM, or the timeout)
 *   hang          the last rank sleeps 60 s; rank 0 times out (MOE_EP_TIMEOUT) and aborts all
 *   bench R W N   (a measurement, not a test) N allgathervs of R rows of W floats: us per call
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ep.h"
#include "json_util.h"

static ep_comm C;

static void die_all(int code, const moe_error *err) { ep_comm_exit_all(&C, code, err->msg); }
static void die(const moe_error *err) { ep_comm_abort(&C, 1, err->msg); }

static void ok(const char *mode, const char *extra) {
    printf("ep_comm_check %s: rank %d of %d: ok%s%s\n", mode, C.rank, C.size, extra ? " " : "", extra ? extra : "");
    fflush(stdout);
}

static void fill_batch(ep_batch *b, int n) {
    b->n = n;
    for (int i = 0; i < n; i++) {
        b->token[i] = 1000003 * i + 7;
        b->pos[i] = i % 11 + 100;
        b->seq[i] = i % 3;
        b->want[i] = (unsigned char)(i % 5 == 0);
    }
}

static int mode_bcast(int big) {
    moe_error err = {{0}};
    enum { CAP = 64 };
    int token[CAP], pos[CAP], seq[CAP];
    unsigned char want[CAP];
    ep_batch b = { 0, CAP, token, pos, seq, want };
    if (ep_comm_reserve(&C, big ? 16 : CAP, &err)) die(&err);
    for (int round = 0; round < 2; round++) {
        int n = round == 0 ? 37 : 0;
        memset(token, 0xff, sizeof token); memset(pos, 0xff, sizeof pos);
        memset(seq, 0xff, sizeof seq); memset(want, 0xff, sizeof want);
        if (C.rank == 0) fill_batch(&b, n);
        else b.n = -1;
        if (ep_bcast_batch(&C, &b, &err)) die_all(2, &err);
        int token2[CAP], pos2[CAP], seq2[CAP];
        unsigned char want2[CAP];
        ep_batch e = { 0, CAP, token2, pos2, seq2, want2 };
        fill_batch(&e, n);
        if (b.n != n || memcmp(token, token2, sizeof(int) * n) || memcmp(pos, pos2, sizeof(int) * n) ||
            memcmp(seq, seq2, sizeof(int) * n) || memcmp(want, want2, (size_t)n)) {
            moe_error bad;
            moe_error_set(&bad, "bcast: rank %d received a different batch (n %d, want %d)", C.rank, b.n, n);
            die(&bad);
        }
    }
    char extra[64];
    snprintf(extra, sizeof extra, "(37 + 0 tokens, %llu collectives)", (unsigned long long)C.n_collectives);
    ok(big ? "bcast-big" : "bcast", extra);
    return 0;
}

/* bits of value j of row i of rank r: awkward floats on purpose */
static uint32_t row_bits(int r, int i, int j) {
    static const uint32_t special[] = { 0x7fc00001u, 0xffc12345u, 0x80000000u, 0x00000001u, 0x7f800000u, 0xff800000u,
                                        0x007fffffu, 0x3f800000u };
    uint32_t x = (uint32_t)(r * 7919 + i * 131 + j * 17);
    return (x % 3 == 0) ? special[x % 8] : x * 2654435761u;
}

static int mode_allgatherv(void) {
    moe_error err = {{0}};
    const int W = 5;
    int rows_of[64], total = 0;
    for (int r = 0; r < C.size; r++) { rows_of[r] = 3 * r + 1; total += rows_of[r]; }
    float *all = malloc(sizeof(float) * (size_t)total * W), *want = malloc(sizeof(float) * (size_t)total * W);
    float *mine = malloc(sizeof(float) * (size_t)rows_of[C.rank] * W);
    size_t off = 0, my_off = 0;
    for (int r = 0; r < C.size; r++) {
        if (r == C.rank) my_off = off;
        for (int i = 0; i < rows_of[r]; i++)
            for (int j = 0; j < W; j++) {
                uint32_t u = row_bits(r, i, j);
                memcpy(&want[off + (size_t)i * W + j], &u, 4);
            }
        off += (size_t)rows_of[r] * W;
    }
    memcpy(mine, want + my_off, sizeof(float) * (size_t)rows_of[C.rank] * W);
    for (int pass = 0; pass < 2; pass++) {
        memset(all, 0xa5, sizeof(float) * (size_t)total * W);
        const float *src = mine;
        if (pass == 1) {   /* in place: my rows already where they belong */
            memcpy(all + my_off, mine, sizeof(float) * (size_t)rows_of[C.rank] * W);
            src = all + my_off;
        }
        if (ep_allgatherv_rows(&C, src, rows_of, W, all, pass ? "rows in place" : "rows", &err)) die(&err);
        if (memcmp(all, want, sizeof(float) * (size_t)total * W)) {
            moe_error bad;
            moe_error_set(&bad, "allgatherv: rank %d's rows differ from what the ranks sent (pass %d)", C.rank, pass);
            die(&bad);
        }
    }
    char extra[96];
    snprintf(extra, sizeof extra, "(%d rows x %d floats, exact bytes, %llu B in)", total, W,
             (unsigned long long)C.bytes_in);
    ok("allgatherv", extra);
    free(all); free(want); free(mine);
    return 0;
}

/* ---- the MoE layer in miniature: T tokens, each choosing K of E experts with weights */
enum { T = 23, K = 4, E = 16, H = 8 };

static void route(int t, int *ids, float *w) {
    for (int k = 0; k < K; k++) {
        ids[k] = (t * 5 + k * 3 + (t * k) % 7) % E;
        for (int j = 0; j < k; j++)
            if (ids[j] == ids[k]) { ids[k] = (ids[k] + 1) % E; j = -1; }   /* distinct */
        w[k] = 0.1f + 0.05f * (float)((t + k) % 9);
    }
}
/* expert e's output on token t (unweighted), H floats */
static void expert_out(int e, int t, float *y) {
    for (int h = 0; h < H; h++) y[h] = sinf(0.37f * (float)(e + 1) * (float)(h + 1) + 0.11f * (float)t) / (float)(e + 2);
}
static int owner(int e, int N) {   /* contiguous blocks [E*r/N, E*(r+1)/N) */
    for (int r = 0; r < N; r++)
        if (e < (E * (r + 1)) / N) return r;
    return N - 1;
}

static int mode_moe(void) {
    moe_error err = {{0}};
    static int ids[T][K];
    static float w[T][K], slots[T * K][H], mine[T * K][H], gathered[T * K][H], y_one[T][H], y_ep[T][H];
    for (int t = 0; t < T; t++) route(t, ids[t], w[t]);
    /* one process: every slot, then the fixed-order reduction (token by token, choice by choice) */
    for (int t = 0; t < T; t++)
        for (int k = 0; k < K; k++) expert_out(ids[t][k], t, slots[t * K + k]);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            float acc = 0;
            for (int k = 0; k < K; k++) acc += w[t][k] * slots[t * K + k][h];
            y_one[t][h] = acc;
        }
    /* EP: rank r computes the slots of its experts, in slot order; rows_of from the shared routing */
    int rows_of[64] = {0}, n_mine = 0;
    for (int s = 0; s < T * K; s++) rows_of[owner(ids[s / K][s % K], C.size)]++;
    for (int s = 0; s < T * K; s++)
        if (owner(ids[s / K][s % K], C.size) == C.rank) expert_out(ids[s / K][s % K], s / K, mine[n_mine++]);
    if (ep_allgatherv_rows(&C, &mine[0][0], rows_of, H, &gathered[0][0], "moe slots", &err)) die(&err);
    /* gathered is rank-major; every rank maps slot s back to its row: the same walk everywhere */
    int start[64], next[64];
    for (int r = 0, o = 0; r < C.size; r++) { start[r] = o; o += rows_of[r]; next[r] = 0; }
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) y_ep[t][h] = 0;
    static int row_of_slot[T * K];
    for (int s = 0; s < T * K; s++) {
        int r = owner(ids[s / K][s % K], C.size);
        row_of_slot[s] = start[r] + next[r]++;
    }
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            float acc = 0;
            for (int k = 0; k < K; k++) acc += w[t][k] * gathered[row_of_slot[t * K + k]][h];
            y_ep[t][h] = acc;
        }
    if (memcmp(y_ep, y_one, sizeof y_one)) {
        moe_error bad;
        moe_error_set(&bad, "moe: rank %d's reduction differs from one process's", C.rank);
        die(&bad);
    }
    uint64_t h = ep_hash(EP_HASH_INIT, y_ep, sizeof y_ep);
    if (ep_check_same(&C, h, "the MoE output", &err)) die_all(4, &err);
    char extra[96];
    snprintf(extra, sizeof extra, "(%d tokens x top-%d of %d experts: bit-identical to one process, %d slots here)", T,
             K, E, n_mine);
    ok("moe", extra);
    return 0;
}

static int mode_hash(int mismatch) {
    moe_error err = {{0}};
    /* the same checkpoint everywhere, or another one on the last rank */
    const char *dir = (mismatch && C.rank == C.size - 1 && C.size > 1) ? "tests/data/golden/mix-f32"
                                                                      : "tests/data/golden/tiny-bf16";
    char path[512], *cfg;
    size_t len;
    st_set st;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (file_read_all(path, 1 << 20, &cfg, &len, &err) || st_open_dir(&st, dir, &err)) die(&err);
    uint64_t h = ep_hash_checkpoint(cfg, len, &st, "f32");
    free(cfg);
    st_close(&st);
    if (ep_check_same(&C, h, "the config + tensor table hash", &err)) die_all(3, &err);
    ok(mismatch ? "hash-mismatch" : "hash", NULL);
    return 0;
}

static int mode_exit_or_hang(int hang) {
    moe_error err = {{0}};
    float mine[2] = {1, 2}, all[2 * 64];
    int rows_of[64];
    for (int r = 0; r < C.size; r++) rows_of[r] = 1;
    if (C.size > 1 && C.rank == C.size - 1) {
        if (!hang) _exit(5);          /* gone without a word (a crash, an OOM kill) */
        sleep(60);                    /* stuck */
    }
    /* an allgather: nobody can finish it without the last rank (a broadcast's root could) */
    if (ep_allgatherv_rows(&C, mine, rows_of, 2, all, "layer 3 expert outputs", &err)) die(&err);
    ok(hang ? "hang" : "early-exit", NULL);
    return 0;
}

/* bench ROWS WIDTH REPS: time of one allgatherv of ROWS rows of WIDTH floats split evenly over
 * the ranks (not a test: a measurement, printed by rank 0) */
static int mode_bench(int argc, char **argv) {
    moe_error err = {{0}};
    int rows = argc > 2 ? atoi(argv[2]) : 8, width = argc > 3 ? atoi(argv[3]) : 7168, reps = argc > 4 ? atoi(argv[4]) : 1000;
    if (rows < 1 || width < 1 || reps < 1 || C.size > 64) ep_comm_abort(&C, 2, "usage: ep_comm_check bench ROWS WIDTH REPS");
    int rows_of[64], before = 0;
    for (int r = 0; r < C.size; r++) {
        rows_of[r] = rows * (r + 1) / C.size - rows * r / C.size;
        if (r < C.rank) before += rows_of[r];
    }
    float *all = calloc((size_t)rows * width, sizeof(float));
    if (!all) ep_comm_abort(&C, 1, "out of memory");
    struct timespec t0, t1;
    if (ep_barrier(&C, &err)) die(&err);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < reps; i++)
        if (ep_allgatherv_rows(&C, all + (size_t)before * width, rows_of, width, all, "bench", &err)) die(&err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double us = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3 / reps;
    if (C.rank == 0)
        printf("ep_comm_check bench: %d ranks (%s): allgatherv of %d rows x %d floats (%zu B): %.1f us per call (%d calls)\n",
               C.size, C.ops->name, rows, width, (size_t)rows * width * 4, us, reps);
    free(all);
    return 0;
}

int main(int argc, char **argv) {
    moe_error err = {{0}};
    if (ep_comm_init(&C, EP_COMM_AUTO, &argc, &argv, &err)) { fprintf(stderr, "ep_comm_check: %s\n", err.msg); return 1; }
    if (C.size > 64) ep_comm_abort(&C, 1, "ep_comm_check runs on at most 64 ranks");
    const char *mode = argc > 1 ? argv[1] : "";
    int rc;
    if (!strcmp(mode, "bcast")) rc = mode_bcast(0);
    else if (!strcmp(mode, "bcast-big")) {
        /* rank 0 sends 37 tokens after everyone reserved 16 */
        rc = mode_bcast(1);
    } else if (!strcmp(mode, "allgatherv")) rc = mode_allgatherv();
    else if (!strcmp(mode, "moe")) rc = mode_moe();
    else if (!strcmp(mode, "hash")) rc = mode_hash(0);
    else if (!strcmp(mode, "hash-mismatch")) rc = mode_hash(1);
    else if (!strcmp(mode, "early-exit")) rc = mode_exit_or_hang(0);
    else if (!strcmp(mode, "hang")) rc = mode_exit_or_hang(1);
    else if (!strcmp(mode, "backend")) { printf("%s %d\n", C.ops->name, C.size); rc = 0; }
    else if (!strcmp(mode, "bench")) rc = mode_bench(argc, argv);
    else {
        fprintf(stderr, "usage: ep_comm_check bcast|bcast-big|allgatherv|moe|hash|hash-mismatch|early-exit|hang|backend\n");
        rc = 2;
    }
    ep_comm_free(&C);
    return rc;
}
