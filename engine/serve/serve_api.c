/* serve_api.c - request parsing and response formatting (see serve_api.h). */
#include "serve_api.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"

int serve_fail(serve_error *e, int status, const char *param, const char *fmt, ...) {
    e->status = status;
    const char *type = status == 401 ? "authentication_error"
                       : status == 404 ? "not_found_error"
                       : status == 503 ? "unavailable_error"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    snprintf(e->type, sizeof e->type, "%s", type);
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

void serve_params_free(serve_params *p) {
    free(p->model);
    free(p->text);
    free(p->ids);
    for (int i = 0; i < p->n_stop; i++) free(p->stop[i]);
    free(p->bias_ids);
    free(p->bias);
    memset(p, 0, sizeof *p);
}

/* ------------------------------------------------------------------ UTF-8 */

/* Length of the valid UTF-8 character at s (1..4), or 0 if invalid. */
static int utf8_char(const unsigned char *s, size_t n) {
    if (s[0] < 0x80) return 1;
    int len = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC2 ? 2 : 0;
    if (!len || s[0] > 0xF4 || (size_t)len > n) return 0;
    for (int i = 1; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if (len == 3 && ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] >= 0xA0))) return 0;
    if (len == 4 && ((s[0] == 0xF0 && s[1] < 0x90) || (s[0] == 0xF4 && s[1] >= 0x90))) return 0;
    return len;
}

json_t *serve_json_text(const char *text, size_t len) {
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0, bad = 0;
    while (i < len) {
        int c = utf8_char(s + i, len - i);
        if (!c || s[i] == 0) { bad++; c = 1; }
        i += (size_t)c;
    }
    if (!bad) return json_stringn(text, len);
    char *clean = malloc(len + 2 * bad + 1), *o = clean;   /* U+FFFD is 3 bytes */
    if (!clean) return NULL;
    for (i = 0; i < len;) {
        int c = utf8_char(s + i, len - i);
        if (!c || s[i] == 0) { memcpy(o, "\xEF\xBF\xBD", 3); o += 3; i++; continue; }
        memcpy(o, s + i, (size_t)c);
        o += c;
        i += (size_t)c;
    }
    json_t *j = json_stringn(clean, (size_t)(o - clean));
    free(clean);
    return j;
}

/* ------------------------------------------------------------------ request parsing */

/* Number field: absent -> 0 (untouched), wrong type -> -1 with e set. */
static int get_number(json_t *root, const char *key, double lo, double hi, double *out, serve_error *e) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return serve_fail(e, 400, key, "'%s' must be a number", key);
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi) return serve_fail(e, 400, key, "'%s' is %g; it must be in [%g, %g]", key, x, lo, hi);
    *out = x;
    return 1;
}

static int get_int(json_t *root, const char *key, long long lo, long long hi, long long *out, serve_error *e) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v)) return serve_fail(e, 400, key, "'%s' must be an integer", key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return serve_fail(e, 400, key, "'%s' is %lld; it must be in [%lld, %lld]", key, x, lo, hi);
    *out = x;
    return 1;
}

static int get_bool(json_t *root, const char *key, int *out, serve_error *e) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return serve_fail(e, 400, key, "'%s' must be true or false", key);
    *out = json_is_true(v);
    return 1;
}

/* The text of a message's content: a string or an array of {type: "text", text} parts.
 * *out malloc'd; NULL content (assistant with tool calls) gives NULL. */
static int message_content(json_t *c, int i, char **out, serve_error *e) {
    *out = NULL;
    if (!c || json_is_null(c)) return 0;
    if (json_is_string(c)) {
        *out = strdup(json_string_value(c));
        return *out ? 0 : serve_fail(e, 500, NULL, "out of memory");
    }
    if (!json_is_array(c)) return serve_fail(e, 400, "messages", "messages[%d].content must be a string or an array of text parts", i);
    size_t total = 0, k;
    json_t *part;
    json_array_foreach(c, k, part) {
        json_t *t = json_object_get(part, "text"), *ty = json_object_get(part, "type");
        if (!json_is_object(part) || !json_is_string(ty) || strcmp(json_string_value(ty), "text") || !json_is_string(t))
            return serve_fail(e, 400, "messages", "messages[%d].content[%zu] must be {\"type\": \"text\", \"text\": string} (only text is supported)", i, k);
        total += json_string_length(t);
    }
    char *s = malloc(total + 1);
    if (!s) return serve_fail(e, 500, NULL, "out of memory");
    size_t o = 0;
    json_array_foreach(c, k, part) {
        json_t *t = json_object_get(part, "text");
        memcpy(s + o, json_string_value(t), json_string_length(t));
        o += json_string_length(t);
    }
    s[o] = 0;
    *out = s;
    return 0;
}

/* messages -> a clean array of {role, content} for the template, checked. */
static int parse_messages(json_t *msgs, json_t **clean, serve_error *e) {
    *clean = NULL;
    if (!msgs) return serve_fail(e, 400, "messages", "'messages' is required (an array of {role, content})");
    if (!json_is_array(msgs)) return serve_fail(e, 400, "messages", "'messages' must be an array of {role, content}");
    if (json_array_size(msgs) == 0) return serve_fail(e, 400, "messages", "'messages' is empty");
    json_t *out = json_array();
    if (!out) return serve_fail(e, 500, NULL, "out of memory");
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        if (!json_is_object(m)) { json_decref(out); return serve_fail(e, 400, "messages", "messages[%zu] must be an object", i); }
        json_t *role = json_object_get(m, "role");
        if (!json_is_string(role)) {
            json_decref(out);
            return serve_fail(e, 400, "messages", "messages[%zu].role must be a string", i);
        }
        const char *r = json_string_value(role);
        if (!strcmp(r, "developer")) r = "system";     /* OpenAI's newer name for system */
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant") && strcmp(r, "tool")) {
            json_decref(out);
            return serve_fail(e, 400, "messages", "messages[%zu].role is '%.40s'; it must be system, user, assistant or tool", i, r);
        }
        char *text;
        if (message_content(json_object_get(m, "content"), (int)i, &text, e)) { json_decref(out); return -1; }
        if (!text && strcmp(r, "assistant")) {
            json_decref(out);
            return serve_fail(e, 400, "messages", "messages[%zu].content is missing (a string is required for role %s)", i, r);
        }
        json_t *o = json_object();
        json_object_set_new(o, "role", json_string(r));
        json_object_set_new(o, "content", text ? serve_json_text(text, strlen(text)) : json_null());
        free(text);
        json_array_append_new(out, o);
    }
    *clean = out;
    return 0;
}

static int parse_stop(json_t *v, serve_params *p, serve_error *e) {
    if (!v || json_is_null(v)) return 0;
    json_t *one[1] = {v};
    json_t **items = one;
    size_t n = 1;
    if (json_is_array(v)) {
        n = json_array_size(v);
        if (n > SERVE_MAX_STOP) return serve_fail(e, 400, "stop", "'stop' has %zu strings; at most %d are allowed", n, SERVE_MAX_STOP);
        items = NULL;
    } else if (!json_is_string(v)) {
        return serve_fail(e, 400, "stop", "'stop' must be a string or an array of strings");
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = items ? items[i] : json_array_get(v, i);
        if (!json_is_string(s)) return serve_fail(e, 400, "stop", "'stop' must be a string or an array of strings");
        size_t len = json_string_length(s);
        if (len > SERVE_MAX_STOP_LEN) return serve_fail(e, 400, "stop", "a stop string has %zu bytes; at most %d are allowed", len, SERVE_MAX_STOP_LEN);
        if (len == 0) continue;   /* an empty stop string never matches */
        if (!(p->stop[p->n_stop] = strdup(json_string_value(s)))) return serve_fail(e, 500, NULL, "out of memory");
        p->n_stop++;
    }
    return 0;
}

/* One logit_bias entry: id (a JSON integer, or a decimal string for the object form) and
 * bias (a number, or false). */
static int bias_entry(json_t *id, json_t *b, int vocab, int k, serve_params *p, serve_error *e) {
    long long x = -1;
    if (json_is_integer(id)) {
        x = json_integer_value(id);
    } else if (json_is_string(id)) {
        const char *s = json_string_value(id);
        char *end;
        x = *s ? strtoll(s, &end, 10) : -1;
        if (!*s || *end) x = -1;
    }
    if (x < 0 || x >= vocab)
        return serve_fail(e, 400, "logit_bias", "logit_bias: entry %d names token '%.40s'; it must be a token id in [0, %d)", k,
                          json_is_string(id) ? json_string_value(id) : json_is_integer(id) ? "(out of range)" : "(not an id)", vocab);
    float v;
    if (json_is_false(b)) {
        v = -INFINITY;
    } else if (json_is_number(b) && fabs(json_number_value(b)) <= 1e6) {
        v = (float)json_number_value(b);
    } else {
        return serve_fail(e, 400, "logit_bias", "logit_bias: the bias of token %lld must be a number in [-1e6, 1e6] or false", x);
    }
    p->bias_ids[p->n_bias] = (int)x;
    p->bias[p->n_bias++] = v;
    return 0;
}

static int parse_logit_bias(json_t *v, int vocab, serve_params *p, serve_error *e) {
    if (!v || json_is_null(v)) return 0;
    size_t n;
    if (json_is_object(v)) n = json_object_size(v);
    else if (json_is_array(v)) n = json_array_size(v);
    else return serve_fail(e, 400, "logit_bias", "'logit_bias' must be an object {\"token id\": bias} or an array of [token id, bias]");
    if (n == 0) return 0;
    p->bias_ids = malloc(sizeof(int) * n);
    p->bias = malloc(sizeof(float) * n);
    if (!p->bias_ids || !p->bias) return serve_fail(e, 500, NULL, "out of memory");
    int k = 0;
    if (json_is_object(v)) {
        const char *key;
        json_t *b;
        json_object_foreach(v, key, b) {
            json_t *id = json_string(key);
            int rc = id ? bias_entry(id, b, vocab, k, p, e) : serve_fail(e, 500, NULL, "out of memory");
            json_decref(id);
            if (rc) return -1;
            k++;
        }
        return 0;
    }
    size_t i;
    json_t *pair;
    json_array_foreach(v, i, pair) {
        if (!json_is_array(pair) || json_array_size(pair) != 2)
            return serve_fail(e, 400, "logit_bias", "logit_bias[%zu] must be a pair [token id, bias]", i);
        if (bias_entry(json_array_get(pair, 0), json_array_get(pair, 1), vocab, (int)i, p, e)) return -1;
    }
    return 0;
}

int serve_parse_request(serve_kind kind, const char *body, size_t len, const tokenizer *tok, int vocab,
                        serve_params *p, serve_error *e) {
    memset(p, 0, sizeof *p);
    p->kind = kind;
    p->max_tokens = -1;
    p->sp = (sampler_params){.temperature = 0.8f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f, .seed = 0};
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) return serve_fail(e, 400, NULL, "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
    int rc = -1;
    json_t *clean = NULL;
    if (!json_is_object(root)) { serve_fail(e, 400, NULL, "the body must be a JSON object"); goto done; }

    json_t *model = json_object_get(root, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model)) { serve_fail(e, 400, "model", "'model' must be a string"); goto done; }
        if (!(p->model = strdup(json_string_value(model)))) { serve_fail(e, 500, NULL, "out of memory"); goto done; }
    }
    long long n = 1, x;
    if (get_int(root, "n", 1, 1000, &n, e) < 0) goto done;
    if (n != 1) { serve_fail(e, 400, "n", "'n' is %lld; only n = 1 is supported", n); goto done; }
    int r1 = get_int(root, "max_tokens", -1000000000LL, 1000000000LL, &x, e);
    if (r1 < 0) goto done;
    if (r1 > 0) {
        if (x <= 0 && x != -1) { serve_fail(e, 400, "max_tokens", "'max_tokens' is %lld; it must be at least 1", x); goto done; }
        p->max_tokens = (int)x;
    }
    int r2 = get_int(root, "max_completion_tokens", -1000000000LL, 1000000000LL, &x, e);
    if (r2 < 0) goto done;
    if (r2 > 0) {
        if (x <= 0) { serve_fail(e, 400, "max_completion_tokens", "'max_completion_tokens' is %lld; it must be at least 1", x); goto done; }
        p->max_tokens = (int)x;
    }
    double d;
    int r;
    if ((r = get_number(root, "temperature", 0, 100, &d, e)) < 0) goto done;
    if (r) p->sp.temperature = (float)d;
    if ((r = get_number(root, "top_p", 0, 1, &d, e)) < 0) goto done;
    if (r) p->sp.top_p = (float)d;
    if ((r = get_number(root, "min_p", 0, 1, &d, e)) < 0) goto done;
    if (r) p->sp.min_p = (float)d;
    if ((r = get_int(root, "top_k", -1, 1 << 30, &x, e)) < 0) goto done;
    if (r) p->sp.top_k = x < 0 ? 0 : (int)x;
    if ((r = get_int(root, "seed", -(1LL << 62), 1LL << 62, &x, e)) < 0) goto done;
    if (r && x >= 0) { p->sp.seed = (uint64_t)x; p->seed_given = 1; }   /* -1: random (llama-server) */
    if (p->sp.top_p == 0.0f) p->sp.top_p = 1e-6f;    /* top_p 0: keep the single most probable */
    if (get_bool(root, "stream", &p->stream, e) < 0) goto done;
    if (get_bool(root, "moe_routing", &p->want_routing, e) < 0) goto done;
    p->cache_prompt = 1;
    if (get_bool(root, "cache_prompt", &p->cache_prompt, e) < 0) goto done;
    json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so)) { serve_fail(e, 400, "stream_options", "'stream_options' must be an object"); goto done; }
        if (get_bool(so, "include_usage", &p->include_usage, e) < 0) goto done;
    }
    if (parse_stop(json_object_get(root, "stop"), p, e)) goto done;
    if (parse_logit_bias(json_object_get(root, "logit_bias"), vocab, p, e)) goto done;

    if (kind == SERVE_CHAT) {
        if (parse_messages(json_object_get(root, "messages"), &clean, e)) goto done;
        const char *tmpl = tok ? tokenizer_chat_template(tok) : NULL;
        if (!tmpl) { serve_fail(e, 400, "messages", "this checkpoint has no chat template (tokenizer_config.json chat_template): use /v1/completions"); goto done; }
        moe_error err = {{0}};
        if (chat_render_json(tmpl, tokenizer_config_path(tok), clean, NULL, 1, tokenizer_bos_str(tok),
                             tokenizer_eos_str(tok), &p->text, &err)) {
            serve_fail(e, 400, "messages", "the chat template failed on these messages: %s", err.msg);
            goto done;
        }
    } else {
        json_t *pr = json_object_get(root, "prompt");
        if (!pr) { serve_fail(e, 400, "prompt", "'prompt' is required (a string or an array of token ids)"); goto done; }
        if (json_is_string(pr)) {
            if (json_string_length(pr) == 0) { serve_fail(e, 400, "prompt", "'prompt' is empty"); goto done; }
            if (!(p->text = strdup(json_string_value(pr)))) { serve_fail(e, 500, NULL, "out of memory"); goto done; }
            p->add_bos = tok ? tokenizer_add_bos(tok) && tokenizer_bos_id(tok) >= 0 : 0;
        } else if (json_is_array(pr)) {
            size_t k, cnt = json_array_size(pr);
            if (cnt == 0) { serve_fail(e, 400, "prompt", "'prompt' is empty"); goto done; }
            if (json_is_string(json_array_get(pr, 0))) {
                if (cnt != 1 || !json_string_length(json_array_get(pr, 0))) { serve_fail(e, 400, "prompt", "'prompt' as a list must hold one non-empty string (batches of prompts are not supported)"); goto done; }
                p->text = strdup(json_string_value(json_array_get(pr, 0)));
                p->add_bos = tok ? tokenizer_add_bos(tok) && tokenizer_bos_id(tok) >= 0 : 0;
            } else {
                if (!(p->ids = malloc(sizeof(int) * cnt))) { serve_fail(e, 500, NULL, "out of memory"); goto done; }
                json_t *v;
                json_array_foreach(pr, k, v) {
                    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab) {
                        serve_fail(e, 400, "prompt", "prompt[%zu] must be a token id in [0, %d)", k, vocab);
                        goto done;
                    }
                    p->ids[k] = (int)json_integer_value(v);
                }
                p->n_ids = (int)cnt;
            }
        } else {
            serve_fail(e, 400, "prompt", "'prompt' must be a string or an array of token ids");
            goto done;
        }
    }
    moe_error err = {{0}};
    if (sampler_params_check(&p->sp, &err)) { serve_fail(e, 400, NULL, "%s", err.msg); goto done; }
    rc = 0;
done:
    json_decref(clean);
    json_decref(root);
    if (rc) serve_params_free(p);
    return rc;
}

/* ------------------------------------------------------------------ responses */

static char *dump(json_t *j, const char *prefix, const char *suffix, size_t *len) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s) return NULL;
    size_t a = strlen(prefix), b = strlen(s), c = strlen(suffix);
    char *out = malloc(a + b + c + 1);
    if (out) {
        memcpy(out, prefix, a);
        memcpy(out + a, s, b);
        memcpy(out + a + b, suffix, c + 1);
        if (len) *len = a + b + c;
    }
    free(s);
    return out;
}

char *serve_error_json(const serve_error *e) {
    json_t *o = json_pack("{s:{s:s,s:s,s:o,s:i}}", "error", "message", e->message, "type", e->type, "param",
                          e->param[0] ? json_string(e->param) : json_null(), "code", e->status);
    if (!o) {   /* a message that is not UTF-8 */
        o = json_pack("{s:{s:s,s:s,s:n,s:i}}", "error", "message", "error", "type", e->type, "param", "code", e->status);
    }
    return dump(o, "", "\n", NULL);
}

json_t *serve_routing_info(int L, int E, int G, int Gk, int K, int first_dense) {
    return json_pack("{s:i,s:i,s:i,s:i,s:i,s:i}", "layers", L, "experts", E, "groups", G, "topk_group", Gk, "k", K,
                     "first_dense", first_dense);
}

json_t *serve_routing_json(const serve_routing *r, int token, int pos, const char *text, size_t text_len) {
    json_t *layers = json_array();
    for (int l = 0; l < r->L; l++) {
        if (!r->k[l]) continue;
        json_t *ids = json_array(), *w = json_array(), *g = json_array();
        for (int j = 0; j < r->k[l]; j++) {
            json_array_append_new(ids, json_integer(r->ids[l * r->K + j]));
            json_array_append_new(w, json_real(roundf(r->w[l * r->K + j] * 1e4f) / 1e4));
        }
        for (int j = 0; j < r->n_groups[l]; j++) json_array_append_new(g, json_integer(r->groups[l * r->Gmax + j]));
        json_array_append_new(layers, json_pack("[i,o,o,o]", l, ids, w, g));
    }
    json_t *o = json_pack("{s:i,s:i,s:o}", "token", token, "pos", pos, "layers", layers);
    if (o && text) json_object_set_new(o, "text", serve_json_text(text, text_len));
    return o;
}

static json_t *head_object(const serve_resp_head *h, int chunk) {
    const char *obj = h->kind == SERVE_CHAT ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
    return json_pack("{s:s,s:s,s:I,s:s,s:s}", "id", h->id, "object", obj, "created", (json_int_t)h->created, "model",
                     h->model, "system_fingerprint", "moe");
}

static json_t *usage_object(int prompt_tokens, int completion_tokens, int cached) {
    return json_pack("{s:i,s:i,s:i,s:{s:i}}", "prompt_tokens", prompt_tokens, "completion_tokens", completion_tokens,
                     "total_tokens", prompt_tokens + completion_tokens, "prompt_tokens_details", "cached_tokens", cached);
}

char *serve_sse_chunk(const serve_resp_head *h, int role, const char *text, size_t text_len, const char *finish,
                      json_t *routing, json_t *routing_info, size_t *len) {
    json_t *o = head_object(h, 1);
    json_t *choice = json_pack("{s:i,s:o}", "index", 0, "finish_reason", finish ? json_string(finish) : json_null());
    if (h->kind == SERVE_CHAT) {
        json_t *delta = json_object();
        if (role) json_object_set_new(delta, "role", json_string("assistant"));
        if (text_len || (role && !finish)) json_object_set_new(delta, "content", serve_json_text(text, text_len));
        json_object_set_new(choice, "delta", delta);
    } else {
        json_object_set_new(choice, "text", serve_json_text(text, text_len));
        json_object_set_new(choice, "logprobs", json_null());
    }
    json_object_set_new(o, "choices", json_pack("[o]", choice));
    if (routing) json_object_set_new(o, "moe_routing", routing);
    if (routing_info) json_object_set_new(o, "moe_routing_info", routing_info);
    return dump(o, "data: ", "\n\n", len);
}

char *serve_sse_usage(const serve_resp_head *h, int prompt_tokens, int completion_tokens, int cached, size_t *len) {
    json_t *o = head_object(h, 1);
    json_object_set_new(o, "choices", json_array());
    json_object_set_new(o, "usage", usage_object(prompt_tokens, completion_tokens, cached));
    return dump(o, "data: ", "\n\n", len);
}

char *serve_full_response(const serve_resp_head *h, const char *text, size_t text_len, const char *finish,
                          int prompt_tokens, int completion_tokens, int cached, json_t *routing,
                          json_t *routing_info, size_t *len) {
    json_t *o = head_object(h, 0);
    json_t *choice = json_pack("{s:i,s:s}", "index", 0, "finish_reason", finish);
    if (h->kind == SERVE_CHAT) {
        json_object_set_new(choice, "message",
                            json_pack("{s:s,s:o}", "role", "assistant", "content", serve_json_text(text, text_len)));
    } else {
        json_object_set_new(choice, "text", serve_json_text(text, text_len));
        json_object_set_new(choice, "logprobs", json_null());
    }
    json_object_set_new(o, "choices", json_pack("[o]", choice));
    json_object_set_new(o, "usage", usage_object(prompt_tokens, completion_tokens, cached));
    if (routing) json_object_set_new(o, "moe_routing", routing);
    if (routing_info) json_object_set_new(o, "moe_routing_info", routing_info);
    return dump(o, "", "\n", len);
}
