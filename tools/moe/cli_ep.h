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
 * Not yet: chat and serve (their input reaches rank 0 only); they refuse --ep with one line.
 */
#ifndef MOE_CLI_EP_H
#define MOE_CLI_EP_H

#include <stdint.h>
#include <stdio.h>

#include "session.h"

/* --ep, --ep-plan FILE: 1 if argv[*i] was one (consumed), 0 if not, -1 on a bad value. */
int cli_ep_option(int argc, char **argv, int *i, const char *cmd);
void cli_ep_usage(FILE *f);
int cli_ep_on(void);
/* This process's rank (0 without --ep). */
int cli_ep_rank(void);
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
/* A failure on this rank while --ep is on: ends every rank (one line each). */
void cli_ep_fail(const char *cmd, const char *msg);

#endif
