/* session.c - model + context + KV cache in one (see session.h). */
#include "session.h"

#include <string.h>

#include "gguf_config.h"
#include "tokenizer.h"

int session_open(moe_session *s, const char *path, const model_options *opt, int n_slots, moe_error *err) {
    memset(s, 0, sizeof *s);
    if (model_load(&s->m, path, opt, err)) return MOE_FAIL;
    if (kv_init(&s->kv, &s->m, n_slots, 0, err) || ctx_init(&s->c, &s->m, err)) {   /* the cache is checked first */
        session_close(s);
        return MOE_FAIL;
    }
    return MOE_OK;
}

void session_close(moe_session *s) {
    kv_free(&s->kv);
    ctx_free(&s->c);
    model_free(&s->m);
    memset(s, 0, sizeof *s);
}

int model_tokenizer_load(tokenizer **out, const char *path, moe_error *err) {
    if (!weights_is_gguf(path)) return tokenizer_load(out, path, err);
    gguf_file g;
    if (gguf_open(&g, path, err)) return MOE_FAIL;
    int rc = gguf_tokenizer(&g, out, err);
    gguf_close(&g);
    return rc;
}
