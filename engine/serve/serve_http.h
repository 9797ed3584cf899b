/* serve_http.h - the HTTP side of `moe serve` (GNU libmicrohttpd, one thread per
 * connection): parse, validate, tokenize, enqueue into the scheduler, then stream
 * what the engine thread produces. Routes:
 *
 *   POST /v1/chat/completions   POST /v1/completions   GET /v1/models[/ID]
 *   POST /tokenize   POST /detokenize   GET /props   GET /metrics (Prometheus text)
 *   GET /health   GET / (the page, from the binary)
 *
 * With an API key every route except / and /health wants "Authorization: Bearer KEY".
 * A connection is given `timeout` seconds to deliver its request (then closed); while
 * its generation runs the timeout is off and a closed socket cancels the request.
 */
#ifndef MOE_SERVE_HTTP_H
#define MOE_SERVE_HTTP_H

#include <stddef.h>

#include "model.h"
#include "serve_sched.h"
#include "tokenizer.h"

typedef struct {
    const char *host;            /* bind address (IPv4 or IPv6 literal, or "localhost") */
    int port;                    /* 0 = any free port (serve_http_port tells which) */
    const char *api_key;         /* NULL = none */
    size_t max_body;             /* bytes; larger bodies get 413 */
    int timeout;                 /* seconds to send a request */
    const char *model_name;      /* the id /v1/models lists and requests may name */
    int n_slots;                 /* for /props */
    void (*log)(void *ctx, const char *line);   /* one line per request / event; may be NULL */
    void *log_ctx;
} serve_http_options;

typedef struct serve_http serve_http;

int serve_http_start(serve_http **out, serve_sched *sched, const moe_model *m, const tokenizer *tok,
                     const serve_http_options *o, moe_error *err);
int serve_http_port(const serve_http *h);
/* New requests get 503 from now on (the scheduler is being stopped). */
void serve_http_quiesce(serve_http *h);
/* Closes the listening socket, joins the connection threads, frees. */
void serve_http_stop(serve_http *h);

/* The page (engine/serve/page.html, generated into a C string by the Makefile). */
extern const char serve_page_html[];

#endif
