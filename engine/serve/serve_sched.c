/* serve_sched.c - slots, queue and the engine thread of `moe serve` (see serve_sched.h). */
#include "serve_sched.h"

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
    for (int i = 0; i < p->n_stop; i++) { r->stop[i] = p->stop[i]; p->stop[i] = NULL; }
    r->n_stop = p->n_stop;
    p->n_stop = 0;
    r->want_routing = p->want_routing;
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
    unsigned long last_used;     /* step of the last request */
    sampler smp;                 /* [V] scratch; params per request */
    tokenizer_stream ts;
    char *held;                  /* [held_cap] text that may begin a stop string */
    size_t held_len, held_cap;
    /* routing of route_pos, per main layer */
    int *r_ids;                  /* [L, K] */
    float *r_w;                  /* [L, K] */
    int *r_groups;               /* [L, Gmax] */
    int *r_ngroups;              /* [L] */
    int *r_k;                    /* [L] */
} slot;

struct serve_sched {
    const moe_model *m;
    moe_ctx *c;                  /* the engine thread's context (scratch, pool, observer) */
    moe_kv *kv;                  /* N slots of S positions */
    const tokenizer *tok;
    sched_options o;
    int S, V, L, E, K, Gmax, B, eos;
    slot *slots;                 /* [N] */
    float *logits;               /* [N, V] one row per slot at most */
    moe_batch batch;             /* [B + N] the pass */
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
    if (pos != sl->route_pos || !sl->req || !sl->req->want_routing) return;
    int k = d->k < s->K ? d->k : s->K;
    sl->r_k[layer] = k;
    memcpy(sl->r_ids + (size_t)layer * s->K, d->ids, sizeof(int) * (size_t)k);
    memcpy(sl->r_w + (size_t)layer * s->K, d->weights, sizeof(float) * (size_t)k);
    int g = d->n_groups_kept < s->Gmax ? d->n_groups_kept : s->Gmax;
    sl->r_ngroups[layer] = g;
    if (g > 0) memcpy(sl->r_groups + (size_t)layer * s->Gmax, d->groups, sizeof(int) * (size_t)g);
}

/* ------------------------------------------------------------------ the forward pass */

/* Runs the pass: every sequence's tokens in ONE model_forward (split into passes of B
 * only when N decode tokens exceed it). The logits rows come back in batch order of the
 * wanted tokens, which is the order rows were handed out in step(). */
static int run_pass(serve_sched *s, moe_error *err) {
    return model_forward(s->m, s->c, s->kv, &s->batch, s->logits, NULL, err);
}

/* ------------------------------------------------------------------ per-slot output */

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

/* One sampled token for the slot's request. Returns 1 when the request is finished. */
static int slot_token(serve_sched *s, slot *sl, int tok, int pos) {
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
        size_t lk = (size_t)s->L * s->K, lg = (size_t)s->L * s->Gmax;
        memcpy(r->r_ids + i * lk, sl->r_ids, sizeof(int) * lk);
        memcpy(r->r_w + i * lk, sl->r_w, sizeof(float) * lk);
        memcpy(r->r_groups + i * lg, sl->r_groups, sizeof(int) * lg);
        memcpy(r->r_ngroups + (size_t)i * s->L, sl->r_ngroups, sizeof(int) * (size_t)s->L);
        memcpy(r->r_k + (size_t)i * s->L, sl->r_k, sizeof(int) * (size_t)s->L);
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
    kv_keep(s->kv, best, keep);
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
    memset(sl->r_k, 0, sizeof(int) * (size_t)s->L);
    memset(sl->r_ngroups, 0, sizeof(int) * (size_t)s->L);
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


/* One step: build the pass, run it, sample. */
static void step(serve_sched *s) {
    int N = s->o.n_slots, rows = 0;
    batch_clear(&s->batch);
    for (int i = 0; i < N; i++) {
        slot *sl = &s->slots[i];
        sl->row = -1;
        sl->route_pos = -1;
        if (sl->state != SLOT_DECODE) continue;
        sl->row = rows++;
        sl->route_pos = sl->n_hist;
        batch_add(&s->batch, sl->next, sl->n_hist, i, 1);
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
        budget -= take;
    }
    s->rr = (s->rr + 1) % N;
    if (s->batch.n == 0) return;
    double t0 = now_s();
    moe_error err = {{0}};
    int rc = run_pass(s, &err), sampled = 0;
    /* advance every sequence in the pass; sample where logits came back */
    for (int i = 0; i < N; i++) {
        slot *sl = &s->slots[i];
        if (sl->state == SLOT_FREE) continue;
        if (rc) { slot_finish(s, sl, FINISH_ERROR, err.msg); sl->n_hist = 0; kv_clear(s->kv, i); continue; }
        if (sl->state == SLOT_DECODE) {
            sl->hist[sl->n_hist++] = sl->next;
        } else {
            int take = chunk[i];
            if (sl->row < 0 && take == 0) continue;    /* not in this pass */
            memcpy(sl->hist + sl->n_hist, sl->req->prompt + sl->n_hist, sizeof(int) * (size_t)take);
            sl->n_hist += take;
            if (sl->row < 0) continue;                 /* prompt not finished */
            sl->state = SLOT_DECODE;
        }
        int tok = sampler_sample(&sl->smp, s->logits + (size_t)sl->row * s->V);
        slot_token(s, sl, tok, sl->route_pos);
        sampled += tok != s->eos;
    }
    pthread_mutex_lock(&s->mu);
    s->st.gen_tokens += (unsigned long long)sampled;
    s->st.passes++;
    s->st.batch_tokens += (unsigned long long)s->batch.n;
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
        }
    }
    if (s->c) {
        s->c->on_route = NULL;
        s->c->on_route_ctx = NULL;
    }
    free(s->slots);
    free(s->logits);
    batch_free(&s->batch);
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
    int N = o->n_slots, cap = s->B + N;
    s->slots = calloc((size_t)N, sizeof *s->slots);
    s->logits = malloc(sizeof(float) * (size_t)N * s->V);
    s->load = calloc((size_t)s->L * s->E, sizeof *s->load);
    s->queue = calloc((size_t)o->queue_max, sizeof *s->queue);
    if (!s->slots || !s->logits || !s->load || !s->queue || batch_init(&s->batch, cap, err)) {
        sched_free(s);
        return moe_error_set(err, "out of memory for the scheduler");
    }
    for (int i = 0; i < N; i++) {
        slot *sl = &s->slots[i];
        sl->hist = malloc(sizeof(int) * (size_t)s->S);
        sl->held_cap = 2 * SERVE_MAX_STOP_LEN + 64;
        sl->held = malloc(sl->held_cap);
        sl->r_ids = calloc((size_t)s->L * s->K, sizeof(int));
        sl->r_w = calloc((size_t)s->L * s->K, sizeof(float));
        sl->r_groups = calloc((size_t)s->L * s->Gmax, sizeof(int));
        sl->r_ngroups = calloc((size_t)s->L, sizeof(int));
        sl->r_k = calloc((size_t)s->L, sizeof(int));
        kv_clear(kv, i);
        tokenizer_stream_init(&sl->ts);
        sampler_params sp = {.temperature = 0, .top_p = 1};
        if (!sl->hist || !sl->held || !sl->r_ids || !sl->r_w || !sl->r_groups || !sl->r_ngroups || !sl->r_k ||
            sampler_init(&sl->smp, s->V, &sp, err)) {
            sched_free(s);
            return moe_error_set(err, "out of memory for %d slots of %d positions", N, s->S);
        }
    }
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
