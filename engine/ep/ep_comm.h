/* ep_comm.h - the exchange layer of expert parallelism (docs/ep.md, engine/ep/ep.h): what
 * the MoE layer calls to run one model over several processes (ranks, usually one per
 * machine), each holding only its own routed experts.
 *
 * Legend
 *   rank, size   this process and how many there are (size 1: the single-process backend)
 *   batch        one forward pass's tokens: token, pos, seq, want (engine_api.md's moe_batch)
 *   row          a float vector of one width (H: an expert's output for one (token, choice))
 *   what         a short name of the step ("layer 3 expert outputs") used in error lines
 *
 * Two backends behind one table of functions (ep_comm_ops):
 *   single   always compiled into libmoe: size 1, broadcasts do nothing, allgatherv copies.
 *   mpi      engine/ep/ep_comm_mpi.c (Open MPI), NOT in libmoe.a: a program that wants it links
 *            $(BUILD)/ep-mpi/ep_comm_mpi.o beside the library (`make MPI=1` does for moe; the
 *            tests build an MPI check program whenever mpicc exists). ep_comm.c finds it through
 *            a weak symbol, so the default build has no MPI dependency at all.
 *   ep_comm_init(EP_COMM_AUTO) takes mpi when it is linked in AND the process was started by
 *   a launcher (OMPI_COMM_WORLD_SIZE / PMIX_RANK / PMI_SIZE in the environment), else single.
 *
 * Failure: every call returns MOE_FAIL with one line in moe_error (an MPI error string, a
 * mismatch, a timeout); errors on MPI_COMM_WORLD return (MPI_ERRORS_RETURN) instead of
 * killing the job. The caller (a tool, never the library) then calls ep_comm_abort, which
 * prints "moe: rank R of N: MESSAGE" on stderr and ends EVERY rank with a non-zero exit
 * (MPI_Abort). A collective that does not complete within timeout_s (MOE_EP_TIMEOUT,
 * default 300 s) fails the same way instead of hanging; a rank killed by the launcher
 * because another rank died prints one line from its SIGTERM handler before it exits.
 * Checks that every rank sees the same thing (ep_check_same) fail on EVERY rank with the
 * same line, so each can end with it.
 *
 * Everything is exact bytes: allgatherv moves each rank's rows unchanged, so a reduction
 * done afterwards in one fixed order gives the same bits on every rank as in one process.
 * Buffers are sized once (ep_comm_reserve); the per-token calls do not allocate.
 */
#ifndef MOE_EP_COMM_H
#define MOE_EP_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct ep_comm ep_comm;

typedef struct {
    const char *name;                                                        /* "single" | "mpi" */
    int (*init)(ep_comm *c, int *argc, char ***argv, moe_error *err);
    void (*finalize)(ep_comm *c);
    int (*barrier)(ep_comm *c, const char *what, moe_error *err);
    /* bytes from rank 0 to all */
    int (*bcast)(ep_comm *c, void *buf, size_t bytes, const char *what, moe_error *err);
    /* rank r's send (bytes_of[r] bytes) lands at recv + displ[r] on every rank */
    int (*allgatherv)(ep_comm *c, const void *send, void *recv, const size_t *bytes_of, const size_t *displ,
                      const char *what, moe_error *err);
    void (*abort)(ep_comm *c, int code);                                    /* ends every rank */
} ep_comm_ops;

struct ep_comm {
    int rank, size;                 /* this process of `size` */
    double timeout_s;               /* a collective still waiting after this long fails (0 = never) */
    const ep_comm_ops *ops;
    void *impl;                     /* the backend's state */
    size_t *bytes_of, *displ;       /* [size] allgatherv scratch */
    unsigned char *pack;            /* [pack_cap] ep_bcast_batch's buffer */
    size_t pack_cap;
    uint64_t *hashes;               /* [size] ep_check_same's scratch */
    int batch_max;                  /* the smallest ep_comm_reserve over the ranks: rank 0 sends no more */
    volatile int said;              /* 1 once this rank printed its last line (the SIGTERM handler is then quiet) */
    uint64_t n_collectives;         /* collectives this rank took part in */
    uint64_t bytes_in;              /* bytes this rank received from others */
};

typedef enum { EP_COMM_AUTO = 0, EP_COMM_SINGLE, EP_COMM_MPI } ep_comm_kind;

/* 1 when the MPI backend is linked into this program. */
int ep_comm_have_mpi(void);
/* Starts the backend (MPI_Init_thread, SERIALIZED: one thread at a time talks; moe serve --ep: the main thread
 * at start and stop, the scheduler's engine thread in between). argc/argv
 * may be NULL. timeout from MOE_EP_TIMEOUT (seconds, 0 = none) when set. */
int ep_comm_init(ep_comm *c, ep_comm_kind kind, int *argc, char ***argv, moe_error *err);
void ep_comm_free(ep_comm *c);      /* MPI_Finalize; safe on a zeroed or failed ep_comm */
/* Sizes ep_bcast_batch's buffer for batches of up to max_tokens (once, before the loop).
 * Collective: every rank calls it; batch_max becomes the smallest reservation of all. */
int ep_comm_reserve(ep_comm *c, int max_tokens, moe_error *err);

int ep_barrier(ep_comm *c, moe_error *err);
int ep_bcast(ep_comm *c, void *buf, size_t bytes, const char *what, moe_error *err);

/* A batch as engine/batch.h's moe_batch lays it out (its fields, so the MoE layer can pass
 * a moe_batch's arrays). */
typedef struct {
    int n, cap;                     /* tokens, capacity */
    int *token;                     /* [cap] */
    int *pos;                       /* [cap] */
    int *seq;                       /* [cap] kv slot */
    unsigned char *want;            /* [cap] 1: logits wanted */
} ep_batch;
/* Rank 0's batch to every rank: n first, then the four arrays in one message. A batch larger
 * than the other side's cap (or than ep_comm_reserve's) fails on every rank. */
int ep_bcast_batch(ep_comm *c, ep_batch *b, moe_error *err);

/* Every rank contributes rows_of[rank] rows of `width` floats (mine); on return `all` holds
 * every rank's rows, rank 0's first, byte for byte. rows_of[] must be the same on every rank
 * (each computes it from the shared routing). */
int ep_allgatherv_rows(ep_comm *c, const float *mine, const int *rows_of, int width, float *all, const char *what,
                       moe_error *err);

/* FNV-1a, 64 bits: h = EP_HASH_INIT, then h = ep_hash(h, bytes, n) over the pieces. */
#define EP_HASH_INIT 0xcbf29ce484222325ull
uint64_t ep_hash(uint64_t h, const void *data, size_t n);
/* Every rank passes its hash of the same thing (config + tensor table, routing ids): MOE_OK
 * when all agree; otherwise MOE_FAIL on every rank with one line naming `what` and the ranks
 * that differ from rank 0 (each rank's hash in hex). */
int ep_check_same(ep_comm *c, uint64_t hash, const char *what, moe_error *err);

/* Prints "moe: rank R of N: msg" (one line, stderr) and ends every rank with exit code
 * `code` (!= 0): MPI_Abort, for a failure this rank alone knows of (the others are killed
 * by the launcher and each print one line saying so). The functions of the library that
 * end the process: only tools call them. */
void ep_comm_abort(ep_comm *c, int code, const char *msg) __attribute__((noreturn));
/* The same for a failure every rank knows of (ep_check_same, a bad batch size): each rank
 * prints its line, then they meet (a barrier bounded by the timeout, else MPI_Abort) and
 * exit with `code` after MPI_Finalize, so every line is printed before anyone is killed. */
void ep_comm_exit_all(ep_comm *c, int code, const char *msg) __attribute__((noreturn));

#endif
