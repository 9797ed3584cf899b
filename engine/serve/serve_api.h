/* serve_api.h - the OpenAI-compatible wire format of `moe serve`: request bodies
 * in, JSON / server-sent-event bodies out. Pure functions (no sockets, no model):
 * the HTTP layer (serve_http.c) and the fuzz target call them.
 *
 * Notation: L main layers, E routed experts, K experts per token, G router groups,
 * Gk groups kept per token (topk_group), S context (tokens per slot).
 *
 * Requests (POST /v1/chat/completions, POST /v1/completions):
 *   messages [{role: system|user|assistant|tool, content: string | [{type: text, text}]}]
 *     (chat; rendered with the checkpoint's chat template, generation prompt added)
 *   prompt: string, or an array of token ids (completions; a string gets BOS first
 *     when the tokenizer config says add_bos_token)
 *   max_tokens | max_completion_tokens (>= 1; default: until the context is full),
 *   temperature (0 = greedy; default 0.8), top_p, top_k, min_p, seed, stop (string or
 *   up to SERVE_MAX_STOP strings), stream, stream_options.include_usage, n (only 1),
 *   model (checked against the served name when given), moe_routing (bool extension),
 *   cache_prompt (bool, default true: reuse the longest cached prefix of a slot),
 *   logit_bias: {"id": bias} (OpenAI) or [[id, bias], ...] (llama-server); bias a number
 *     added to the token's logit before sampling, or false (never sampled).
 * Errors: {"error": {"message", "type", "param", "code"}} with the HTTP status as code.
 */
#ifndef MOE_SERVE_API_H
#define MOE_SERVE_API_H

#include <jansson.h>
#include <stddef.h>

#include "sampler.h"
#include "tokenizer.h"

#define SERVE_MAX_STOP 8          /* stop strings per request */
#define SERVE_MAX_STOP_LEN 256    /* bytes per stop string */

typedef enum { SERVE_CHAT = 0, SERVE_COMPLETION = 1 } serve_kind;

/* An error for the client: HTTP status, OpenAI type, the offending field (or NULL). */
typedef struct {
    int status;                   /* 400, 401, 404, 405, 413, 503, 500 */
    char type[32];                /* "invalid_request_error", "authentication_error", ... */
    char param[48];               /* field name, "" = null */
    char message[400];
} serve_error;

/* Fills e and returns -1 (so callers can `return serve_fail(...)`). */
int serve_fail(serve_error *e, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* A validated generation request. Everything is owned (serve_params_free). */
typedef struct {
    serve_kind kind;
    char *model;                  /* as requested (NULL: not given) */
    char *text;                   /* prompt text (rendered chat, or the completion prompt); NULL with ids */
    int *ids;                     /* [n_ids] prompt token ids when given as ids (completions) */
    int n_ids;
    int add_bos;                  /* completions with a text prompt: prepend BOS */
    int max_tokens;               /* >= 1, or -1: until the context is full */
    sampler_params sp;            /* temperature 0 = greedy */
    int seed_given;
    char *stop[SERVE_MAX_STOP];   /* [n_stop] non-empty stop strings */
    int n_stop;
    int stream, include_usage, want_routing;
    int cache_prompt;             /* 1 (default): reuse a slot's cached prefix (llama-server's cache_prompt) */
    int *bias_ids;                /* [n_bias] logit_bias token ids, each in [0, vocab) */
    float *bias;                  /* [n_bias] added to their logits (-INFINITY: false, never sampled) */
    int n_bias;
} serve_params;

void serve_params_free(serve_params *p);

/* Parses and validates a request body. chat needs tok's chat template (tok may be NULL for
 * completions given as ids). vocab: ids must be in [0, vocab). Returns 0, or -1 with e set
 * (status 400 for anything wrong in the body). */
int serve_parse_request(serve_kind kind, const char *body, size_t len, const tokenizer *tok, int vocab,
                        serve_params *p, serve_error *e);

/* ------------------------------------------------------------------ responses */

/* The error body {"error": {...}} (malloc'd). */
char *serve_error_json(const serve_error *e);

/* Routing of one generated token: the decisions of the pass whose logits chose it,
 * for the L main layers. Dense layers have k == 0. */
typedef struct {
    int L, K, Gmax;
    const int *ids;               /* [L, K] chosen experts */
    const float *w;               /* [L, K] their gate weights */
    const int *groups;            /* [L, Gmax] kept groups, ascending */
    const int *n_groups;          /* [L] kept groups per layer (0: not group-limited or dense) */
    const int *k;                 /* [L] experts chosen per layer (0: dense layer) */
} serve_routing;

/* {"layers": L, "experts": E, "groups": G, "topk_group": Gk, "k": K, "first_dense": F} */
json_t *serve_routing_info(int L, int E, int G, int Gk, int K, int first_dense);
/* {"token": id, "pos": p, "text": piece, "layers": [[l, [ids], [w], [groups]] ...]} (dense layers left out) */
json_t *serve_routing_json(const serve_routing *r, int token, int pos, const char *text, size_t text_len);

typedef struct {
    const char *id;               /* "chatcmpl-..." / "cmpl-..." */
    const char *model;
    long created;
    serve_kind kind;
} serve_resp_head;

/* One streamed chunk as an SSE event "data: {...}\n\n" (malloc'd; *len its length).
 * role: non-zero for the first chat chunk (delta.role = "assistant").
 * finish: NULL or "stop"/"length". routing / routing_info: NULL or stolen references
 * added as "moe_routing" / "moe_routing_info". */
char *serve_sse_chunk(const serve_resp_head *h, int role, const char *text, size_t text_len, const char *finish,
                      json_t *routing, json_t *routing_info, size_t *len);
/* The usage-only chunk of stream_options.include_usage (choices []). */
char *serve_sse_usage(const serve_resp_head *h, int prompt_tokens, int completion_tokens, int cached, size_t *len);
/* A whole (non-streamed) response. routing: NULL or a stolen array. */
char *serve_full_response(const serve_resp_head *h, const char *text, size_t text_len, const char *finish,
                          int prompt_tokens, int completion_tokens, int cached, json_t *routing,
                          json_t *routing_info, size_t *len);

/* JSON-escapes into a new json string (invalid UTF-8 bytes become U+FFFD). */
json_t *serve_json_text(const char *text, size_t len);

#endif
