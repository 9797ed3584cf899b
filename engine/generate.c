/* generate.c - prompt processing and the sampling loop (see generate.h). */
#include "generate.h"

#include "kernels.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* auto mode's re-measuring interval, in steps (see "MTP: costs and policy") */
#define MTP_EVERY_MIN 8
#define MTP_EVERY_MAX 256
#define MTP_PROBE_LEN 1
#define MTP_CONFIRM 3      /* decisions in a row for the other mode before switching */
#define MTP_FAR 0.05       /* the other mode lost by more than this: back off probing faster (x4) */
#define MTP_EVERY_CHECK 32 /* the first interval while only drafts are checked (before any speculative step) */
#define MTP_MARGIN 0.15    /* speculation must promise this much less time per token to be chosen */
#define MTP_LOWER_BOUND 0.95   /* measure a speculative step once its lower bound per token is below this */

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* the clock of the MTP loop's timings (generator.clock: a test's virtual clock) */
static double clk(const generator *g) { return g->clock ? g->clock(g->clock_ctx) : now_seconds(); }

int generator_init(generator *g, const moe_model *m, moe_ctx *ctx, moe_kv *kv, int slot, const tokenizer *tok, sampler *s,
                   moe_error *err) {
    memset(g, 0, sizeof *g);
    if (slot < 0 || slot >= kv->n_slots) return moe_error_set(err, "KV slot %d does not exist (%d slots)", slot, kv->n_slots);
    g->model = m;
    g->ctx = ctx;
    g->kv = kv;
    g->slot = slot;
    kv_clear(kv, slot);
    g->tok = tok;
    g->smp = s;
    g->eos_id = m->cfg.eos_token_id;
    if (tok && tokenizer_eos_id(tok) >= 0) g->eos_id = tokenizer_eos_id(tok);
    g->history = malloc(sizeof(int) * (size_t)kv->S);
    g->logits = malloc(sizeof(float) * (size_t)m->cfg.vocab_size);
    tokenizer_stream_init(&g->stream);
    if (!g->history || !g->logits) {
        generator_free(g);
        return moe_error_set(err, "out of memory for the generator");
    }
    return MOE_OK;
}

void generator_free(generator *g) {
    free(g->hidden);
    free(g->mtp_next);
    free(g->verify_logits);
    free(g->draft_logits);
    free(g->p_target);
    free(g->q_draft);
    free(g->mtp_h);
    free(g->history);
    free(g->logits);
    tokenizer_stream_free(&g->stream);
    memset(g, 0, sizeof *g);
}

/* ------------------------------------------------------------------ MTP */

int generator_enable_mtp(generator *g, mtp_mode mode, size_t *extra_bytes, moe_error *err) {
    const moe_config *c = &g->model->cfg;
    if (c->num_nextn_predict_layers < 1) return moe_error_set(err, "this checkpoint has no MTP module (num_nextn_predict_layers = 0)");
    size_t S = (size_t)g->kv->S, H = (size_t)c->hidden_size, V = (size_t)c->vocab_size;
    g->hidden = malloc(sizeof(float) * S * H);
    g->mtp_next = malloc(sizeof(int) * S);
    g->verify_logits = malloc(sizeof(float) * (MTP_DRAFT_MAX + 1) * V);
    g->draft_logits = malloc(sizeof(float) * V);
    g->p_target = malloc(sizeof(float) * V);
    g->q_draft = malloc(sizeof(float) * MTP_DRAFT_MAX * V);
    g->mtp_h = malloc(sizeof(float) * 2 * H);
    if (!g->hidden || !g->mtp_next || !g->verify_logits || !g->draft_logits || !g->p_target || !g->q_draft || !g->mtp_h)
        return moe_error_set(err, "out of memory for MTP decoding (%zu MiB of hidden states)", (S * H * 4) >> 20);
    if (extra_bytes) *extra_bytes = sizeof(float) * (S * H + (2 * MTP_DRAFT_MAX + 3) * V + 2 * H) + sizeof(int) * S;
    g->draft_len = 1;
    g->use_mtp = 1;
    g->mode = mode;
    memset(&g->ctl, 0, sizeof g->ctl);
    g->ctl.every = MTP_EVERY_MIN;
    g->mtp_valid = 0;
    g->blind_from = INT_MAX;
    g->n_history = 0;    /* the main hidden states of cached positions are unknown: recompute */
    return MOE_OK;
}

int generator_set_draft_len(generator *g, int n, moe_error *err) {
    if (n < 1 || n > MTP_DRAFT_MAX) return moe_error_set(err, "--draft %d: use 1 to %d drafts per step", n, MTP_DRAFT_MAX);
    g->draft_len = n;
    return MOE_OK;
}

void generator_mtp_adopt(generator *g, const mtp_auto *learned) {
    g->ctl = *learned;
    g->ctl.probe_left = g->ctl.probing = 0;
    g->ctl.n_remeasure = g->ctl.n_switch = g->ctl.n_spec_steps = g->ctl.n_plain_steps = g->ctl.n_shadow = g->ctl.n_quiet = g->ctl.n_settled_steps = 0;
}

/* Runs the MTP module over positions [mtp_valid, n_history): position p gets
 * (hidden[p], token p+1), where token n_history is `pending` (-1: stop one short,
 * the next token is not known yet). The last position's logits land in draft_logits (with a
 * pending token); the positions before it only need their MTP cache rows, which is all a
 * later position reads of them (model_forward_mtp_cache_seq: no attention, experts or head). */
static int mtp_catch_up(generator *g, int pending, double *cache_s, int *cache_rows, float *mtp_h, moe_error *err) {
    int n = g->n_history, last = pending >= 0 ? n : n - 1;
    int H = g->model->cfg.hidden_size;
    if (cache_s) *cache_s = 0;
    if (cache_rows) *cache_rows = 0;
    if (g->mtp_valid >= last) return MOE_OK;
    int p0 = g->mtp_valid, cnt = last - p0;
    int *next = g->mtp_next;
    for (int i = 0; i < cnt; i++) next[i] = p0 + i + 1 < n ? g->history[p0 + i + 1] : pending;
    int n_cache = pending >= 0 ? cnt - 1 : cnt;   /* the draft's position runs whole */
    double t0 = cache_s ? clk(g) : 0;
    if (n_cache > 0 && model_forward_mtp_cache_seq(g->model, g->ctx, g->kv, 0, g->slot, g->hidden + (size_t)p0 * H, next,
                                                   n_cache, p0, err))
        return MOE_FAIL;
    if (cache_s && n_cache > 0) *cache_s = clk(g) - t0;
    if (cache_rows) *cache_rows = n_cache;
    g->mtp_valid = p0 + n_cache;
    if (n_cache == cnt) return MOE_OK;
    int p = p0 + n_cache;
    if (model_forward_mtp_seq(g->model, g->ctx, g->kv, 0, g->slot, g->hidden + (size_t)p * H, next + n_cache, 1, p,
                              g->draft_logits, 0, mtp_h, err))
        return MOE_FAIL;
    g->mtp_valid = last;
    return MOE_OK;
}

/* ------------------------------------------------------------------ prompt */

int generator_prompt(generator *g, const int *tokens, int n, moe_error *err) {
    int S = g->kv->S;
    if (n < 1) return moe_error_set(err, "the prompt is empty (no tokens)");
    if (n > S)
        return moe_error_set(err, "the prompt has %d tokens but the context holds %d (raise --ctx, or --truncate)", n, S);
    /* reuse the cached prefix; the last token is always recomputed for its logits */
    int keep = 0;
    while (keep < g->n_history && keep < n - 1 && g->history[keep] == tokens[keep]) keep++;
    double t0 = now_seconds();
    int H = g->model->cfg.hidden_size;
    float *hidden = g->use_mtp ? g->hidden + (size_t)keep * H : NULL;
    if (model_forward_seq(g->model, g->ctx, g->kv, g->slot, tokens + keep, n - keep, keep, g->logits, 0, hidden, err)) {
        g->n_history = keep;   /* positions >= keep are no longer trustworthy */
        kv_keep(g->kv, g->slot, keep);
        if (g->mtp_valid > keep - 1) g->mtp_valid = keep > 0 ? keep - 1 : 0;
        return MOE_FAIL;
    }
    memcpy(g->history, tokens, sizeof(int) * (size_t)n);
    g->n_history = n;
    if (g->use_mtp) {
        /* MTP position p reads (h_p, token p+1): valid while token p+1 was kept */
        if (g->mtp_valid > keep - 1) g->mtp_valid = keep > 0 ? keep - 1 : 0;
        if (keep <= g->blind_from) g->blind_from = INT_MAX;   /* every position's hidden state is known again */
        int quiet = g->mode == MTP_AUTO && g->ctl.quiet_left > 0;   /* settled plain: a later draft catches up */
        if (!quiet && mtp_catch_up(g, -1, NULL, NULL, NULL, err)) return MOE_FAIL;
    }
    g->n_prompt_computed = n - keep;
    g->prompt_seconds = now_seconds() - t0;
    return MOE_OK;
}

/* ------------------------------------------------------------------ sampling loop */

/* Streams one generated token; returns 1 when generation must stop (EOS, or the
 * caller said so), -1 on error. */
static int emit_token(generator *g, int id, generate_emit emit, void *ctx, moe_error *err) {
    if (id == g->eos_id) return 1;
    g->n_generated++;
    if (!emit) return 0;
    size_t len;
    /* a model's vocabulary may be padded beyond the tokenizer's (V3: 129280 vs 128815 ids) */
    if (!g->tok || !tokenizer_token_bytes(g->tok, id, &len)) return emit(ctx, id, "", 0) ? 1 : 0;
    const char *text;
    if (tokenizer_stream_push(g->tok, &g->stream, id, &text, &len, err)) return -1;
    return emit(ctx, id, text, len) ? 1 : 0;
}

static void flush_stream(generator *g, generate_emit emit, void *ctx) {
    if (!emit || !g->tok) return;
    const char *text;
    size_t len;
    tokenizer_stream_flush(&g->stream, &text, &len);
    if (len) emit(ctx, -1, text, len);
}

/* Plain decoding: sample, feed, repeat. */
static int run_plain(generator *g, int max_new, generate_emit emit, void *ctx, moe_error *err) {
    while (g->n_generated < max_new) {
        int id = sampler_sample(g->smp, g->logits);
        int stop = emit_token(g, id, emit, ctx, err);
        if (stop < 0) return MOE_FAIL;
        if (stop || g->n_generated == max_new) break;  /* the last token need not be fed */
        if (g->n_history >= g->kv->S) break;           /* context full */
        if (model_forward_seq(g->model, g->ctx, g->kv, g->slot, &id, 1, g->n_history, g->logits, 0, NULL, err))
            return MOE_FAIL;
        g->history[g->n_history++] = id;
    }
    return MOE_OK;
}

/* ------------------------------------------------------------------ MTP: the sampling rule */

int speculative_resolve(sampler *s, float *p, const float *q, int d, int V) {
    if (q[d] > 0.0f && sampler_uniform(s) * q[d] < p[d]) return -1;   /* accept with min(1, p/q) */
    double mass = 0;                                                  /* residual max(0, p - q), renormalised */
    for (int i = 0; i < V; i++) {
        float r = p[i] - q[i];
        p[i] = r > 0.0f ? r : 0.0f;
        mass += p[i];
    }
    if (mass <= 0) return d;   /* p == q: cannot happen after a rejection, but stay defined */
    for (int i = 0; i < V; i++) p[i] = (float)(p[i] / mass);
    return sampler_draw(s, p);
}

/* ------------------------------------------------------------------ MTP: costs and policy */

/* Tokens a speculative step yields with N chained drafts, each accepted with probability a
 * once the ones before it were: 1 + a + a^2 + ... + a^N (N = 1: 1 + a). */
static double mtp_yield(double a, int N) {
    double y = 1, p = 1;
    for (int i = 0; i < N; i++) { p *= a; y += p; }
    return y;
}

/* Acceptance with a prior of one accepted draft in two, of one confidence bucket (-1: all). */
static double acceptance(const mtp_costs *c, int bucket) {
    long d = 0, a = 0;
    for (int b = 0; b < MTP_CONF_BUCKETS; b++)
        if (bucket < 0 || b == bucket) { d += c->drafted[b]; a += c->accepted[b]; }
    return (a + 1.0) / (d + 2.0);
}

/* auto mode's, the same over all runs since generator_enable_mtp, checked drafts included */
static double ctl_acceptance(const generator *g, int bucket) {
    long d = 0;
    double a = 0;
    for (int b = 0; b < MTP_CONF_BUCKETS; b++)
        if (bucket < 0 || b == bucket) { d += g->ctl.drafted[b]; a += g->ctl.accepted[b]; }
    return (a + 1.0) / (d + 2.0);
}

double mtp_cost_plain(const mtp_costs *c) { return c->n_plain ? c->plain_s / c->n_plain : 0; }

double mtp_cost_spec(const mtp_costs *c) {
    if (!c->n_verify || !c->n_draft) return 0;
    return (c->draft_s / c->n_draft * (c->draft_len > 0 ? c->draft_len : 1) + c->verify_s / c->n_verify) /
           mtp_yield(acceptance(c, -1), c->draft_len > 0 ? c->draft_len : 1);
}

/* Auto mode keeps the wall times of the last MTP_WIN steps of each mode, everything included
 * (a plain step: pass, sampling, emission; a speculative one: draft, verification, the rule,
 * up to two emissions; not its cache-only MTP rows, counted apart; not a step that drafts
 * without verifying) and takes their medians, robust to a neighbour taking the CPU during a
 * few steps. A speculative step yields 1 + acceptance tokens and, after an accepted draft, costs
 * one cache-only MTP row more (the median of those one-row passes: the spec estimate adds
 * acceptance x that row); speculation is chosen while its estimate per token is below a plain
 * step's.
 *
 * Whatever is chosen, the other mode is re-measured every `every` steps (one plain step while
 * speculating, MTP_PROBE_LEN speculative steps while not: load, text and acceptance drift),
 * the interval doubling from MTP_EVERY_MIN to MTP_EVERY_MAX while the choice holds (x4 when
 * the other mode lost by more than MTP_FAR). A switch needs MTP_CONFIRM decisions in a row
 * for the other mode, each of which runs a step of it (so its window holds fresh samples):
 * one noisy sample does not flip the mode. Before the first speculative step, the first
 * re-measurements only draft and check the draft against the next plain step's logits: while
 * that acceptance says speculating would not pay even if a verification cost no more than a
 * plain step ((1 + draft) / (1 + acceptance) >= MTP_LOWER_BOUND), no verification is run (on
 * random weights, nothing is ever verified) and the checks come every MTP_EVERY_CHECK steps, x4. While plain, the MTP module is not run at all; a
 * re-measurement first catches its cache up on the positions it missed in one batched
 * cache-only pass (mtp_catch_up), which is not part of the step's sample. */
static void win_push(mtp_window *w, double s) {
    w->v[w->next] = s;
    w->next = (w->next + 1) % MTP_WIN;
    if (w->n < MTP_WIN) w->n++;
}

static double win_median(const mtp_window *w) {
    double t[MTP_WIN];
    int n = w->n;
    if (!n) return 0;
    memcpy(t, w->v, sizeof(double) * (size_t)n);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) { double x = t[j]; t[j] = t[j - 1]; t[j - 1] = x; }
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* The mean of the samples at most 1.5 x the median: a step that waited for the CPU (a neighbour's
 * process) does not count, the spread of the steps themselves does (a median alone would miss
 * the costlier half of speculative steps). */
static double win_mean(const mtp_window *w) {
    double med = win_median(w), sum = 0;
    int k = 0;
    for (int i = 0; i < w->n; i++)
        if (w->v[i] <= 1.5 * med) { sum += w->v[i]; k++; }
    return k ? sum / k : 0;
}

/* The median of the last k samples (all if fewer). */
static double win_recent(const mtp_window *w, int k) {
    mtp_window r = {0};
    for (int i = 0; i < k && i < w->n; i++) win_push(&r, w->v[(w->next - 1 - i + MTP_WIN) % MTP_WIN]);
    return win_median(&r);
}

#define MTP_RECENT 5

/* Speculation's time per token over plain decoding's (0: not measured yet): the step ratio
 * (paired samples), plus the cache-only row after an accepted draft, per 1 + acceptance tokens. */
static double spec_relative(const generator *g) {
    const mtp_auto *a = &g->ctl;
    double plain = win_recent(&a->plain, MTP_RECENT);
    if (!a->spec_step.n || plain <= 0) return 0;
    double r = a->ratio.n ? win_mean(&a->ratio) : win_mean(&a->spec_step) / win_mean(&a->plain);
    double acc = ctl_acceptance(g, -1);
    return (r + acc * win_mean(&a->row) / plain) / mtp_yield(acc, g->draft_len);
}

double mtp_auto_plain(const generator *g) { return win_recent(&g->ctl.plain, MTP_RECENT); }

double mtp_auto_spec(const generator *g) { return spec_relative(g) * mtp_auto_plain(g); }

/* At a re-measurement while plain: `far` = speculation lost by over MTP_FAR again (or, before
 * any speculative step, the drafts checked say even a free verification would not pay). After
 * MTP_SETTLE of those in a row (with the interval growing x4: 8, 32, 128, 256 steps), auto settles on plain decoding for
 * MTP_QUIET steps: no re-measurement, no draft, no cache-only MTP rows (the last ~1 % of a
 * toy plain step's time was those: each re-measurement first catches the MTP cache up on every
 * position it missed), and a new prompt skips the MTP module too. Returns 1 when settling now. */
static int settle(mtp_auto *a, int far) {
    if (!far) { a->n_far = 0; return 0; }
    if (++a->n_far < MTP_SETTLE) return 0;
    a->n_far = 0;
    a->quiet_left = MTP_QUIET;
    a->n_quiet++;
    return 1;
}

/* Draft at this step? Sets ctl.probing when the step re-measures speculation while plain. */
static int should_draft(generator *g) {
    mtp_auto *a = &g->ctl;
    a->probing = 0;
    if (g->mode == MTP_ALWAYS) return 1;
    if (a->probe_left > 0) { a->probe_left--; a->probing = 1; return 1; }
    if (a->quiet_left > 0) { a->quiet_left--; return 0; }   /* settled plain: not even a re-measurement */
    if (g->blind_from < g->n_history) return 0;           /* hidden states missing: no draft in this sequence */
    if (!a->plain.n) return 0;                            /* the first step is plain: the yardstick */
    if (!a->spec_step.n) {
        /* speculation not measured yet: a verification costs at least a plain step, so while
         * the drafts checked so far say that even then speculating would not pay, only draft
         * and check (every `every` steps, x4); else measure one speculative step */
        if (a->draft.n) {
            double lb = (1 + win_mean(&a->draft) / mtp_auto_plain(g)) / mtp_yield(ctl_acceptance(g, -1), g->draft_len);
            if (lb < MTP_LOWER_BOUND) { a->probing = 1; return 1; }
            if (a->every < MTP_EVERY_CHECK) a->every = MTP_EVERY_CHECK;   /* not even a cheap verification would pay */
            if (++a->since < a->every) return 0;
            a->since = 0;
            if (settle(a, 1)) return 0;
            if (a->every < MTP_EVERY_MAX) a->every = a->every * 4 < MTP_EVERY_MAX ? a->every * 4 : MTP_EVERY_MAX;
            a->n_remeasure++;
        }
        a->probing = 2;
        return 1;
    }
    /* while plain, only a new speculative sample changes the estimate (the plain window moves
     * only its small row term): the medians are not re-sorted at every plain step */
    double rel = a->rel;
    if (a->spec || a->fresh || a->streak || rel <= 0) { rel = a->rel = spec_relative(g); a->fresh = 0; }
    /* hysteresis: switching to speculation needs a clear gain (its samples are few, and a
     * speculative step's passes evict plain ones' weights from the caches), staying needs any */
    int spec = a->spec ? rel < 1 : rel < 1 - MTP_MARGIN;
    if (spec != a->spec) {                                /* the other mode looks better: confirm, then switch */
        if (++a->streak < MTP_CONFIRM) { a->probing = spec; return spec; }
        a->spec = spec;
        a->streak = 0;
        a->every = MTP_EVERY_MIN;
        a->since = 0;
        a->n_switch++;
        return spec;
    }
    a->streak = 0;
    if (++a->since >= a->every) {                         /* re-measure the other mode */
        a->since = 0;
        double lose = spec ? 1 / rel - 1 : rel - 1;       /* how much the other mode lost by */
        if (!spec && settle(a, lose > MTP_FAR)) return 0;
        if (a->every < MTP_EVERY_MAX) a->every *= lose > MTP_FAR ? 4 : 2;
        if (a->every > MTP_EVERY_MAX) a->every = MTP_EVERY_MAX;
        a->n_remeasure++;
        if (spec) return 0;
        a->probe_left = MTP_PROBE_LEN - 1;
        a->probing = 1;
        return 1;
    }
    return spec;
}

/* Auto mode, a draft in hand: verify it? Not when its confidence bucket's acceptance says
 * the verification yields fewer tokens than plain steps would in its time (the verification's
 * cost in plain steps: the step ratio x its share of a speculative step, both from steps of
 * the same moments, so a change of load between the modes' samples does not count). A draft
 * not verified is checked against the next plain step's logits, so every bucket's acceptance
 * keeps being measured. */
static int should_verify(const generator *g, int bucket) {
    const mtp_auto *a = &g->ctl;
    if (g->mode == MTP_ALWAYS) return 1;
    if (a->probing == 2) return 0;
    if (!a->ratio.n || !a->verify.n || !a->spec_step.n) return 1;
    double v_rel = win_mean(&a->ratio) * win_median(&a->verify) / win_median(&a->spec_step);
    return mtp_yield(ctl_acceptance(g, bucket), g->draft_len) > v_rel;
}

/* The MTP distribution's probability of its draft d: its confidence bucket. */
static int confidence_bucket_of(const generator *g, int d, int i) {
    float q;
    if (g->smp->p.temperature == 0.0f) {   /* greedy: softmax of the draft logits at d (not read after) */
        softmax(g->draft_logits, g->model->cfg.vocab_size);   /* the vector kernel: a scalar exp loop cost 30% of a toy step */
        q = g->draft_logits[d];
    } else {
        q = g->q_draft[(size_t)i * g->model->cfg.vocab_size + d];   /* draft i's distribution */
    }
    int b = (int)(q * MTP_CONF_BUCKETS);
    return b < 0 ? 0 : b >= MTP_CONF_BUCKETS ? MTP_CONF_BUCKETS - 1 : b;
}

static int confidence_bucket(const generator *g, int d) { return confidence_bucket_of(g, d, 0); }

/* ------------------------------------------------------------------ MTP: the loop */

/* A main pass over n tokens at position n_history, its main hidden states kept, timed into
 * *sec and profiled as `kind`. */
static int main_pass(generator *g, const int *toks, int n, float *logits, int all_logits, int kind, double *sec,
                     moe_error *err) {
    int H = g->model->cfg.hidden_size, pos = g->n_history;
    model_profile *saved = g->ctx->prof;
    if (g->prof) g->ctx->prof = &g->prof[kind];
    double t0 = clk(g);
    int rc = model_forward_seq(g->model, g->ctx, g->kv, g->slot, toks, n, pos, logits, all_logits, g->hidden + (size_t)pos * H, err);
    *sec += clk(g) - t0;
    g->ctx->prof = saved;
    return rc;
}

/* Self-speculative decoding with the MTP module (spec 5.3).
 * Loop invariant: `x` is the next token (chosen and emitted, not yet fed) at
 * position n = n_history; hidden[0..n) are known; MTP positions [0, mtp_valid) are done.
 *   1. draft: MTP over the missing positions up to n-1 (the last gets (h_{n-1}, x)) -> q -> d
 *   2. verify: one main pass over [x, d] at positions n, n+1 -> p (at n+1) and p' (at n+2)
 *   3. accept d with probability min(1, p(d)/q(d)) (greedy: iff argmax p == d); then the
 *      bonus token comes from p'. On rejection, draw from max(0, p - q) (greedy: argmax p);
 *      the cache entry written for d at n+1 is simply overwritten by the next pass.
 * A step that does not speculate (auto mode) feeds x alone, keeping its hidden state so the
 * MTP module can catch up when drafting resumes. */
static int run_mtp(generator *g, int max_new, generate_emit emit, void *ctx, moe_error *err) {
    const moe_model *m = g->model;
    mtp_costs *cost = &g->cost;
    int V = m->cfg.vocab_size, S = g->kv->S;
    int greedy = g->smp->p.temperature == 0.0f;
    int x = sampler_sample(g->smp, g->logits);
    int stop = emit_token(g, x, emit, ctx, err);
    while (stop == 0 && g->n_generated < max_new) {
        int n = g->n_history;
        if (n + 1 > S) break;   /* the context is full */
        if (g->mode == MTP_AUTO && g->ctl.quiet_left > 0) {
            /* settled on plain: run_plain's step exactly (no hidden state kept, no clock read) */
            g->ctl.quiet_left--;
            if (g->blind_from > n) g->blind_from = n;
            if (model_forward_seq(m, g->ctx, g->kv, g->slot, &x, 1, n, g->logits, 0, NULL, err)) return MOE_FAIL;
            g->history[g->n_history++] = x;
            cost->n_plain++;
            g->ctl.n_plain_steps++;
            g->ctl.n_settled_steps++;
            if (g->n_generated >= max_new) break;
            x = sampler_sample(g->smp, g->logits);
            stop = emit_token(g, x, emit, ctx, err);
            continue;
        }
        int N = g->draft_len < S - n - 1 ? g->draft_len : S - n - 1;   /* drafts: verified at n+1 .. n+N */
        int d = -1, bucket = 0, timed = 1;   /* timed: the step counts in auto mode's windows */
        int drafts[MTP_DRAFT_MAX], buckets[MTP_DRAFT_MAX];
        int shadow = -1;                     /* a draft not verified, checked against the plain step */
        int rows = 0;                        /* cache-only MTP rows caught up this step */
        double t_draft = 0;
        double t_step = clk(g), t_cache = 0;    /* t_cache: cache-only MTP rows, not part of the sample */
        if (N >= 1 && should_draft(g)) {
            /* 1. draft */
            int behind = n - g->mtp_valid;   /* MTP positions to run: 1, 2 after an accepted draft, more after plain steps */
            model_profile *saved = g->ctx->prof;
            if (g->prof) g->ctx->prof = &g->prof[MTP_PASS_DRAFT];
            double t0 = clk(g);
            int rc = mtp_catch_up(g, x, &t_cache, &rows, N > 1 ? g->mtp_h : NULL, err);
            double dt = t_draft = clk(g) - t0;
            g->ctx->prof = saved;
            if (rc) return MOE_FAIL;
            if (behind == 1) { cost->draft_s += dt; cost->n_draft++; }
            else if (behind == 2) { cost->catchup_s += dt; cost->n_catchup++; }
            if (rows == 1) win_push(&g->ctl.row, t_cache);
            if (greedy) {
                d = sampler_argmax(g->draft_logits, V);
            } else {
                sampler_distribution(g->smp, g->draft_logits, g->q_draft);
                d = sampler_draw(g->smp, g->q_draft);
            }
            bucket = confidence_bucket(g, d);
            if (!should_verify(g, bucket)) {
                win_push(&g->ctl.draft, dt - t_cache);
                shadow = d; d = -1; cost->skipped++; timed = 0;
            } else {
                /* chained drafts 2..N: MTP position n-1+i reads (its own hidden at n-2+i, draft i-1) */
                drafts[0] = d;
                buckets[0] = bucket;
                double tc = clk(g);
                if (g->prof) g->ctx->prof = &g->prof[MTP_PASS_DRAFT];
                for (int i = 1; i < N && !rc; i++) {
                    float *hin = g->mtp_h + (size_t)((i - 1) & 1) * m->cfg.hidden_size, *hout = g->mtp_h + (size_t)(i & 1) * m->cfg.hidden_size;
                    rc = model_forward_mtp_seq(m, g->ctx, g->kv, 0, g->slot, hin, &drafts[i - 1], 1, n - 1 + i, g->draft_logits,
                                               0, i + 1 < N ? hout : NULL, err);
                    if (rc) break;
                    if (greedy) {
                        drafts[i] = sampler_argmax(g->draft_logits, V);
                    } else {
                        float *q = g->q_draft + (size_t)i * V;
                        sampler_distribution(g->smp, g->draft_logits, q);
                        drafts[i] = sampler_draw(g->smp, q);
                    }
                    buckets[i] = confidence_bucket_of(g, drafts[i], i);
                }
                g->ctx->prof = saved;
                if (rc) return MOE_FAIL;
                /* the chained rows of the MTP cache are approximate: recomputed from position n on */
                g->mtp_valid = n;
                double dc = clk(g) - tc;
                t_draft += dc;
                cost->chain_s += dc;
                win_push(&g->ctl.draft, dt - t_cache + dc);
            }
        }
        if (d < 0) {   /* a plain step: x alone */
            if (main_pass(g, &x, 1, g->logits, 0, MTP_PASS_PLAIN, &cost->plain_s, err)) return MOE_FAIL;
            if (shadow >= 0) {   /* an unverified draft: would the verification have accepted it? */
                double acc;
                if (greedy) acc = sampler_argmax(g->logits, V) == shadow;
                else {
                    sampler_distribution(g->smp, g->logits, g->p_target);
                    float q = g->q_draft[shadow], p = g->p_target[shadow];
                    acc = q > 0 ? (p >= q ? 1.0 : (double)p / q) : 0.0;   /* min(1, p/q) */
                }
                g->ctl.drafted[bucket]++;
                g->ctl.accepted[bucket] += acc;
                g->ctl.n_shadow++;
            }
            cost->n_plain++;
            g->ctl.n_plain_steps++;
            g->history[g->n_history++] = x;
            if (g->n_generated >= max_new) break;
            x = sampler_sample(g->smp, g->logits);
            stop = emit_token(g, x, emit, ctx, err);
            double t = clk(g) - t_step;
            if (shadow >= 0) {
                cost->rows_s += t_cache;
                cost->unverified_s += t_draft - t_cache;
                cost->step_plain_s += t - t_draft;
            } else {
                cost->step_plain_s += t;
            }
            if (timed) {
                if (g->ctl.spec && g->ctl.spec_step.n) win_push(&g->ctl.ratio, win_recent(&g->ctl.spec_step, MTP_RECENT) / t);
                win_push(&g->ctl.plain, t);
            }
            continue;
        }
        g->ctl.n_spec_steps++;
        /* 2. verify [x, d_1 .. d_N] at positions n .. n+N */
        int toks[MTP_DRAFT_MAX + 1];
        toks[0] = x;
        memcpy(toks + 1, drafts, sizeof(int) * (size_t)N);
        double t0 = cost->verify_s;
        if (main_pass(g, toks, N + 1, g->verify_logits, 1, MTP_PASS_VERIFY, &cost->verify_s, err)) return MOE_FAIL;
        win_push(&g->ctl.verify, cost->verify_s - t0);
        cost->n_verify++;
        g->history[g->n_history++] = x;
        g->n_steps++;
        /* 3. accept the longest prefix the rule accepts (greedy: each draft the main argmax
         *    before it; sampling: each with min(1, p/q), the first rejection resampled) */
        int acc = 0, resample = -1;
        for (int i = 0; i < N; i++) {
            const float *z = g->verify_logits + (size_t)i * V;
            g->n_drafted++;
            cost->drafted[buckets[i]]++;
            g->ctl.drafted[buckets[i]]++;
            int ok;
            if (greedy) {
                ok = sampler_argmax(z, V) == drafts[i];
            } else {
                sampler_distribution(g->smp, z, g->p_target);
                resample = speculative_resolve(g->smp, g->p_target, g->q_draft + (size_t)i * V, drafts[i], V);
                ok = resample < 0;
            }
            if (!ok) break;
            acc++;
            g->n_accepted++;
            cost->accepted[buckets[i]]++;
            g->ctl.accepted[buckets[i]]++;
        }
        for (int i = 0; i < acc && stop == 0 && g->n_generated < max_new; i++) {
            g->history[g->n_history++] = drafts[i];
            stop = emit_token(g, drafts[i], emit, ctx, err);
        }
        if (stop || g->n_generated >= max_new) break;
        const float *zx = g->verify_logits + (size_t)acc * V;   /* the logits the next token comes from */
        memcpy(g->logits, zx, sizeof(float) * (size_t)V);
        if (acc == N) x = sampler_sample(g->smp, g->logits);    /* the bonus token */
        else x = greedy ? sampler_argmax(zx, V) : resample;
        stop = emit_token(g, x, emit, ctx, err);
        double t_all = clk(g) - t_step;
        if (rows > 1) cost->rows_s += t_cache;
        cost->step_spec_s += t_all - (rows > 1 ? t_cache : 0);
        cost->tok_spec += 1 + acc;
        if (timed) {
            double t = t_all - t_cache;
            if (!g->ctl.spec && g->ctl.plain.n) win_push(&g->ctl.ratio, t / win_recent(&g->ctl.plain, MTP_RECENT));
            win_push(&g->ctl.spec_step, t);
            g->ctl.fresh = 1;
        }
    }
    return stop < 0 ? MOE_FAIL : MOE_OK;
}

int generator_run(generator *g, int max_new, generate_emit emit, void *ctx, moe_error *err) {
    g->n_generated = 0;
    g->n_drafted = g->n_accepted = g->n_steps = 0;
    memset(&g->cost, 0, sizeof g->cost);
    g->cost.draft_len = g->draft_len;
    double t0 = now_seconds();
    int rc = MOE_OK;
    if (max_new > 0) rc = g->use_mtp ? run_mtp(g, max_new, emit, ctx, err) : run_plain(g, max_new, emit, ctx, err);
    flush_stream(g, emit, ctx);
    g->gen_seconds = now_seconds() - t0;
    return rc;
}
