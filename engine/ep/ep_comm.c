/* ep_comm.c - the backend-independent part of the exchange layer and the single-process
 * backend (see ep_comm.h). The MPI backend (ep_comm_mpi.c) is found through a weak symbol. */
#include "ep_comm.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* defined in ep_comm_mpi.c when a program links it (never inside libmoe.a) */
extern const ep_comm_ops ep_comm_mpi_ops __attribute__((weak));

int ep_comm_have_mpi(void) { return &ep_comm_mpi_ops != NULL; }

/* ------------------------------------------------------------------ single process */

static int single_init(ep_comm *c, int *argc, char ***argv, moe_error *err) {
    c->rank = 0;
    c->size = 1;
    return MOE_OK;
}
static void single_finalize(ep_comm *c) {}
static int single_barrier(ep_comm *c, const char *what, moe_error *err) { return MOE_OK; }
static int single_bcast(ep_comm *c, void *buf, size_t bytes, const char *what, moe_error *err) { return MOE_OK; }
static int single_allgatherv(ep_comm *c, const void *send, void *recv, const size_t *bytes_of, const size_t *displ,
                             const char *what, moe_error *err) {
    if (bytes_of[0] && (char *)recv + displ[0] != send) memmove((char *)recv + displ[0], send, bytes_of[0]);
    return MOE_OK;
}
static void single_abort(ep_comm *c, int code) { _exit(code); }

static const ep_comm_ops single_ops = {
    "single", single_init, single_finalize, single_barrier, single_bcast, single_allgatherv, single_abort,
};

/* ------------------------------------------------------------------ setup */

static int launched_by_mpi(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_SIZE") || getenv("PMI_RANK");
}

int ep_comm_init(ep_comm *c, ep_comm_kind kind, int *argc, char ***argv, moe_error *err) {
    memset(c, 0, sizeof *c);
    c->timeout_s = 300;
    const char *t = getenv("MOE_EP_TIMEOUT");
    if (t && *t) {
        char *end;
        double v = strtod(t, &end);
        if (*end || v < 0 || v > 1e7)
            return moe_error_set(err, "MOE_EP_TIMEOUT=%s: want seconds in [0, 1e7] (0 = wait forever)", t);
        c->timeout_s = v;
    }
    if (kind == EP_COMM_MPI && !ep_comm_have_mpi())
        return moe_error_set(err, "expert parallelism over MPI was asked for, but this program was built without it "
                                  "(build with `make MPI=1`, Open MPI: apt-get install libopenmpi-dev openmpi-bin)");
    c->ops = (kind == EP_COMM_MPI || (kind == EP_COMM_AUTO && ep_comm_have_mpi() && launched_by_mpi())) ? &ep_comm_mpi_ops
                                                                                                        : &single_ops;
    if (c->ops->init(c, argc, argv, err)) { c->ops = NULL; return MOE_FAIL; }
    c->bytes_of = calloc((size_t)c->size, sizeof(size_t));
    c->displ = calloc((size_t)c->size, sizeof(size_t));
    c->hashes = calloc((size_t)c->size, sizeof(uint64_t));
    if (!c->bytes_of || !c->displ || !c->hashes) {
        ep_comm_free(c);
        return moe_error_set(err, "ep: out of memory for %d ranks", c->size);
    }
    return MOE_OK;
}

void ep_comm_free(ep_comm *c) {
    if (c->ops) c->ops->finalize(c);
    free(c->bytes_of);
    free(c->displ);
    free(c->hashes);
    free(c->pack);
    memset(c, 0, sizeof *c);
}

/* the packed batch: n, then token[n], pos[n], seq[n] (ints) and want[n] (bytes) */
static size_t batch_bytes(int n) { return sizeof(int) + (size_t)n * (3 * sizeof(int) + 1); }

int ep_comm_reserve(ep_comm *c, int max_tokens, moe_error *err) {
    if (max_tokens < 0 || max_tokens > (1 << 24)) return moe_error_set(err, "ep: a batch of %d tokens", max_tokens);
    size_t need = batch_bytes(max_tokens);
    if (need > c->pack_cap) {
        unsigned char *p = realloc(c->pack, need);
        if (!p) return moe_error_set(err, "ep: out of memory for a %d-token batch buffer", max_tokens);
        c->pack = p;
        c->pack_cap = need;
    }
    /* agree on the smallest (an allgather of one int each) */
    int *all = (int *)c->hashes, mine = max_tokens;   /* hashes: [size] uint64_t, room for the ints */
    for (int r = 0; r < c->size; r++) {
        c->bytes_of[r] = sizeof(int);
        c->displ[r] = (size_t)r * sizeof(int);
    }
    c->n_collectives++;
    if (c->ops->allgatherv(c, &mine, all, c->bytes_of, c->displ, "batch reservation", err)) return MOE_FAIL;
    c->batch_max = all[0];
    for (int r = 1; r < c->size; r++)
        if (all[r] < c->batch_max) c->batch_max = all[r];
    return MOE_OK;
}

/* ------------------------------------------------------------------ collectives */

int ep_barrier(ep_comm *c, moe_error *err) {
    c->n_collectives++;
    return c->ops->barrier(c, "barrier", err);
}

int ep_bcast(ep_comm *c, void *buf, size_t bytes, const char *what, moe_error *err) {
    c->n_collectives++;
    if (c->rank) c->bytes_in += bytes;
    return c->ops->bcast(c, buf, bytes, what, err);
}

int ep_bcast_batch(ep_comm *c, ep_batch *b, moe_error *err) {
    /* 1: the size (every rank checks it against its capacity, the same answer everywhere) */
    int hdr[2] = { c->rank == 0 ? b->n : 0, 0 };
    if (c->rank == 0 && (b->n < 0 || b->n > b->cap || b->n > c->batch_max)) hdr[1] = 1;
    if (ep_bcast(c, hdr, sizeof hdr, "batch size", err)) return MOE_FAIL;
    if (hdr[1])   /* every rank gets this line */
        return moe_error_set(err, "ep: rank 0's batch has %d tokens, outside [0, %d] (the smallest ep_comm_reserve of "
                                  "the ranks)", hdr[0], c->batch_max);
    int n = hdr[0];
    if (n > b->cap)   /* a caller's bug on this rank alone: its batch is smaller than it reserved */
        return moe_error_set(err, "ep: rank 0 sent a batch of %d tokens but rank %d's batch holds %d", n, c->rank, b->cap);
    if (c->size == 1) { b->n = n; return MOE_OK; }
    /* 2: the arrays in one message */
    size_t ni = (size_t)n * sizeof(int);
    unsigned char *p = c->pack;
    if (c->rank == 0) {
        memcpy(p, &n, sizeof n);
        memcpy(p + sizeof n, b->token, ni);
        memcpy(p + sizeof n + ni, b->pos, ni);
        memcpy(p + sizeof n + 2 * ni, b->seq, ni);
        memcpy(p + sizeof n + 3 * ni, b->want, (size_t)n);
    }
    if (ep_bcast(c, p, batch_bytes(n), "batch", err)) return MOE_FAIL;
    if (c->rank) {
        int n2;
        memcpy(&n2, p, sizeof n2);
        if (n2 != n) return moe_error_set(err, "ep: the batch message says %d tokens after a size of %d", n2, n);
        memcpy(b->token, p + sizeof n, ni);
        memcpy(b->pos, p + sizeof n + ni, ni);
        memcpy(b->seq, p + sizeof n + 2 * ni, ni);
        memcpy(b->want, p + sizeof n + 3 * ni, (size_t)n);
        b->n = n;
    }
    return MOE_OK;
}

int ep_allgatherv_rows(ep_comm *c, const float *mine, const int *rows_of, int width, float *all, const char *what,
                       moe_error *err) {
    size_t off = 0;
    for (int r = 0; r < c->size; r++) {
        if (rows_of[r] < 0) return moe_error_set(err, "ep: %s: rank %d contributes %d rows", what, r, rows_of[r]);
        c->displ[r] = off;
        c->bytes_of[r] = (size_t)rows_of[r] * (size_t)width * sizeof(float);
        off += c->bytes_of[r];
        if (r != c->rank) c->bytes_in += c->bytes_of[r];
    }
    c->n_collectives++;
    return c->ops->allgatherv(c, mine, all, c->bytes_of, c->displ, what, err);
}

uint64_t ep_hash(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

int ep_check_same(ep_comm *c, uint64_t hash, const char *what, moe_error *err) {
    for (int r = 0; r < c->size; r++) {
        c->bytes_of[r] = sizeof(uint64_t);
        c->displ[r] = (size_t)r * sizeof(uint64_t);
    }
    c->n_collectives++;
    if (c->ops->allgatherv(c, &hash, c->hashes, c->bytes_of, c->displ, what, err)) return MOE_FAIL;
    int bad = 0;
    for (int r = 1; r < c->size; r++) bad += c->hashes[r] != c->hashes[0];
    if (!bad) return MOE_OK;
    /* the same line on every rank: the ranks that differ from rank 0, each hash */
    char list[512];
    size_t k = 0;
    for (int r = 0; r < c->size && k + 40 < sizeof list; r++)
        k += (size_t)snprintf(list + k, sizeof list - k, "%s%d=%016" PRIx64 "%s", r ? ", " : "", r, c->hashes[r],
                              r && c->hashes[r] != c->hashes[0] ? "*" : "");
    return moe_error_set(err, "%s differs between ranks (%d of %d differ from rank 0, marked *: %s): every rank must "
                              "load the same checkpoint with the same options", what, bad, c->size, list);
}

static void say(ep_comm *c, const char *msg) {
    if (c) c->said = 1;
    fprintf(stderr, "moe: rank %d of %d: %s\n", c && c->ops ? c->rank : 0, c && c->ops ? c->size : 1, msg);
    fflush(stderr);
}

void ep_comm_abort(ep_comm *c, int code, const char *msg) {
    say(c, msg);
    if (code == 0) code = 1;
    if (c && c->ops) c->ops->abort(c, code);
    _exit(code);
}

void ep_comm_exit_all(ep_comm *c, int code, const char *msg) {
    say(c, msg);
    if (code == 0) code = 1;
    if (c && c->ops) {
        moe_error err = {{0}};
        double t = c->timeout_s;
        if (t <= 0 || t > 10) c->timeout_s = 10;     /* the others are on their way out too */
        if (c->ops->barrier(c, "exit", &err)) c->ops->abort(c, code);
        c->timeout_s = t;
        c->ops->finalize(c);
    }
    exit(code);
}
