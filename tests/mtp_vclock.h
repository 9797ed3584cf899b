/* mtp_vclock.h - a virtual clock for --mtp auto's controller (tests only): time advances by
 * fixed costs of the passes the engine runs, seen through the routing observer, so the
 * controller's decisions are deterministic and independent of the machine's load.
 *
 *   main pass       pass + tok x (tokens x MoE layers it routes)
 *   MTP pass        mtp x (tokens it routes in the MTP block); cache-only MTP rows cost nothing
 *   everything else (sampling, emission, the controller) costs nothing
 */
#ifndef MOE_TESTS_MTP_VCLOCK_H
#define MOE_TESTS_MTP_VCLOCK_H

#include "generate.h"

typedef struct {
    const moe_ctx *c;
    int L;                       /* main layers: a routed layer >= L is the MTP block's */
    double pass, tok, mtp;       /* the costs above */
    double t;                    /* now */
    unsigned long last_pass;     /* the main pass that was charged its fixed cost last */
} mtp_vclock;

static void mtp_vclock_route(void *p, int layer, int seq, int pos, const route_decision *d) {
    (void)seq; (void)pos; (void)d;
    mtp_vclock *v = p;
    if (layer >= v->L) { v->t += v->mtp; return; }
    if (v->c->n_forward_calls != v->last_pass) { v->last_pass = v->c->n_forward_calls; v->t += v->pass; }
    v->t += v->tok;
}

static double mtp_vclock_now(void *p) { return ((mtp_vclock *)p)->t; }

/* Installs the clock on ctx c (its routing observer) and generator g. */
static void mtp_vclock_install(mtp_vclock *v, moe_ctx *c, generator *g, int L, double pass, double tok, double mtp) {
    *v = (mtp_vclock){ .c = c, .L = L, .pass = pass, .tok = tok, .mtp = mtp, .last_pass = (unsigned long)-1 };
    c->on_route = mtp_vclock_route;
    c->on_route_ctx = v;
    g->clock = mtp_vclock_now;
    g->clock_ctx = v;
}

#endif
