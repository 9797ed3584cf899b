/* serve_sched.c - slots, queue and the engine thread of `moe serve` (see serve_sched.h). */
#include "serve_sched.h"
#include "serve_mtp_auto.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ requests */

serve_req *serve_req_new(const int *prompt, int n, serve_params *p, int max_tokens) {
    serve_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->prompt = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    r->tok_cap = max_tokens;
    r->tok_id = malloc(sizeof(int) * (size_t)max_tokens);
    r->tok_pos = malloc(sizeof(int) * (size_t)max_tokens);
    r->tok_end = malloc(sizeof(size_t) * (size_t)max_tokens);
    r->text_cap = 256;
    r->text = malloc(r->text_cap);
    if (!r->prompt || !r->tok_id || !r->tok_pos || !r->tok_end || !r->text) {
        r->refs = 1;
        serve_req_unref(r);
        return NULL;
    }
    memcpy(r->prompt, prompt, sizeof(int) * (size_t)n);
    r->n_prompt = n;
    r->max_tokens = max_tokens;
    r->sp = p->sp;
    r->seed_given = p->seed_given;
    for (int i = 0; i < p->n_stop; i++) { r->stop[i] = p->stop[i]; p->stop[i] = NULL; }
    r->n_stop = p->n_stop;
    p->n_stop = 0;
    r->want_routing = p->want_routing;
    r->bias_ids = p->bias_ids;
    r->bias = p->bias;
    r->n_bias = p->n_bias;
    p->bias_ids = NULL;
    p->bias = NULL;
    p->n_bias = 0;
    r->slot = -1;
    r->refs = 1;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    return r;
}

void serve_req_unref(serve_req *r) {
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    int left = --r->refs;
    pthread_mutex_unlock(&r->mu);
    if (left > 0) return;
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->prompt);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->text);
    free(r->bias_ids);
    free(r->bias);
    free(r->tok_id);
    free(r->tok_pos);
    free(r->tok_end);
    free(r->r_ids);
    free(r->r_w);
    free(r->r_groups);
    free(r->r_ngroups);
    free(r->r_k);
    free(r);
}

void serve_req_cancel(serve_req *r) { __atomic_store_n(&r->cancelled, 1, __ATOMIC_RELEASE); }

const char *serve_finish_name(serve_finish f) {
    return f == FINISH_LENGTH ? "length" : f == FINISH_ERROR ? "error" : "stop";
}

serve_routing serve_req_routing(const serve_req *r, int i) {
    size_t lk = (size_t)r->L * r->K, lg = (size_t)r->L * r->Gmax;
    return (serve_routing){r->L, r->K, r->Gmax, r->r_ids + i * lk, r->r_w + i * lk, r->r_groups + i * lg,
                           r->r_ngroups + (size_t)i * r->L, r->r_k + (size_t)i * r->L};
}

/* Allocates the routing records (engine thread, at admission: the shape is the model's). */
static int req_routing_alloc(serve_req *r, int L, int K, int Gmax) {
    r->L = L; r->K = K; r->Gmax = Gmax > 0 ? Gmax : 1;
    size_t n = (size_t)r->tok_cap;
    r->r_ids = malloc(sizeof(int) * n * L * K);
    r->r_w = malloc(sizeof(float) * n * L * K);
    r->r_groups = malloc(sizeof(int) * n * L * r->Gmax);
    r->r_ngroups = malloc(sizeof(int) * n * L);
    r->r_k = malloc(sizeof(int) * n * L);
    return r->r_ids && r->r_w && r->r_groups && r->r_ngroups && r->r_k ? 0 : -1;
}

/* ------------------------------------------------------------------ scheduler state */

typedef enum { SLOT_FREE = 0, SLOT_PREFILL, SLOT_DECODE } slot_state;

typedef struct {
    slot_state state;
    serve_req *req;              /* NULL when free */
    int *hist;                   /* [S] tokens whose K/V the slot's cache holds */
    int n_hist;
    int next;                    /* DECODE: sampled token, not yet fed */
    int n_gen;                   /* tokens generated for req */
    int row;                     /* logits row in this pass (-1: none) */
    int route_pos;               /* position whose routing is recorded this pass (-1: none) */
    int route_pos2;              /* --mtp: the drafted token's position (record 1), -1: none */
    unsigned long last_used;     /* step of the last request */
    sampler smp;                 /* [V] scratch; params per request */
    tokenizer_stream ts;
    char *held;                  /* [held_cap] text that may begin a stop string */
    size_t held_len, held_cap;
    /* routing of route_pos (record 0) and route_pos2 (record 1), per main layer */
    int *r_ids;                  /* [2, L, K] */
    float *r_w;                  /* [2, L, K] */
    int *r_groups;               /* [2, L, Gmax] */
    int *r_ngroups;              /* [2, L] */
    int *r_k;                    /* [2, L] */
    /* --mtp self-speculative decoding */
    float *hidden;               /* [S, H] main hidden after the final norm, per cached position */
    int mtp_valid;               /* MTP positions [0, mtp_valid) are in the slot's MTP cache */
    int draft;                   /* this step's drafted token (-1: none) */
    float *q_draft;              /* [V] MTP distribution the draft was drawn from (sampling) */
    float *p_target;             /* [V] main distribution at the draft's position (sampling) */
} slot;

struct serve_sched {
    const moe_model *m;
    moe_ctx *c;                  /* the engine thread's context (scratch, pool, observer) */
    moe_kv *kv;                  /* N slots of S positions */
    const tokenizer *tok;
    sched_options o;
    int S, V, L, E, K, Gmax, B, eos;
    slot *slots;                 /* [N] */
    float *logits;               /* [2N, V] one row per slot (two with a draft) */
    moe_batch batch;             /* [B + 2N] the pass */
    int H;
    float *hid_out;              /* --mtp: [B + 2N, H] hidden of every token of the pass */
    moe_batch mbatch;            /* --mtp: [B + N] the MTP pass (catch-up and drafts) */
    float *mtp_in;               /* --mtp: [B + N, H] its hidden inputs */
    float *mtp_logits;           /* --mtp: [N, V] draft logits */
    unsigned long long n_drafted, n_accepted;   /* --mtp, engine thread only (copied into st per step) */
    serve_mtp_auto ma;           /* --mtp auto: which steps draft (engine thread only) */
    unsigned long long *load;    /* [L, E] tokens routed to each expert (relaxed atomics) */
    unsigned long step_no;
    int rr;                      /* round-robin start for prefill chunks */
    pthread_t thread;
    pthread_mutex_t mu;          /* guards queue, stopping, stats */
    pthread_cond_t cv;
    serve_req **queue;           /* [queue_max] FIFO ring */
    int q_head, q_len;
    int stopping;
    int running;                 /* the engine thread exists */
    int n_busy;                  /* atomic: slots running a request (down before the request's end is signalled) */
    sched_stats st;
};

/* ------------------------------------------------------------------ routing observer */

static void on_route(void *ctx, int layer, int seq, int pos, const route_decision *d) {
    serve_sched *s = ctx;
    if (layer >= s->L) return;     /* MTP blocks */
    unsigned long long *row = s->load + (size_t)layer * s->E;
    for (int j = 0; j < d->k; j++) __atomic_fetch_add(&row[d->ids[j]], 1ull, __ATOMIC_RELAXED);
    slot *sl = &s->slots[seq];
    if (!sl->req || !sl->req->want_routing) return;
    int rec = pos == sl->route_pos ? 0 : pos == sl->route_pos2 ? 1 : -1;
    if (rec < 0) return;
    size_t L = (size_t)s->L, lk = (size_t)rec * L * s->K + (size_t)layer * s->K;
    int k = d->k < s->K ? d->k : s->K;
    sl->r_k[rec * L + layer] = k;
    memcpy(sl->r_ids + lk, d->ids, sizeof(int) * (size_t)k);
    memcpy(sl->r_w + lk, d->weights, sizeof(float) * (size_t)k);
    int g = d->n_groups_kept < s->Gmax ? d->n_groups_kept : s->Gmax;
    sl->r_ngroups[rec * L + layer] = g;
    if (g > 0) memcpy(sl->r_groups + (size_t)rec * L * s->Gmax + (size_t)layer * s->Gmax, d->groups, sizeof(int) * (size_t)g);
}

/* ------------------------------------------------------------------ the forward pass */

/* ------------------------------------------------------------------ per-slot output */

/* The request's logit_bias on logits z [V]. */
static void apply_bias(const serve_req *r, float *z) {
    for (int i = 0; i < r->n_bias; i++) z[r->bias_ids[i]] += r->bias[i];
}

static void text_append(serve_req *r, const char *t, size_t n) {
    if (!n) return;
    if (r->text_len + n + 1 > r->text_cap) {
        size_t cap = r->text_cap * 2;
        while (cap < r->text_len + n + 1) cap *= 2;
        char *p = realloc(r->text, cap);
        if (!p) return;   /* out of memory: the text is cut, the stream goes on */
        r->text = p;
        r->text_cap = cap;
    }
    memcpy(r->text + r->text_len, t, n);
    r->text_len += n;
    r->text[r->text_len] = 0;
}

static void held_append(slot *sl, const char *t, size_t n) {
    if (sl->held_len + n > sl->held_cap) {
        size_t cap = sl->held_cap * 2 + n;
        char *p = realloc(sl->held, cap);
        if (!p) return;
        sl->held = p;
        sl->held_cap = cap;
    }
    memcpy(sl->held + sl->held_len, t, n);
    sl->held_len += n;
}

/* Stop strings over the held text: returns 1 (and the text before the match in *rel)
 * when one matched; else releases all but the longest suffix that may begin one. */
static int stop_check(slot *sl, const serve_req *r, size_t *rel) {
    const char *h = sl->held;
    size_t n = sl->held_len, best = n;
    int found = 0;
    for (int i = 0; i < r->n_stop; i++) {
        size_t sn = strlen(r->stop[i]);
        if (sn > n) continue;
        const char *at = memmem(h, n, r->stop[i], sn);
        if (at && (size_t)(at - h) < best) { best = (size_t)(at - h); found = 1; }
    }
    if (found) { *rel = best; return 1; }
    size_t keep = 0;
    for (int i = 0; i < r->n_stop; i++) {
        size_t sn = strlen(r->stop[i]);
        for (size_t k = sn - 1 < n ? sn - 1 : n; k > keep; k--)
            if (!memcmp(h + n - k, r->stop[i], k)) { keep = k; break; }
    }
    *rel = n - keep;
    return 0;
}

/* Ends the slot's request: finish reason, wake the reader, drop the engine's reference. */
static void slot_finish(serve_sched *s, slot *sl, serve_finish f, const char *msg) {
    serve_req *r = sl->req;
    if (!r) return;
    __atomic_sub_fetch(&s->n_busy, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&r->mu);
    if (f != FINISH_ERROR && sl->held_len) text_append(r, sl->held, sl->held_len);   /* no stop string matched */
    if (f != FINISH_ERROR) {
        const char *t;
        size_t n;
        tokenizer_stream_flush(&sl->ts, &t, &n);
        text_append(r, t, n);
    }
    r->finish = f;
    if (msg) snprintf(r->error, sizeof r->error, "%.250s", msg);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    sl->held_len = 0;
    sl->req = NULL;
    sl->state = SLOT_FREE;
    serve_req_unref(r);
}

/* One sampled token for the slot's request, its routing in record rec. Returns 1 when the
 * request is finished. */
static int slot_token(serve_sched *s, slot *sl, int tok, int pos, int rec) {
    serve_req *r = sl->req;
    if (tok == s->eos) { slot_finish(s, sl, FINISH_STOP, NULL); return 1; }
    sl->n_gen++;
    const char *t = "";
    size_t n = 0;
    moe_error err = {{0}};
    if (s->tok && tokenizer_token_bytes(s->tok, tok, &n)) {
        if (tokenizer_stream_push(s->tok, &sl->ts, tok, &t, &n, &err)) n = 0;
    } else {
        n = 0;   /* a padded vocabulary id the tokenizer does not know: no text */
    }
    size_t rel = 0;
    int stopped = 0;
    if (r->n_stop) {
        held_append(sl, t, n);
        stopped = stop_check(sl, r, &rel);
    }
    pthread_mutex_lock(&r->mu);
    if (r->n_stop) {
        text_append(r, sl->held, rel);
        memmove(sl->held, sl->held + rel, sl->held_len - rel);
        sl->held_len -= rel;
        if (stopped) sl->held_len = 0;
    } else {
        text_append(r, t, n);
    }
    int i = r->n_tok;
    r->tok_id[i] = tok;
    r->tok_pos[i] = pos;
    r->tok_end[i] = r->text_len;
    if (r->want_routing && r->r_ids) {
        size_t lk = (size_t)s->L * s->K, lg = (size_t)s->L * s->Gmax, L = (size_t)s->L;
        memcpy(r->r_ids + i * lk, sl->r_ids + rec * lk, sizeof(int) * lk);
        memcpy(r->r_w + i * lk, sl->r_w + rec * lk, sizeof(float) * lk);
        memcpy(r->r_groups + i * lg, sl->r_groups + rec * lg, sizeof(int) * lg);
        memcpy(r->r_ngroups + (size_t)i * L, sl->r_ngroups + rec * L, sizeof(int) * L);
        memcpy(r->r_k + (size_t)i * L, sl->r_k + rec * L, sizeof(int) * L);
    }
    if (!r->t_first) r->t_first = now_s();
    r->n_tok = i + 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (stopped) { slot_finish(s, sl, FINISH_STOP, NULL); return 1; }
    if (sl->n_gen >= r->max_tokens || sl->n_hist >= s->S) { slot_finish(s, sl, FINISH_LENGTH, NULL); return 1; }
    sl->next = tok;
    return 0;
}

/* ------------------------------------------------------------------ admission */

static int lcp(const int *a, int na, const int *b, int nb) {
    int i = 0;
    while (i < na && i < nb && a[i] == b[i]) i++;
    return i;
}

/* A cache operation, told first to the ranks following this one (--ep). */
static void sched_kv(serve_sched *s, int op, int seq, int a) {
    if (s->o.follow) s->o.follow->kv_op(s->o.follow->ctx, op, seq, a, 0);
    if (op == SCHED_KV_CLEAR) kv_clear(s->kv, seq);
    else kv_keep(s->kv, seq, a);
}

/* Puts r into a free slot (called with s->mu held). Returns 0, or -1 with no free slot. */
static int admit(serve_sched *s, serve_req *r) {
    int best = -1, best_lcp = -1;
    for (int i = 0; i < s->o.n_slots; i++) {
        slot *sl = &s->slots[i];
        if (sl->state != SLOT_FREE) continue;
        int c = r->no_cache ? 0 : lcp(sl->hist, sl->n_hist, r->prompt, r->n_prompt);
        if (c > best_lcp || (c == best_lcp && sl->last_used < s->slots[best].last_used)) { best = i; best_lcp = c; }
    }
    if (best < 0) return -1;
    slot *sl = &s->slots[best];
    int keep = best_lcp < r->n_prompt - 1 ? best_lcp : r->n_prompt - 1;   /* the last token runs for its logits */
    sl->n_hist = keep;
    sched_kv(s, SCHED_KV_KEEP, best, keep);
    sl->req = r;
    sl->state = SLOT_PREFILL;
    __atomic_add_fetch(&s->n_busy, 1, __ATOMIC_RELEASE);
    sl->n_gen = 0;
    sl->held_len = 0;
    sl->last_used = ++s->step_no;
    sl->ts.npend = 0;
    sl->smp.p = r->sp;
    sl->smp.rng = r->sp.seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;   /* as sampler_init */
    if (!sl->smp.rng) sl->smp.rng = 1;
    memset(sl->r_k, 0, sizeof(int) * 2 * (size_t)s->L);
    memset(sl->r_ngroups, 0, sizeof(int) * 2 * (size_t)s->L);
    /* MTP position p reads (h_p, token p+1): valid while token p+1 was kept */
    if (sl->mtp_valid > keep - 1) sl->mtp_valid = keep > 0 ? keep - 1 : 0;
    if (r->want_routing && req_routing_alloc(r, s->L, s->K, s->Gmax)) r->want_routing = 0;
    pthread_mutex_lock(&r->mu);
    r->slot = best;
    r->n_cached = keep;
    pthread_mutex_unlock(&r->mu);
    s->st.cached_tokens += (unsigned long long)keep;
    s->st.prompt_tokens += (unsigned long long)r->n_prompt;
    return 0;
}

/* ------------------------------------------------------------------ the engine thread */

#define MTP_AUTO_MODE 2   /* sched_options.mtp: auto (generate.h's MTP_AUTO) */


/* --mtp, before the main pass: per decoding slot, the MTP module catches up over the
 * positions it lacks (p gets (h_p, token p+1); the pending token x is token n) and, once
 * caught up, drafts the token after x from the logits of position n-1. The rows before n-1
 * only need their MTP cache rows (model_forward_mtp_cache: no attention, experts or head);
 * the drafting rows of all slots go in one model_forward_mtp. *catch_up is set when some
 * slot needed more than the two rows a speculative step leaves behind (after a prompt, or
 * after plain steps). Returns the pass's status. */
/* --mtp auto leaves out seeded sampled requests: whether a step drafts depends on timing, and
 * the speculative rule draws other random numbers than plain sampling (the same distribution,
 * not the same text), so a seed would no longer reproduce its answer. Greedy requests and
 * unseeded sampled ones draft; --mtp-mode always drafts for every request, reproducibly. */
static int may_draft(const serve_sched *s, const slot *sl) {
    return s->o.mtp != MTP_AUTO_MODE || sl->smp.p.temperature == 0.0f || !sl->req->seed_given;
}

static int mtp_draft(serve_sched *s, int *catch_up, moe_error *err) {
    int N = s->o.n_slots, H = s->H, rows = 0, budget = s->mbatch.cap;
    int drow[64];
    *catch_up = 0;
    batch_clear(&s->mbatch);   /* 1. cache rows */
    for (int i = 0; i < N; i++) {
        slot *sl = &s->slots[i];
        sl->draft = -1;
        drow[i] = -1;
        int n = sl->n_hist;
        if (sl->state != SLOT_DECODE || n + 2 > s->S || budget <= 1 || !may_draft(s, sl)) continue;
        int p0 = sl->mtp_valid, take = n - 1 - p0 < budget - 1 ? n - 1 - p0 : budget - 1;
        if (take < 0) take = 0;
        if (n - p0 > 2) *catch_up = 1;
        for (int j = 0; j < take; j++) {
            int p = p0 + j;
            memcpy(s->mtp_in + (size_t)s->mbatch.n * H, sl->hidden + (size_t)p * H, sizeof(float) * (size_t)H);
            batch_add(&s->mbatch, sl->hist[p + 1], p, i, 0);
        }
        sl->mtp_valid = p0 + take;
        budget -= take;
    }
    if (s->mbatch.n && model_forward_mtp_cache(s->m, s->c, s->kv, 0, &s->mbatch, s->mtp_in, err)) {
        for (int i = 0; i < N; i++) s->slots[i].mtp_valid = 0;
        return MOE_FAIL;
    }
    batch_clear(&s->mbatch);   /* 2. the drafting rows: (h_{n-1}, x) of each caught-up slot */
    for (int i = 0; i < N; i++) {
        slot *sl = &s->slots[i];
        int n = sl->n_hist;
        if (sl->state != SLOT_DECODE || n + 2 > s->S || sl->mtp_valid != n - 1 || rows >= s->mbatch.cap || !may_draft(s, sl))
            continue;
        memcpy(s->mtp_in + (size_t)s->mbatch.n * H, sl->hidden + (size_t)(n - 1) * H, sizeof(float) * (size_t)H);
        batch_add(&s->mbatch, sl->next, n - 1, i, 1);
        drow[i] = rows++;
        sl->mtp_valid = n;
    }
    if (s->mbatch.n == 0) return MOE_OK;
    if (model_forward_mtp(s->m, s->c, s->kv, 0, &s->mbatch, s->mtp_in, s->mtp_logits, NULL, err)) {
        for (int i = 0; i < N; i++) s->slots[i].mtp_valid = 0;
        return MOE_FAIL;
    }
    for (int i = 0; i < N; i++) {
        slot *sl = &s->slots[i];
        if (drow[i] < 0) continue;
        float *z = s->mtp_logits + (size_t)drow[i] * s->V;
        apply_bias(sl->req, z);
        if (sl->smp.p.temperature == 0.0f) {
            sl->draft = sampler_argmax(z, s->V);
        } else {
            sampler_distribution(&sl->smp, z, sl->q_draft);
            sl->draft = sampler_draw(&sl->smp, sl->q_draft);
        }
    }
    return MOE_OK;
}

/* --mtp, after the main pass: the slot fed [x, d] at n, n+1; accept d as the rules of
 * engine/generate.c (greedy: iff the main argmax at n is d; sampling: with probability
 * min(1, p(d)/q(d)), else a draw from max(0, p - q)), then the bonus token from n+1.
 * Returns the tokens generated. */
static int mtp_verify(serve_sched *s, slot *sl, int seq) {
    int n = sl->n_hist, V = s->V, d = sl->draft;   /* x is fed: hist[n - 1] */
    const float *z0 = s->logits + (size_t)sl->row * V, *z1 = z0 + V;
    int greedy = sl->smp.p.temperature == 0.0f, accept;
    s->n_drafted++;
    if (greedy) {
        accept = sampler_argmax(z0, V) == d;
    } else {
        sampler_distribution(&sl->smp, z0, sl->p_target);
        accept = sl->q_draft[d] > 0.0f && sampler_uniform(&sl->smp) * sl->q_draft[d] < sl->p_target[d];
    }
    if (accept) {
        s->n_accepted++;
        sl->hist[sl->n_hist++] = d;
        if (slot_token(s, sl, d, n - 1, 0)) return d != s->eos;
        int b = sampler_sample(&sl->smp, z1);
        slot_token(s, sl, b, n, 1);
        return 1 + (b != s->eos);
    }
    sched_kv(s, SCHED_KV_KEEP, seq, n);   /* drop d at position n */
    int x;
    if (greedy) {
        x = sampler_argmax(z0, V);
    } else {
        double mass = 0;
        for (int i = 0; i < V; i++) {
            float r = sl->p_target[i] - sl->q_draft[i];
            sl->p_target[i] = r > 0.0f ? r : 0.0f;
            mass += sl->p_target[i];
        }
        if (mass > 0) for (int i = 0; i < V; i++) sl->p_target[i] = (float)(sl->p_target[i] / mass);
        else sampler_distribution(&sl->smp, z0, sl->p_target);
        x = sampler_draw(&sl->smp, sl->p_target);
    }
    slot_token(s, sl, x, n - 1, 0);
    return x != s->eos;
}

/* One step: (MTP drafts,) build the pass, run it, sample. */
static void step(serve_sched *s) {
    int N = s->o.n_slots, rows = 0, rc = MOE_OK, sampled = 0;
    double t0 = now_s();
    moe_error err = {{0}};
    /* --mtp: draft in this step? (auto: where it pays, at this many decoding slots) */
    int n_dec = 0, spec = 0, catch_up = 0, prefill = 0;
    for (int i = 0; i < N; i++) n_dec += s->slots[i].state == SLOT_DECODE;
    if (s->o.mtp && n_dec > 0) spec = s->o.mtp == MTP_AUTO_MODE ? sma_decide(&s->ma, n_dec) : 1;
    for (int i = 0; i < N; i++) s->slots[i].draft = -1;
    if (spec) {
        rc = mtp_draft(s, &catch_up, &err);
        spec = 0;   /* the step speculated if some slot drafted (seeded sampled requests do not, in auto) */
        for (int i = 0; i < N; i++) spec |= s->slots[i].draft >= 0;
    }
    batch_clear(&s->batch);
    for (int i = 0; i < N; i++) {
        slot *sl = &s->slots[i];
        sl->row = -1;
        sl->route_pos = sl->route_pos2 = -1;
        if (sl->state != SLOT_DECODE) continue;
        sl->row = rows++;
        sl->route_pos = sl->n_hist;
        batch_add(&s->batch, sl->next, sl->n_hist, i, 1);
        if (s->o.mtp && sl->draft >= 0) {
            rows++;
            sl->route_pos2 = sl->n_hist + 1;
            batch_add(&s->batch, sl->draft, sl->n_hist + 1, i, 1);
        }
    }
    int budget = s->B - s->batch.n;
    if (budget < 1) budget = 1;
    int chunk[64] = {0};   /* prompt tokens of each slot in this pass (N <= 64) */
    for (int k = 0; k < N && budget > 0; k++) {
        int i = (s->rr + k) % N;
        slot *sl = &s->slots[i];
        if (sl->state != SLOT_PREFILL) continue;
        int left = sl->req->n_prompt - sl->n_hist, take = left < budget ? left : budget;
        int done = take == left;
        for (int j = 0; j < take; j++)
            batch_add(&s->batch, sl->req->prompt[sl->n_hist + j], sl->n_hist + j, i, done && j == take - 1);
        if (done) { sl->row = rows++; sl->route_pos = sl->n_hist + take - 1; }
        chunk[i] = take;
        prefill += take;
        budget -= take;
    }
    s->rr = (s->rr + 1) % N;
    if (s->batch.n == 0) return;
    if (rc == MOE_OK && s->o.follow) rc = s->o.follow->forward(s->o.follow->ctx, &s->batch, &err);
    if (rc == MOE_OK) rc = model_forward(s->m, s->c, s->kv, &s->batch, s->logits, s->o.mtp ? s->hid_out : NULL, &err);
    if (rc == MOE_OK && s->o.mtp)   /* keep every position's hidden state for the MTP module */
        for (int i = 0; i < s->batch.n; i++)
            memcpy(s->slots[s->batch.seq[i]].hidden + (size_t)s->batch.pos[i] * s->H, s->hid_out + (size_t)i * s->H,
                   sizeof(float) * (size_t)s->H);
    /* the pass is counted before any request of it finishes: a client reading /metrics right
     * after its answer sees the batch tokens of its last pass */
    pthread_mutex_lock(&s->mu);
    s->st.passes++;
    s->st.batch_tokens += (unsigned long long)s->batch.n;
    pthread_mutex_unlock(&s->mu);
    /* advance every sequence in the pass; sample where logits came back */
    for (int i = 0; i < N; i++) {
        slot *sl = &s->slots[i];
        if (sl->state == SLOT_FREE) continue;
        if (rc) {
            slot_finish(s, sl, FINISH_ERROR, err.msg);
            sl->n_hist = sl->mtp_valid = 0;
            sched_kv(s, SCHED_KV_CLEAR, i, 0);
            continue;
        }
        if (sl->row >= 0 && sl->req->n_bias) {
            apply_bias(sl->req, s->logits + (size_t)sl->row * s->V);
            if (sl->state == SLOT_DECODE && s->o.mtp && sl->draft >= 0) apply_bias(sl->req, s->logits + (size_t)(sl->row + 1) * s->V);
        }
        if (sl->state == SLOT_DECODE) {
            sl->hist[sl->n_hist++] = sl->next;
            if (s->o.mtp && sl->draft >= 0) { sampled += mtp_verify(s, sl, i); continue; }
        } else {
            int take = chunk[i];
            if (sl->row < 0 && take == 0) continue;    /* not in this pass */
            memcpy(sl->hist + sl->n_hist, sl->req->prompt + sl->n_hist, sizeof(int) * (size_t)take);
            sl->n_hist += take;
            if (sl->row < 0) continue;                 /* prompt not finished */
            sl->state = SLOT_DECODE;
        }
        int tok = sampler_sample(&sl->smp, s->logits + (size_t)sl->row * s->V);
        slot_token(s, sl, tok, sl->route_pos, 0);
        sampled += tok != s->eos;
    }
    if (s->o.mtp == MTP_AUTO_MODE && n_dec > 0) sma_record(&s->ma, spec, n_dec, now_s() - t0, sampled, !prefill && !catch_up && !rc);
    pthread_mutex_lock(&s->mu);
    s->st.gen_tokens += (unsigned long long)sampled;
    s->st.mtp_drafted = s->n_drafted;
    s->st.mtp_accepted = s->n_accepted;
    s->st.mtp_spec_steps = s->ma.n_spec_steps;
    s->st.mtp_plain_steps = s->ma.n_plain_steps;
    s->st.mtp_settled = s->ma.quiet_left > 0;
    s->st.busy_seconds += now_s() - t0;
    pthread_mutex_unlock(&s->mu);
}

static int n_active(const serve_sched *s) {
    int n = 0;
    for (int i = 0; i < s->o.n_slots; i++) n += s->slots[i].state != SLOT_FREE;
    return n;
}

static void *engine_main(void *arg) {
    serve_sched *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->stopping && s->q_len == 0 && n_active(s) == 0) pthread_cond_wait(&s->cv, &s->mu);
        if (s->stopping) break;
        /* cancelled requests leave their slots (the tokens they fed stay cached) */
        for (int i = 0; i < s->o.n_slots; i++) {
            slot *sl = &s->slots[i];
            if (sl->req && __atomic_load_n(&sl->req->cancelled, __ATOMIC_ACQUIRE)) {
                s->st.cancelled++;
                slot_finish(s, sl, FINISH_STOP, NULL);
            }
        }
        while (s->q_len > 0) {
            serve_req *r = s->queue[s->q_head];
            if (__atomic_load_n(&r->cancelled, __ATOMIC_ACQUIRE)) {
                s->st.cancelled++;
            } else if (admit(s, r)) {
                break;
            }
            s->q_head = (s->q_head + 1) % s->o.queue_max;
            s->q_len--;
            if (r->slot < 0) {   /* cancelled while queued */
                pthread_mutex_lock(&r->mu);
                r->finish = FINISH_STOP;
                pthread_cond_broadcast(&r->cv);
                pthread_mutex_unlock(&r->mu);
                serve_req_unref(r);
            }
        }
        pthread_mutex_unlock(&s->mu);
        step(s);
        pthread_mutex_lock(&s->mu);
        int used = 0;
        for (int i = 0; i < s->o.n_slots; i++) used += s->slots[i].n_hist;
        s->st.kv_used = used;
    }
    /* stopping: every request gets its end */
    for (int i = 0; i < s->o.n_slots; i++) slot_finish(s, &s->slots[i], FINISH_STOP, NULL);
    while (s->q_len > 0) {
        serve_req *r = s->queue[s->q_head];
        s->q_head = (s->q_head + 1) % s->o.queue_max;
        s->q_len--;
        pthread_mutex_lock(&r->mu);
        r->finish = FINISH_STOP;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        serve_req_unref(r);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ------------------------------------------------------------------ start / stop */

void sched_free(serve_sched *s);

void sched_free(serve_sched *s) {
    if (!s) return;
    sched_stop(s);
    if (s->slots) {
        for (int i = 0; i < s->o.n_slots; i++) {
            slot *sl = &s->slots[i];
            free(sl->hist);
            sampler_free(&sl->smp);
            tokenizer_stream_free(&sl->ts);
            free(sl->held);
            free(sl->r_ids);
            free(sl->r_w);
            free(sl->r_groups);
            free(sl->r_ngroups);
            free(sl->r_k);
            free(sl->hidden);
            free(sl->q_draft);
            free(sl->p_target);
        }
    }
    if (s->c) {
        s->c->on_route = NULL;
        s->c->on_route_ctx = NULL;
    }
    free(s->slots);
    free(s->logits);
    batch_free(&s->batch);
    batch_free(&s->mbatch);
    free(s->hid_out);
    free(s->mtp_in);
    free(s->mtp_logits);
    free(s->load);
    free(s->queue);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

int sched_start(serve_sched **out, const moe_model *m, moe_ctx *c, moe_kv *kv, const tokenizer *tok,
                const sched_options *o, moe_error *err) {
    *out = NULL;
    if (o->n_slots < 1 || o->n_slots > 64) return moe_error_set(err, "--parallel %d: use 1 to 64 slots", o->n_slots);
    if (kv->n_slots < o->n_slots) return moe_error_set(err, "the KV cache has %d slots for %d sequences", kv->n_slots, o->n_slots);
    if (o->queue_max < 1) return moe_error_set(err, "--queue %d: must be at least 1", o->queue_max);
    if (o->follow && o->mtp)
        return moe_error_set(err, "--mtp with expert parallelism: not supported yet (the drafts' inputs are rank 0's "
                                  "hidden states)");
    serve_sched *s = calloc(1, sizeof *s);
    if (!s) return moe_error_set(err, "out of memory");
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->m = m;
    s->c = c;
    s->kv = kv;
    s->tok = tok;
    s->o = *o;
    s->S = kv->S;
    s->V = m->cfg.vocab_size;
    s->L = m->cfg.num_hidden_layers;
    s->E = m->cfg.n_routed_experts > 0 ? m->cfg.n_routed_experts : 1;
    s->K = m->K > 0 ? m->K : 1;
    s->Gmax = m->cfg.n_group > 0 ? m->cfg.n_group : 1;
    s->B = o->batch > 0 && o->batch < c->B ? o->batch : c->B;
    s->eos = m->cfg.eos_token_id;
    if (tok && tokenizer_eos_id(tok) >= 0) s->eos = tokenizer_eos_id(tok);
    int N = o->n_slots, cap = s->B + 2 * N;
    s->H = m->cfg.hidden_size;
    if (o->mtp && m->cfg.num_nextn_predict_layers < 1) {
        sched_free(s);
        return moe_error_set(err, "--mtp: this checkpoint has no MTP module (num_nextn_predict_layers = 0)");
    }
    s->slots = calloc((size_t)N, sizeof *s->slots);
    s->logits = malloc(sizeof(float) * 2 * (size_t)N * s->V);
    s->load = calloc((size_t)s->L * s->E, sizeof *s->load);
    s->queue = calloc((size_t)o->queue_max, sizeof *s->queue);
    if (o->mtp) {
        s->hid_out = malloc(sizeof(float) * (size_t)cap * s->H);
        s->mtp_in = malloc(sizeof(float) * (size_t)(s->B + N) * s->H);
        s->mtp_logits = malloc(sizeof(float) * (size_t)N * s->V);
    }
    if (!s->slots || !s->logits || !s->load || !s->queue || batch_init(&s->batch, cap, err) ||
        (o->mtp && (!s->hid_out || !s->mtp_in || !s->mtp_logits || batch_init(&s->mbatch, s->B + N, err)))) {
        sched_free(s);
        return moe_error_set(err, "out of memory for the scheduler");
    }
    for (int i = 0; i < N; i++) {
        slot *sl = &s->slots[i];
        sl->hist = malloc(sizeof(int) * (size_t)s->S);
        sl->held_cap = 2 * SERVE_MAX_STOP_LEN + 64;
        sl->held = malloc(sl->held_cap);
        sl->r_ids = calloc(2 * (size_t)s->L * s->K, sizeof(int));
        sl->r_w = calloc(2 * (size_t)s->L * s->K, sizeof(float));
        sl->r_groups = calloc(2 * (size_t)s->L * s->Gmax, sizeof(int));
        sl->r_ngroups = calloc(2 * (size_t)s->L, sizeof(int));
        sl->r_k = calloc(2 * (size_t)s->L, sizeof(int));
        if (o->mtp) {
            sl->hidden = malloc(sizeof(float) * (size_t)s->S * s->H);
            sl->q_draft = malloc(sizeof(float) * (size_t)s->V);
            sl->p_target = malloc(sizeof(float) * (size_t)s->V);
        }
        kv_clear(kv, i);
        tokenizer_stream_init(&sl->ts);
        sampler_params sp = {.temperature = 0, .top_p = 1};
        if (!sl->hist || !sl->held || !sl->r_ids || !sl->r_w || !sl->r_groups || !sl->r_ngroups || !sl->r_k ||
            (o->mtp && (!sl->hidden || !sl->q_draft || !sl->p_target)) || sampler_init(&sl->smp, s->V, &sp, err)) {
            sched_free(s);
            return moe_error_set(err, "out of memory for %d slots of %d positions", N, s->S);
        }
    }
    sma_init(&s->ma);
    s->st.n_slots = N;
    s->st.kv_total = N * s->S;
    c->on_route = on_route;
    c->on_route_ctx = s;
    if (pthread_create(&s->thread, NULL, engine_main, s)) {
        sched_free(s);
        return moe_error_set(err, "cannot start the engine thread");
    }
    s->running = 1;
    *out = s;
    return MOE_OK;
}

void sched_stop(serve_sched *s) {
    if (!s || !s->running) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    s->running = 0;
}

int sched_submit(serve_sched *s, serve_req *r) {
    pthread_mutex_lock(&s->mu);
    if (s->stopping) { pthread_mutex_unlock(&s->mu); return -2; }
    if (s->q_len >= s->o.queue_max) {
        s->st.rejected++;
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    pthread_mutex_lock(&r->mu);
    r->refs++;
    r->t_submit = now_s();
    pthread_mutex_unlock(&r->mu);
    s->queue[(s->q_head + s->q_len) % s->o.queue_max] = r;
    s->q_len++;
    s->st.requests++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void sched_get_stats(serve_sched *s, sched_stats *st) {
    pthread_mutex_lock(&s->mu);
    *st = s->st;
    st->queue_len = s->q_len;
    st->busy_slots = __atomic_load_n(&s->n_busy, __ATOMIC_ACQUIRE);
    pthread_mutex_unlock(&s->mu);
}

void sched_expert_load(serve_sched *s, unsigned long long *out) {
    for (size_t i = 0; i < (size_t)s->L * s->E; i++) out[i] = __atomic_load_n(&s->load[i], __ATOMIC_RELAXED);
}

int sched_context(const serve_sched *s) { return s->S; }
