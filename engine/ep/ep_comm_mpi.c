/* ep_comm_mpi.c - the MPI backend of the exchange layer (see ep_comm.h). Compiled with mpicc
 * into $(BUILD)/ep-mpi/ep_comm_mpi.o and linked beside libmoe.a by programs that want it
 * (`make MPI=1`); ep_comm.c finds `ep_comm_mpi_ops` through a weak reference.
 *
 * Legend
 *   request   a nonblocking collective (MPI_Ibcast, MPI_Iallgatherv, MPI_Ibarrier): waited
 *             for by polling MPI_Test, so a peer that never arrives turns into a timeout
 *             error (c->timeout_s) instead of a hang: poll without pause for the first
 *             50 ms (Open MPI's nonblocking collectives progress only inside MPI_Test, so a
 *             sleep between polls would stall a large transfer), then every 50 us, and
 *             after 1 s every 1 ms (an idle `moe serve --ep` follower waiting for the next
 *             pass costs next to nothing).
 *   errors    MPI_COMM_WORLD gets MPI_ERRORS_RETURN: a failed call returns its code, which
 *             becomes one line (MPI_Error_string) in moe_error.
 *   SIGTERM   what the launcher (mpirun) sends the surviving ranks when one dies or calls
 *             MPI_Abort: the handler writes one preformatted line (unless this rank already
 *             said its last line) and _exits 143.
 */
#include <limits.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ep_comm.h"

#define SPIN_S 0.05   /* poll without sleeping for the first 50 ms of a wait */
#define IDLE_S 1.0    /* then every 50 us up to 1 s, then every 1 ms */

typedef struct {
    int inited_here;          /* 1: we called MPI_Init_thread (and so MPI_Finalize) */
    int *count, *displ;       /* [size] allgatherv in bytes as MPI wants them (int) */
} mpi_state;

static char term_line[160];   /* the SIGTERM handler's line, formatted at init */
static size_t term_len;
static volatile int *term_said;
static volatile sig_atomic_t term_quiet;   /* this rank said its last line and is finalizing */

static void on_term(int sig) {
    if (!term_quiet && (!term_said || !*term_said)) {
        ssize_t w = write(2, term_line, term_len);
        (void)w;
    }
    _exit(128 + sig);
}

static int mpi_fail(ep_comm *c, int rc, const char *what, moe_error *err) {
    char s[MPI_MAX_ERROR_STRING];
    int n = 0;
    if (MPI_Error_string(rc, s, &n) != MPI_SUCCESS) snprintf(s, sizeof s, "error code %d", rc);
    return moe_error_set(err, "ep: %s: MPI failed on rank %d of %d: %s", what, c->rank, c->size, s);
}

static int wait_req(ep_comm *c, MPI_Request *rq, const char *what, moe_error *err) {
    double t0 = MPI_Wtime();
    for (;;) {
        int done = 0, rc = MPI_Test(rq, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return mpi_fail(c, rc, what, err);
        if (done) return MOE_OK;
        double waited = MPI_Wtime() - t0;
        if (waited < SPIN_S) continue;       /* a large message progresses only inside MPI_Test */
        struct timespec ts = { 0, waited < IDLE_S ? 50000 : 1000000 };
        nanosleep(&ts, NULL);
        if (c->timeout_s > 0 && waited > c->timeout_s)
            return moe_error_set(err, "ep: %s: rank %d of %d waited %.0f s for the other ranks (MOE_EP_TIMEOUT): one is "
                                      "stuck or gone", what, c->rank, c->size, MPI_Wtime() - t0);
    }
}

static int m_init(ep_comm *c, int *argc, char ***argv, moe_error *err) {
    mpi_state *s = calloc(1, sizeof *s);
    if (!s) return moe_error_set(err, "ep: out of memory");
    int inited = 0, provided = 0, rc;
    MPI_Initialized(&inited);
    if (!inited) {
        rc = MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided);
        if (rc != MPI_SUCCESS) { free(s); return moe_error_set(err, "ep: MPI_Init_thread failed (error %d)", rc); }
        s->inited_here = 1;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    s->count = calloc((size_t)c->size, sizeof(int));
    s->displ = calloc((size_t)c->size, sizeof(int));
    if (!s->count || !s->displ) {
        free(s->count); free(s->displ); free(s);
        return moe_error_set(err, "ep: out of memory");
    }
    c->impl = s;
    int n = snprintf(term_line, sizeof term_line,
                     "moe: rank %d of %d: ended by the launcher (another rank failed or the job was stopped)\n", c->rank,
                     c->size);
    term_len = n > 0 && (size_t)n < sizeof term_line ? (size_t)n : 0;
    term_said = &c->said;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    return MOE_OK;
}

static void m_finalize(ep_comm *c) {
    mpi_state *s = c->impl;
    if (!s) return;
    if (c->said) term_quiet = 1;
    term_said = NULL;
    int fin = 0;
    MPI_Finalized(&fin);
    if (s->inited_here && !fin) MPI_Finalize();
    free(s->count);
    free(s->displ);
    free(s);
    c->impl = NULL;
}

static int m_barrier(ep_comm *c, const char *what, moe_error *err) {
    MPI_Request rq;
    int rc = MPI_Ibarrier(MPI_COMM_WORLD, &rq);
    if (rc != MPI_SUCCESS) return mpi_fail(c, rc, what, err);
    return wait_req(c, &rq, what, err);
}

static int m_bcast(ep_comm *c, void *buf, size_t bytes, const char *what, moe_error *err) {
    if (bytes > INT_MAX) return moe_error_set(err, "ep: %s: %zu bytes in one broadcast (at most 2^31 - 1)", what, bytes);
    MPI_Request rq;
    int rc = MPI_Ibcast(buf, (int)bytes, MPI_BYTE, 0, MPI_COMM_WORLD, &rq);
    if (rc != MPI_SUCCESS) return mpi_fail(c, rc, what, err);
    return wait_req(c, &rq, what, err);
}

static int m_allgatherv(ep_comm *c, const void *send, void *recv, const size_t *bytes_of, const size_t *displ,
                        const char *what, moe_error *err) {
    mpi_state *s = c->impl;
    for (int r = 0; r < c->size; r++) {
        if (bytes_of[r] > INT_MAX || displ[r] > INT_MAX)
            return moe_error_set(err, "ep: %s: %zu bytes at %zu from rank %d (at most 2^31 - 1)", what, bytes_of[r],
                                 displ[r], r);
        s->count[r] = (int)bytes_of[r];
        s->displ[r] = (int)displ[r];
    }
    const void *sb = (const char *)recv + displ[c->rank] == send ? MPI_IN_PLACE : send;
    MPI_Request rq;
    int rc = MPI_Iallgatherv(sb, s->count[c->rank], MPI_BYTE, recv, s->count, s->displ, MPI_BYTE, MPI_COMM_WORLD, &rq);
    if (rc != MPI_SUCCESS) return mpi_fail(c, rc, what, err);
    return wait_req(c, &rq, what, err);
}

static void m_abort(ep_comm *c, int code) {
    MPI_Abort(MPI_COMM_WORLD, code);
    _exit(code);
}

const ep_comm_ops ep_comm_mpi_ops = {
    "mpi", m_init, m_finalize, m_barrier, m_bcast, m_allgatherv, m_abort,
};
