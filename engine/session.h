/* session.h - a model with one context and a KV cache: what a single program (a command,
 * a test) runs on. The model stays usable on its own by other contexts and caches.
 *
 *   moe_session s;
 *   session_open(&s, dir, &opt, n_slots, &err);
 *   model_forward_seq(&s.m, &s.c, &s.kv, slot, tokens, n, pos, logits, 0, NULL, &err);
 *   session_close(&s);
 */
#ifndef MOE_SESSION_H
#define MOE_SESSION_H

#include "model.h"

typedef struct {
    moe_model m;   /* read-only after session_open */
    moe_ctx c;     /* scratch for passes of up to opt->batch_max tokens, the pool */
    moe_kv kv;     /* n_slots sequences of up to opt->max_seq positions */
} moe_session;

int session_open(moe_session *s, const char *path, const model_options *opt, int n_slots, moe_error *err);
void session_close(moe_session *s);

struct tokenizer;
/* The tokenizer of a checkpoint: DIR/tokenizer.json (+ tokenizer_config.json), or the
 * tokenizer.ggml.* metadata of a .gguf file. */
int model_tokenizer_load(struct tokenizer **out, const char *path, moe_error *err);

#endif
