/* serve_mtp_auto.c - the server's --mtp auto controller (see serve_mtp_auto.h). */
#include "serve_mtp_auto.h"

#include <string.h>

void sma_init(serve_mtp_auto *a) {
    memset(a, 0, sizeof *a);
    a->every = SMA_EVERY_MIN;
}

static int probe(serve_mtp_auto *a, int mode) {
    a->probe_left = SMA_PROBE - 1;
    return mode;
}

/* At an n where only one mode has been measured: the ratio at the nearest n that has both
 * (0: none), rather than a cold probe at every new number of slots. */
static double nearest_rel(const serve_mtp_auto *a, int n) {
    for (int d = 1; d < SMA_MAX_N; d++)
        for (int k = n - d; k <= n + d; k += 2 * d)
            if (k >= 1 && k <= SMA_MAX_N && a->t[0][k] > 0 && a->t[1][k] > 0) return a->t[1][k] / a->t[0][k];
    return 0;
}

int sma_decide(serve_mtp_auto *a, int n) {
    if (n < 1) n = 1;
    if (n > SMA_MAX_N) n = SMA_MAX_N;
    int cur = a->spec, oth = !cur;
    if (a->probe_left > 0) { a->probe_left--; return oth; }
    if (a->quiet_left > 0) { a->quiet_left--; return 0; }
    if (a->t[cur][n] <= 0) return cur;                 /* the chosen mode's yardstick at this n first */
    double rel = a->t[oth][n] > 0 ? a->t[1][n] / a->t[0][n] : nearest_rel(a, n);   /* speculation's time per token over plain's */
    if (rel <= 0) { a->n_remeasure++; return probe(a, oth); }   /* nothing known yet: measure */
    int want = cur ? rel < 1 : rel < 1 - SMA_MARGIN;   /* hysteresis: switching needs a clear gain */
    if (want != cur) {
        if (++a->streak < SMA_CONFIRM) return probe(a, want);   /* fresh samples before switching */
        a->spec = want;
        a->streak = 0;
        a->every = SMA_EVERY_MIN;
        a->since = 0;
        a->n_far = 0;
        a->n_switch++;
        return want;
    }
    a->streak = 0;
    if (++a->since < a->every) return cur;
    a->since = 0;
    double lose = cur ? 1 / rel - 1 : rel - 1;         /* how much the other mode lost by */
    if (!cur && lose > SMA_FAR) {
        if (++a->n_far >= SMA_SETTLE) {                /* settle: no MTP module for SMA_QUIET steps */
            a->n_far = 0;
            a->quiet_left = SMA_QUIET;
            a->n_quiet++;
            return 0;
        }
    } else {
        a->n_far = 0;
    }
    if (a->every < SMA_EVERY_MAX) a->every *= lose > SMA_FAR ? 4 : 2;
    if (a->every > SMA_EVERY_MAX) a->every = SMA_EVERY_MAX;
    a->n_remeasure++;
    return probe(a, oth);
}

void sma_record(serve_mtp_auto *a, int spec, int n, double seconds, int tokens, int clean) {
    if (spec) a->n_spec_steps++;
    else a->n_plain_steps++;
    if (!clean || tokens < 1 || seconds <= 0) return;
    if (n < 1) n = 1;
    if (n > SMA_MAX_N) n = SMA_MAX_N;
    double x = seconds / tokens, *t = &a->t[spec ? 1 : 0][n];
    *t = *t > 0 ? (1 - SMA_ALPHA) * *t + SMA_ALPHA * x : x;
}
