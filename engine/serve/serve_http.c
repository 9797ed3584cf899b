/* serve_http.c - routes, request bodies, streaming (see serve_http.h). */
#include "serve_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "serve_api.h"

struct serve_http {
    struct MHD_Daemon *d;
    serve_sched *sched;
    const moe_model *m;
    const tokenizer *tok;
    serve_http_options o;
    char *model_name;
    int quiesced;                /* atomic */
    unsigned long long n_ids;    /* atomic: response ids */
    int n_running;               /* atomic: generation requests between submit and their end */
    unsigned long long http_requests[6];   /* atomic: by status class 2xx,4xx,5xx and 401,404,503 */
    double t_start;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void logf_(serve_http *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(serve_http *h, const char *fmt, ...) {
    if (!h->o.log) return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    h->o.log(h->o.log_ctx, line);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap) {
    serve_http *h = cls;
    if (!h->o.log) return;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
    h->o.log(h->o.log_ctx, line);
}

/* ------------------------------------------------------------------ plain responses */

static enum MHD_Result send_buf(struct MHD_Connection *c, int status, const char *type, char *body, size_t len) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) { free(body); return MHD_NO; }
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, int status, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s) return MHD_NO;
    size_t n = strlen(s);
    char *b = realloc(s, n + 2);
    if (!b) { free(s); return MHD_NO; }
    b[n] = '\n';
    b[n + 1] = 0;
    return send_buf(c, status, "application/json", b, n + 1);
}

static enum MHD_Result send_error(struct MHD_Connection *c, const serve_error *e) {
    char *s = serve_error_json(e);
    if (!s) return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE);
    if (!r) { free(s); return MHD_NO; }
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (e->status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    if (e->status == 405) MHD_add_response_header(r, "Allow", e->param[0] ? "POST" : "GET");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)e->status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result fail(struct MHD_Connection *c, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static enum MHD_Result fail(struct MHD_Connection *c, int status, const char *param, const char *fmt, ...) {
    serve_error e;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    serve_fail(&e, status, param, "%s", msg);
    return send_error(c, &e);
}

/* ------------------------------------------------------------------ connection state */

typedef enum {
    R_NONE, R_CHAT, R_COMPLETION, R_TEMPLATE, R_MODELS, R_MODEL, R_TOKENIZE, R_DETOKENIZE, R_PROPS, R_METRICS, R_HEALTH, R_PAGE
} route_id;

typedef struct {
    const char *path;
    route_id id;
    int post;       /* 1: POST, 0: GET */
    int open;       /* no API key needed */
} route;

static const route routes[] = {
    {"/v1/chat/completions", R_CHAT, 1, 0}, {"/chat/completions", R_CHAT, 1, 0},
    {"/v1/completions", R_COMPLETION, 1, 0}, {"/completions", R_COMPLETION, 1, 0},
    {"/v1/models", R_MODELS, 0, 0},          {"/models", R_MODELS, 0, 0},
    {"/apply-template", R_TEMPLATE, 1, 0},   {"/tokenize", R_TOKENIZE, 1, 0},         {"/detokenize", R_DETOKENIZE, 1, 0},
    {"/props", R_PROPS, 0, 0},               {"/metrics", R_METRICS, 0, 0},
    {"/health", R_HEALTH, 0, 1},             {"/v1/health", R_HEALTH, 0, 1},
    {"/", R_PAGE, 0, 1},                     {"/index.html", R_PAGE, 0, 1},
};

typedef struct {
    const route *rt;
    char *body;                  /* [cap] the request body so far */
    size_t len, cap;
    int too_big;
    double t0;
} conn_state;

/* ------------------------------------------------------------------ waiting on the engine */

/* 1 when the peer has closed its side (or the socket failed). */
static int peer_gone(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 0;
    char b;
    ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return 1;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return 1;
    return 0;
}

/* Waits (r->mu held) until record `have` exists or r is finished; polls the peer every
 * 100 ms. Returns 0, or -1 when the peer went away (r is then cancelled). */
static int wait_engine(serve_req *r, int have, struct MHD_Connection *c) {
    while (r->n_tok <= have && r->finish == FINISH_NONE) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
        if (r->n_tok <= have && r->finish == FINISH_NONE && peer_gone(c)) {
            serve_req_cancel(r);
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ streaming */

typedef struct {
    serve_http *h;
    serve_req *r;
    struct MHD_Connection *c;
    serve_resp_head head;
    char id[48];
    int kind, include_usage, n_prompt;
    int next;                    /* next record to send */
    int phase;                   /* 0 records, 1 after the final chunk, 2 after [DONE] */
    char *out;                   /* formatted bytes not yet handed to MHD */
    size_t out_len, out_off;
} stream_ctx;

static json_t *routing_info_json(const serve_http *h) {
    const moe_config *c = &h->m->cfg;
    int G = c->n_group > 0 ? c->n_group : 1, Gk = c->topk_group > 0 ? c->topk_group : G;
    return serve_routing_info(c->num_hidden_layers, c->n_routed_experts, G, Gk, h->m->K, c->first_k_dense_replace);
}

/* Formats what comes next into sc->out (r->mu held). Returns 0, or -1 at the end. */
static int stream_next(stream_ctx *sc) {
    serve_req *r = sc->r;
    free(sc->out);
    sc->out = NULL;
    sc->out_len = sc->out_off = 0;
    if (sc->phase == 2) return -1;
    if (sc->phase == 1) {
        sc->out = strdup("data: [DONE]\n\n");
        sc->out_len = strlen(sc->out);
        sc->phase = 2;
        return 0;
    }
    if (sc->next < r->n_tok) {
        int i = sc->next++;
        size_t a = i ? r->tok_end[i - 1] : 0, b = r->tok_end[i];
        json_t *rt = NULL, *info = NULL;
        if (r->want_routing && r->r_ids) {
            serve_routing v = serve_req_routing(r, i);
            rt = serve_routing_json(&v, r->tok_id[i], r->tok_pos[i], r->text + a, b - a);
            if (i == 0) info = routing_info_json(sc->h);
        }
        sc->out = serve_sse_chunk(&sc->head, i == 0, r->text + a, b - a, NULL, rt, info, &sc->out_len);
        return sc->out ? 0 : -1;
    }
    /* finished: the rest of the text with the finish reason, usage, [DONE] */
    size_t a = r->n_tok ? r->tok_end[r->n_tok - 1] : 0;
    if (r->finish == FINISH_ERROR) {
        serve_error e;
        serve_fail(&e, 500, NULL, "generation failed: %s", r->error);
        char *ej = serve_error_json(&e);
        size_t n = ej ? strlen(ej) : 0;
        sc->out = malloc(n + 16);
        if (sc->out) sc->out_len = (size_t)sprintf(sc->out, "data: %s\n", ej ? ej : "{}");
        free(ej);
    } else {
        size_t n1 = 0, n2 = 0;
        char *c1 = serve_sse_chunk(&sc->head, r->n_tok == 0, r->text + a, r->text_len - a, serve_finish_name(r->finish),
                                   NULL, NULL, &n1);
        char *c2 = sc->include_usage ? serve_sse_usage(&sc->head, sc->n_prompt, r->n_tok, r->n_cached, &n2) : NULL;
        sc->out = malloc(n1 + n2 + 1);
        if (sc->out && c1) {
            memcpy(sc->out, c1, n1);
            if (c2) memcpy(sc->out + n1, c2, n2);
            sc->out_len = n1 + (c2 ? n2 : 0);
        }
        free(c1);
        free(c2);
    }
    sc->phase = 1;
    return sc->out ? 0 : -1;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    stream_ctx *sc = cls;
    (void)pos;
    while (sc->out_off >= sc->out_len) {
        pthread_mutex_lock(&sc->r->mu);
        if (sc->phase == 0 && wait_engine(sc->r, sc->next, sc->c)) {
            pthread_mutex_unlock(&sc->r->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        int rc = stream_next(sc);
        pthread_mutex_unlock(&sc->r->mu);
        if (rc) return MHD_CONTENT_READER_END_OF_STREAM;
    }
    size_t n = sc->out_len - sc->out_off;
    if (n > max) n = max;
    memcpy(buf, sc->out + sc->out_off, n);
    sc->out_off += n;
    return (ssize_t)n;
}

static void stream_free(void *cls) {
    stream_ctx *sc = cls;
    __atomic_sub_fetch(&sc->h->n_running, 1, __ATOMIC_RELEASE);
    serve_req_cancel(sc->r);   /* no-op once finished; frees the slot if the client left early */
    serve_req_unref(sc->r);
    free(sc->out);
    free(sc);
}

/* ------------------------------------------------------------------ generation routes */

static int encode_prompt(serve_http *h, const serve_params *p, int **ids, int *n, serve_error *e) {
    if (p->ids) {
        *ids = malloc(sizeof(int) * (size_t)p->n_ids);
        if (!*ids) return serve_fail(e, 500, NULL, "out of memory");
        memcpy(*ids, p->ids, sizeof(int) * (size_t)p->n_ids);
        *n = p->n_ids;
        return 0;
    }
    int *t = NULL, nt = 0;
    moe_error err = {{0}};
    int rc = tokenizer_encode(h->tok, p->text, strlen(p->text), &t, &nt, &err);
    if (rc) return serve_fail(e, 400, p->kind == SERVE_CHAT ? "messages" : "prompt", "cannot tokenize the prompt: %s", err.msg);
    int bos = p->add_bos ? tokenizer_bos_id(h->tok) : -1;
    *ids = malloc(sizeof(int) * (size_t)(nt + 1));
    if (!*ids) { free(t); return serve_fail(e, 500, NULL, "out of memory"); }
    *n = 0;
    if (bos >= 0) (*ids)[(*n)++] = bos;
    if (nt) memcpy(*ids + *n, t, sizeof(int) * (size_t)nt);
    *n += nt;
    free(t);
    return 0;
}

static enum MHD_Result generate(serve_http *h, struct MHD_Connection *c, conn_state *cs, serve_kind kind) {
    serve_params p;
    serve_error e;
    if (!h->tok && kind == SERVE_CHAT)
        return fail(c, 400, "messages", "this checkpoint has no tokenizer.json: use /v1/completions with token ids");
    if (serve_parse_request(kind, cs->body ? cs->body : "", cs->len, h->tok, h->m->cfg.vocab_size, &p, &e))
        return send_error(c, &e);
    if (p.model && strcmp(p.model, h->model_name)) {
        serve_fail(&e, 404, "model", "model '%.100s' is not served here; this server has '%.100s' (GET /v1/models)", p.model,
                   h->model_name);
        serve_params_free(&p);
        return send_error(c, &e);
    }
    if (!h->tok && p.text) {
        serve_params_free(&p);
        return fail(c, 400, "prompt", "this checkpoint has no tokenizer.json: give the prompt as token ids");
    }
    int *ids = NULL, n = 0, S = sched_context(h->sched);
    if (encode_prompt(h, &p, &ids, &n, &e)) { serve_params_free(&p); return send_error(c, &e); }
    if (n == 0) e.status = 0;
    if (n == 0 || n > S) {
        if (n == 0) serve_fail(&e, 400, kind == SERVE_CHAT ? "messages" : "prompt", "the prompt has no tokens");
        else serve_fail(&e, 400, kind == SERVE_CHAT ? "messages" : "prompt",
                        "the prompt has %d tokens but the context holds %d per slot (start the server with a larger --ctx, up to %d)",
                        n, S, h->m->cfg.max_position_embeddings);
        free(ids);
        serve_params_free(&p);
        return send_error(c, &e);
    }
    int r_nocache = 0;
    int room = S - n + 1;   /* the last token sampled need not be fed */
    int max_tokens = p.max_tokens < 0 || p.max_tokens > room ? room : p.max_tokens;
    if (!p.cache_prompt) r_nocache = 1;
    if (!p.seed_given) p.sp.seed = (uint64_t)time(NULL) * 1000003u ^ __atomic_add_fetch(&h->n_ids, 1, __ATOMIC_RELAXED);
    serve_req *r = serve_req_new(ids, n, &p, max_tokens);
    free(ids);
    if (r) r->no_cache = r_nocache;
    int stream = p.stream, include_usage = p.include_usage;
    serve_params_free(&p);
    if (!r) return fail(c, 500, NULL, "out of memory for the request");
    int q = __atomic_load_n(&h->quiesced, __ATOMIC_ACQUIRE) ? -2 : sched_submit(h->sched, r);
    if (q) {
        serve_req_unref(r);
        if (q == -2) return fail(c, 503, NULL, "the server is shutting down");
        return fail(c, 503, NULL, "the server is busy: all slots are in use and the queue is full (retry later)");
    }
    /* the generation may take long: no idle timeout from here on (a closed socket cancels) */
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    unsigned long long id = __atomic_add_fetch(&h->n_ids, 1, __ATOMIC_RELAXED);
    stream_ctx *sc = calloc(1, sizeof *sc);
    if (!sc) { serve_req_cancel(r); serve_req_unref(r); return MHD_NO; }
    __atomic_add_fetch(&h->n_running, 1, __ATOMIC_RELEASE);
    sc->h = h;
    sc->r = r;
    sc->c = c;
    sc->n_prompt = n;
    sc->include_usage = include_usage;
    snprintf(sc->id, sizeof sc->id, "%s-%llx%06llx", kind == SERVE_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)time(NULL), id);
    sc->head = (serve_resp_head){sc->id, h->model_name, (long)time(NULL), kind};
    if (stream) {
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, sc, stream_free);
        if (!resp) { stream_free(sc); return MHD_NO; }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
        enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        return ret;
    }
    /* one response when done */
    pthread_mutex_lock(&r->mu);
    int gone = wait_engine(r, r->max_tokens, c);
    if (gone) {
        pthread_mutex_unlock(&r->mu);
        stream_free(sc);
        return MHD_NO;
    }
    enum MHD_Result ret;
    if (r->finish == FINISH_ERROR) {
        char msg[300];
        snprintf(msg, sizeof msg, "%s", r->error);
        pthread_mutex_unlock(&r->mu);
        ret = fail(c, 500, NULL, "generation failed: %s", msg);
    } else {
        json_t *rt = NULL, *info = NULL;
        if (r->want_routing && r->r_ids) {
            rt = json_array();
            for (int i = 0; i < r->n_tok; i++) {
                serve_routing v = serve_req_routing(r, i);
                size_t a = i ? r->tok_end[i - 1] : 0;
                json_array_append_new(rt, serve_routing_json(&v, r->tok_id[i], r->tok_pos[i], r->text + a, r->tok_end[i] - a));
            }
            info = routing_info_json(h);
        }
        size_t len;
        char *body = serve_full_response(&sc->head, r->text, r->text_len, serve_finish_name(r->finish), n, r->n_tok,
                                         r->n_cached, rt, info, &len);
        pthread_mutex_unlock(&r->mu);
        ret = body ? send_buf(c, 200, "application/json", body, len) : MHD_NO;
    }
    stream_free(sc);
    return ret;
}

/* ------------------------------------------------------------------ other routes */

static enum MHD_Result tokenize_route(serve_http *h, struct MHD_Connection *c, conn_state *cs) {
    if (!h->tok) return fail(c, 400, NULL, "this checkpoint has no tokenizer.json");
    json_error_t je;
    json_t *root = json_loadb(cs->body ? cs->body : "", cs->len, 0, &je);
    if (!root) return fail(c, 400, NULL, "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
    json_t *content = json_object_get(root, "content"), *sp = json_object_get(root, "add_special"),
           *wp = json_object_get(root, "with_pieces");
    if (!json_is_object(root) || !json_is_string(content)) {
        json_decref(root);
        return fail(c, 400, "content", "'content' must be a string");
    }
    if ((sp && !json_is_boolean(sp)) || (wp && !json_is_boolean(wp))) {
        json_decref(root);
        return fail(c, 400, sp && !json_is_boolean(sp) ? "add_special" : "with_pieces", "must be true or false");
    }
    int *ids = NULL, n = 0;
    moe_error err = {{0}};
    int rc = tokenizer_encode(h->tok, json_string_value(content), json_string_length(content), &ids, &n, &err);
    if (rc) { json_decref(root); return fail(c, 400, "content", "cannot tokenize: %s", err.msg); }
    json_t *arr = json_array();
    if (json_is_true(sp) && tokenizer_bos_id(h->tok) >= 0) json_array_append_new(arr, json_integer(tokenizer_bos_id(h->tok)));
    for (int i = 0; i < n; i++) {
        if (json_is_true(wp)) {
            size_t len;
            const char *b = tokenizer_token_bytes(h->tok, ids[i], &len);
            json_array_append_new(arr, json_pack("{s:i,s:o}", "id", ids[i], "piece", serve_json_text(b ? b : "", b ? len : 0)));
        } else {
            json_array_append_new(arr, json_integer(ids[i]));
        }
    }
    free(ids);
    json_decref(root);
    return send_json(c, 200, json_pack("{s:o}", "tokens", arr));
}

/* llama-server's /apply-template: the chat request's prompt text, not generated. */
static enum MHD_Result template_route(serve_http *h, struct MHD_Connection *c, conn_state *cs) {
    serve_params p;
    serve_error e;
    if (!h->tok) return fail(c, 400, "messages", "this checkpoint has no tokenizer.json");
    if (serve_parse_request(SERVE_CHAT, cs->body ? cs->body : "", cs->len, h->tok, h->m->cfg.vocab_size, &p, &e))
        return send_error(c, &e);
    json_t *o = json_pack("{s:o}", "prompt", serve_json_text(p.text, strlen(p.text)));
    serve_params_free(&p);
    return send_json(c, 200, o);
}

static enum MHD_Result detokenize_route(serve_http *h, struct MHD_Connection *c, conn_state *cs) {
    if (!h->tok) return fail(c, 400, NULL, "this checkpoint has no tokenizer.json");
    json_error_t je;
    json_t *root = json_loadb(cs->body ? cs->body : "", cs->len, 0, &je);
    if (!root) return fail(c, 400, NULL, "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
    json_t *toks = json_object_get(root, "tokens");
    if (!json_is_array(toks)) { json_decref(root); return fail(c, 400, "tokens", "'tokens' must be an array of token ids"); }
    size_t n = json_array_size(toks), i;
    int V = tokenizer_vocab_size(h->tok);
    int *ids = malloc(sizeof(int) * (n ? n : 1));
    if (!ids) { json_decref(root); return fail(c, 500, NULL, "out of memory"); }
    json_t *v;
    json_array_foreach(toks, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= V) {
            free(ids);
            json_decref(root);
            return fail(c, 400, "tokens", "tokens[%zu] must be a token id in [0, %d)", i, V);
        }
        ids[i] = (int)json_integer_value(v);
    }
    json_decref(root);
    char *text = NULL;
    size_t len = 0;
    moe_error err = {{0}};
    int rc = tokenizer_decode(h->tok, ids, (int)n, &text, &len, &err);
    free(ids);
    if (rc) return fail(c, 400, "tokens", "cannot decode: %s", err.msg);
    json_t *o = json_pack("{s:o}", "content", serve_json_text(text, len));
    free(text);
    return send_json(c, 200, o);
}

static json_t *model_json(const serve_http *h) {
    const moe_config *c = &h->m->cfg;
    return json_pack("{s:s,s:s,s:I,s:s,s:{s:i,s:i,s:i,s:i,s:i}}", "id", h->model_name, "object", "model", "created",
                     (json_int_t)time(NULL), "owned_by", "moe", "meta", "n_vocab", c->vocab_size, "n_ctx_train",
                     c->max_position_embeddings, "n_ctx", sched_context(h->sched), "n_layers", c->num_hidden_layers, "n_experts",
                     c->n_routed_experts);
}

/* Prometheus text format. */
static enum MHD_Result metrics_route(serve_http *h, struct MHD_Connection *c) {
    sched_stats st;
    sched_get_stats(h->sched, &st);
    const moe_config *cfg = &h->m->cfg;
    int L = cfg->num_hidden_layers, E = cfg->n_routed_experts > 0 ? cfg->n_routed_experts : 1;
    unsigned long long *load = malloc(sizeof *load * (size_t)L * E);
    size_t cap = 8192 + (size_t)L * E * 64, n = 0;
    char *b = malloc(cap);
    if (!load || !b) { free(load); free(b); return fail(c, 500, NULL, "out of memory"); }
    sched_expert_load(h->sched, load);
#define OUT(...) (n += (size_t)snprintf(b + n, cap - n, __VA_ARGS__))
#define METRIC(name, type, help, fmt, val) \
    OUT("# HELP moe_" name " " help "\n# TYPE moe_" name " " type "\nmoe_" name " " fmt "\n", val)
    METRIC("requests_total", "counter", "generation requests accepted", "%llu", st.requests);
    METRIC("requests_rejected_total", "counter", "generation requests refused with 503 (queue full)", "%llu", st.rejected);
    METRIC("requests_cancelled_total", "counter", "requests whose client went away", "%llu", st.cancelled);
    METRIC("prompt_tokens_total", "counter", "prompt tokens of accepted requests", "%llu", st.prompt_tokens);
    METRIC("prompt_tokens_cached_total", "counter", "prompt tokens found in a slot's cache (not recomputed)", "%llu", st.cached_tokens);
    METRIC("tokens_generated_total", "counter", "tokens generated", "%llu", st.gen_tokens);
    METRIC("forward_passes_total", "counter", "batched forward passes", "%llu", st.passes);
    METRIC("batch_tokens_total", "counter", "tokens run in forward passes (prompt and generated)", "%llu", st.batch_tokens);
    METRIC("busy_seconds_total", "counter", "seconds the engine spent in passes and sampling", "%.3f", st.busy_seconds);
    METRIC("tokens_generated_per_second", "gauge", "generated tokens per busy second", "%.3f",
           st.busy_seconds > 0 ? st.gen_tokens / st.busy_seconds : 0.0);
    METRIC("batch_tokens_per_second", "gauge", "tokens through the model per busy second", "%.3f",
           st.busy_seconds > 0 ? st.batch_tokens / st.busy_seconds : 0.0);
    METRIC("mtp_drafted_total", "counter", "MTP drafts verified (--mtp)", "%llu", st.mtp_drafted);
    METRIC("mtp_accepted_total", "counter", "MTP drafts accepted (--mtp)", "%llu", st.mtp_accepted);
    METRIC("mtp_speculative_steps_total", "counter", "--mtp auto: steps that drafted", "%llu", st.mtp_spec_steps);
    METRIC("mtp_plain_steps_total", "counter", "--mtp auto: steps that did not draft", "%llu", st.mtp_plain_steps);
    METRIC("mtp_settled", "gauge", "--mtp auto: 1 while settled on plain (no MTP module for a while)", "%d", st.mtp_settled);
    METRIC("queue_length", "gauge", "requests waiting for a slot", "%d", st.queue_len);
    METRIC("slots_busy", "gauge", "slots running a request", "%d", st.busy_slots);
    METRIC("slots_total", "gauge", "sequence slots (--parallel)", "%d", st.n_slots);
    METRIC("kv_positions_used", "gauge", "KV cache positions held, all slots", "%d", st.kv_used);
    METRIC("kv_positions_total", "gauge", "KV cache positions, all slots", "%d", st.kv_total);
    METRIC("uptime_seconds", "gauge", "seconds since the server started", "%.1f", now_s() - h->t_start);
    OUT("# HELP moe_expert_tokens_total tokens routed to each expert, by layer (prompt and generated)\n"
        "# TYPE moe_expert_tokens_total counter\n");
    for (int l = 0; l < L; l++) {
        if (l < cfg->first_k_dense_replace) continue;
        for (int x = 0; x < E; x++)
            if (load[(size_t)l * E + x]) OUT("moe_expert_tokens_total{layer=\"%d\",expert=\"%d\"} %llu\n", l, x, load[(size_t)l * E + x]);
    }
    OUT("# HELP moe_layer_expert_load_max_over_mean busiest expert's tokens over the mean, by layer\n"
        "# TYPE moe_layer_expert_load_max_over_mean gauge\n");
    for (int l = cfg->first_k_dense_replace; l < L; l++) {
        unsigned long long mx = 0, sum = 0;
        for (int x = 0; x < E; x++) { sum += load[(size_t)l * E + x]; if (load[(size_t)l * E + x] > mx) mx = load[(size_t)l * E + x]; }
        OUT("moe_layer_expert_load_max_over_mean{layer=\"%d\"} %.4f\n", l, sum ? (double)mx * E / sum : 0.0);
    }
#undef METRIC
#undef OUT
    free(load);
    if (n >= cap) n = cap - 1;
    return send_buf(c, 200, "text/plain; version=0.0.4", b, n);
}

static enum MHD_Result props_route(serve_http *h, struct MHD_Connection *c) {
    const moe_config *cfg = &h->m->cfg;
    json_t *o = json_pack("{s:s,s:i,s:i,s:i,s:o}", "model", h->model_name, "n_ctx", sched_context(h->sched), "total_slots",
                          h->o.n_slots, "n_vocab", cfg->vocab_size, "moe_routing_info", routing_info_json(h));
    return send_json(c, 200, o);
}

/* ------------------------------------------------------------------ dispatch */

static int auth_ok(serve_http *h, struct MHD_Connection *c) {
    if (!h->o.api_key) return 1;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!a || strncasecmp(a, "Bearer ", 7)) return 0;
    a += 7;
    while (*a == ' ') a++;
    /* constant-time comparison */
    size_t n = strlen(h->o.api_key), m = strlen(a);
    unsigned char d = (unsigned char)(n != m);
    for (size_t i = 0; i < n; i++) d |= (unsigned char)(h->o.api_key[i] ^ (i < m ? a[i] : 0));
    return d == 0;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    serve_http *h = cls;
    (void)version;
    conn_state *cs = *con_cls;
    if (!cs) {
        /* first call: headers only */
        cs = calloc(1, sizeof *cs);
        if (!cs) return MHD_NO;
        *con_cls = cs;
        cs->t0 = now_s();
        const char *q = strchr(url, '?');
        size_t ul = q ? (size_t)(q - url) : strlen(url);
        for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
            if (strlen(routes[i].path) == ul && !strncmp(routes[i].path, url, ul)) cs->rt = &routes[i];
        if (!cs->rt && !strncmp(url, "/v1/models/", 11)) {
            static const route model_route = {"/v1/models/", R_MODEL, 0, 0};
            cs->rt = &model_route;
        }
        int is_post = !strcmp(method, "POST"), is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
        if (!cs->rt) return fail(c, 404, NULL, "no route %s %.200s (see GET / for the page, /v1/models, /v1/chat/completions)", method, url);
        if ((cs->rt->post && !is_post) || (!cs->rt->post && !is_get)) {
            serve_error e;
            serve_fail(&e, 405, cs->rt->post ? "post" : NULL, "%s %s: use %s", method, cs->rt->path, cs->rt->post ? "POST" : "GET");
            return send_error(c, &e);
        }
        if (!cs->rt->open && !auth_ok(h, c))
            return fail(c, 401, NULL, "this server wants an API key: send the header 'Authorization: Bearer KEY'");
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > h->o.max_body)
            return fail(c, 413, NULL, "the body has %s bytes; this server takes at most %zu (--max-body)", cl, h->o.max_body);
        return MHD_YES;
    }
    if (*upload_size) {
        if (!cs->too_big) {
            if (cs->len + *upload_size > h->o.max_body) {
                cs->too_big = 1;
            } else {
                if (cs->len + *upload_size + 1 > cs->cap) {
                    size_t cap = cs->cap ? cs->cap : 4096;
                    while (cap < cs->len + *upload_size + 1) cap *= 2;
                    char *b = realloc(cs->body, cap);
                    if (!b) return MHD_NO;
                    cs->body = b;
                    cs->cap = cap;
                }
                memcpy(cs->body + cs->len, upload, *upload_size);
                cs->len += *upload_size;
                cs->body[cs->len] = 0;
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (cs->too_big) return fail(c, 413, NULL, "the body is larger than %zu bytes (--max-body)", h->o.max_body);
    switch (cs->rt->id) {
    case R_CHAT: return generate(h, c, cs, SERVE_CHAT);
    case R_COMPLETION: return generate(h, c, cs, SERVE_COMPLETION);
    case R_MODELS: return send_json(c, 200, json_pack("{s:s,s:[o]}", "object", "list", "data", model_json(h)));
    case R_MODEL:
        if (strcmp(url + 11, h->model_name)) return fail(c, 404, "model", "model '%.100s' is not served here; this server has '%.100s'", url + 11, h->model_name);
        return send_json(c, 200, model_json(h));
    case R_TEMPLATE: return template_route(h, c, cs);
    case R_TOKENIZE: return tokenize_route(h, c, cs);
    case R_DETOKENIZE: return detokenize_route(h, c, cs);
    case R_PROPS: return props_route(h, c);
    case R_METRICS: return metrics_route(h, c);
    case R_HEALTH: return send_json(c, 200, json_pack("{s:s}", "status", "ok"));
    case R_PAGE: {
        struct MHD_Response *r = MHD_create_response_from_buffer(strlen(serve_page_html), (void *)serve_page_html,
                                                                 MHD_RESPMEM_PERSISTENT);
        if (!r) return MHD_NO;
        MHD_add_response_header(r, "Content-Type", "text/html; charset=utf-8");
        MHD_add_response_header(r, "Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'");
        enum MHD_Result ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ret;
    }
    default: return fail(c, 404, NULL, "no route %.200s", url);
    }
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode why) {
    serve_http *h = cls;
    conn_state *cs = *con_cls;
    if (!cs) return;
    if (cs->rt) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_HTTP_STATUS);
        unsigned status = ci ? ci->http_status : 0;
        logf_(h, "%s %u %.1f ms%s", cs->rt->path, status, 1e3 * (now_s() - cs->t0),
              why == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : why == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? " (timed out)"
              : why == MHD_REQUEST_TERMINATED_CLIENT_ABORT ? " (client went away)" : " (ended early)");
    }
    /* back to the request timeout for a kept-alive connection */
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)h->o.timeout);
    free(cs->body);
    free(cs);
    *con_cls = NULL;
}

/* ------------------------------------------------------------------ start / stop */

int serve_http_start(serve_http **out, serve_sched *sched, const moe_model *m, const tokenizer *tok,
                     const serve_http_options *o, moe_error *err) {
    *out = NULL;
    serve_http *h = calloc(1, sizeof *h);
    if (!h) return moe_error_set(err, "out of memory");
    h->sched = sched;
    h->m = m;
    h->tok = tok;
    h->o = *o;
    h->t_start = now_s();
    h->model_name = strdup(o->model_name ? o->model_name : "moe");
    const char *host = o->host && strcmp(o->host, "localhost") ? o->host : "127.0.0.1";
    struct sockaddr_in a4 = {0};
    struct sockaddr_in6 a6 = {0};
    struct sockaddr *sa;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
    if (inet_pton(AF_INET, host, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)o->port);
        sa = (struct sockaddr *)&a4;
    } else if (inet_pton(AF_INET6, host, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)o->port);
        sa = (struct sockaddr *)&a6;
        flags |= MHD_USE_IPv6;
    } else {
        free(h->model_name);
        free(h);
        return moe_error_set(err, "--host '%s' is not an IPv4 or IPv6 address (e.g. 127.0.0.1, 0.0.0.0, ::1)", host);
    }
    h->d = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, handler, h, MHD_OPTION_SOCK_ADDR, sa,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)o->timeout, MHD_OPTION_NOTIFY_COMPLETED, completed, h,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, h, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(256 * 1024),
                            MHD_OPTION_END);
    if (!h->d) {
        free(h->model_name);
        free(h);
        return moe_error_set(err, "cannot listen on %s port %d: %s (is the port in use? try --port 0 for any free port)",
                             host, o->port, strerror(errno));
    }
    *out = h;
    return MOE_OK;
}

int serve_http_port(const serve_http *h) {
    const union MHD_DaemonInfo *i = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    return i ? i->port : -1;
}

void serve_http_quiesce(serve_http *h) {
    if (h) __atomic_store_n(&h->quiesced, 1, __ATOMIC_RELEASE);
}

void serve_http_stop(serve_http *h) {
    if (!h) return;
    /* let finished streams deliver their last chunks (up to 10 s) before closing connections */
    for (int i = 0; i < 1000 && __atomic_load_n(&h->n_running, __ATOMIC_ACQUIRE) > 0; i++) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(h->d);
    free(h->model_name);
    free(h);
}
