/* cli_ep.h - `--ep` / `--ep-plan FILE` for the commands that load a model (docs/ep.md,
 * engine/ep/ep.h): the tool side of expert parallelism.
 *
 * How the ranks follow rank 0: every rank runs the same command line (mpirun passes it to
 * all), so every rank builds the same token ids from the same prompt; the clock seed of the
 * sampler is rank 0's (cli_ep_bcast_u64), and the engine under the hook gives every rank the
 * logits of one process bit for bit (tests/ep_logits_check.c), so every rank samples the same
 * next token. Only rank 0 writes: stdout of the other ranks goes to /dev/null, and commands
 * writing files skip them when cli_ep_rank() > 0. Per-step agreement is checked, not assumed,
 * with MOE_EP_CHECK=1 (the routing hash compared after every MoE layer).
 * serve (its input reaches rank 0 only) is followed, not replayed: rank 0 runs the HTTP server
 * and the scheduler, and broadcasts each forward pass's batch and each cache operation before
 * it runs them (cli_ep_serve_leader, a sched_follow); the other ranks run cli_ep_serve_follow,
 * which applies the same operations and runs the same passes (their experts) until rank 0's
 * stop message (cli_ep_serve_stop, after the scheduler stopped). Messages: 16 bytes
 * {op, a, b, c}, then for a pass the batch (ep_bcast_batch: 13 bytes a token).
 * chat is replayed like generate: rank 0 reads each input line and broadcasts it
 * (cli_ep_bcast_line), and every rank runs the same turn.
 */
#ifndef MOE_CLI_EP_H
#define MOE_CLI_EP_H

#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "serve_sched.h"
#include "session.h"

/* --ep, --ep-plan FILE: 1 if argv[*i] was one (consumed), 0 if not, -1 on a bad value. */
int cli_ep_option(int argc, char **argv, int *i, const char *cmd);
void cli_ep_usage(FILE *f);
int cli_ep_on(void);
/* This process's rank (0 without --ep) and the number of ranks (1 without --ep). */
int cli_ep_rank(void);
int cli_ep_size(void);
/* Starts the exchange layer once (MPI_Init under mpirun); on failure one line, exit. */
void cli_ep_start(const char *cmd);
/* Rank 0's value to every rank (no-op without --ep). */
void cli_ep_bcast_u64(uint64_t *v, const char *what);
/* Before session_open: which routed experts this rank loads (the plan's or the default
 * blocks), as o->holds: the loader reads none of the others' bytes. */
void cli_ep_load_options(model_options *o, const char *dir, const char *cmd);
/* After session_open: the checkpoint hash compared across ranks, the placement (default
 * blocks or the plan), the hook installed in e->c; one line per rank on stderr. Ends every
 * rank with one line on failure. */
void cli_ep_attach(moe_session *e, const char *dir, const char *cmd);
/* Totals of the exchange so far (zeros without --ep): seconds in collectives, bytes sent, layers. */
void cli_ep_stats(double *comm_s, uint64_t *bytes_sent, uint64_t *exchanges);
/* One line on stderr (every rank): "ep: rank R of N: WHAT: X us in communication, Y bytes sent, Z
 * exchanges per UNIT" from the totals' differences over `units` tokens or chunks. */
void cli_ep_report(const char *what, const char *unit, double comm_s, uint64_t bytes, uint64_t exchanges, double units);
/* Rank 0's line to every rank (chat's input; no-op without --ep): *got is its length or -1 at
 * the end of the input, *line grown as getline does. Waits without a timeout (a user types). */
void cli_ep_bcast_line(char **line, size_t *cap, ssize_t *got);

/* moe serve --ep. Rank 0: the scheduler's follow hook (after cli_ep_attach; collective with the
 * followers' cli_ep_serve_follow: both reserve batches of batch_cap tokens). NULL without --ep. */
const sched_follow *cli_ep_serve_leader(int batch_cap);
/* Rank 0, once the scheduler's thread has ended: tells the followers to stop. */
void cli_ep_serve_stop(void);
/* Ranks > 0: run rank 0's cache operations and passes on e until its stop message; 0 then.
 * A failure ends every rank (one line each). Waits for rank 0 without a timeout between
 * passes (a server may be idle for hours); a pass's own collectives keep MOE_EP_TIMEOUT. */
int cli_ep_serve_follow(moe_session *e, int batch_cap);

/* A failure on this rank while --ep is on: ends every rank (one line each). */
void cli_ep_fail(const char *cmd, const char *msg);

#endif
