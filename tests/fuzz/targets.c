/* targets.c - fuzz target bodies (see targets.h). */
#include "targets.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "chat.h"
#include "config.h"
#include "ep.h"
#include "eplb.h"
#include "gguf.h"
#include "gguf_config.h"
#include "rope.h"
#include "safetensors.h"
#include "serve_api.h"
#include "tokenizer.h"
#include "weights.h"

#define CHECK(cond, ...)                                                          \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "fuzz invariant failed at %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                         \
            fputc('\n', stderr);                                                  \
            abort();                                                              \
        }                                                                         \
    } while (0)

/* A failed call must leave one non-empty line that names `what`. */
static void check_error(const moe_error *err, const char *what) {
    CHECK(err->msg[0], "empty error message");
    CHECK(!strchr(err->msg, '\n'), "error is not one line: %s", err->msg);
    CHECK(!what || strstr(err->msg, what), "error does not name %s: %s", what, err->msg);
}

static volatile uint8_t sink;

static const char *root_path(char *buf, size_t n, const char *rel) {
    const char *root = getenv("MOE_FUZZ_ROOT");
    snprintf(buf, n, "%s%s%s", root ? root : "", root ? "/" : "", rel);
    return buf;
}

static char *slurp(const char *rel, size_t *len) {
    char p[1024];
    root_path(p, sizeof p, rel);
    FILE *f = fopen(p, "rb");
    if (!f) { fprintf(stderr, "fuzz: cannot open fixture %s (run from the repository root or set MOE_FUZZ_ROOT)\n", p); abort(); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *b = malloc((size_t)n + 1);
    if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) abort();
    fclose(f);
    b[n] = 0;
    *len = (size_t)n;
    return b;
}

/* ------------------------------------------------------------------ safetensors */

static void check_set(const st_set *s) {
    for (int i = 0; i < s->n_tensors; i++) {
        const st_tensor *t = &s->tensors[i];
        CHECK(st_find(s, t->name) == t, "tensor %s not found by name", t->name);
        CHECK(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS, "ndim %d", t->ndim);
        CHECK((uint64_t)t->nbytes == (uint64_t)t->numel * st_dtype_size(t->dtype), "nbytes of %s", t->name);
        CHECK(t->file >= 0 && t->file < s->n_files, "file index");
        const st_file *f = &s->files[t->file];
        (void)f;
        if (t->nbytes) {   /* touch both ends: ASan catches data outside the buffer */
            const uint8_t *d = t->data;
            sink ^= d[0];
            sink ^= d[t->nbytes - 1];
        }
    }
}

int fuzz_safetensors(const uint8_t *data, size_t size) {
    st_set s;
    moe_error err = {{0}};
    /* copy into an exact-size buffer so ASan sees any read past the end */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    if (st_parse_buffer(&s, buf, size, "fuzz.safetensors", &err) == MOE_OK) {
        CHECK(s.n_tensors <= (1 << 20), "%d tensors", s.n_tensors);
        check_set(&s);
        for (int i = 0; i < s.n_tensors && s.n_tensors <= 256; i++)   /* no two tensors share a byte */
            for (int j = i + 1; j < s.n_tensors; j++) {
                const uint8_t *a = s.tensors[i].data, *b = s.tensors[j].data;
                size_t na = s.tensors[i].nbytes, nb = s.tensors[j].nbytes;
                CHECK(!na || !nb || a + na <= b || b + nb <= a, "tensors %s and %s overlap", s.tensors[i].name,
                      s.tensors[j].name);
            }
        CHECK(st_find(&s, "\x01no such tensor") == NULL, "found a tensor that is not there");
        st_close(&s);
    } else {
        check_error(&err, "fuzz.safetensors");
    }
    free(buf);
    return 0;
}

/* Two shards in memory: A = {a: F32[2], b: BF16[3]}, B = {c: U8[5]}. */
#define IDX_DIR "/nonexistent-moe-fuzz"
static uint8_t *shard_buf[2];
static size_t shard_len[2];
static const char *shard_name[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};

static void make_shard(int i, const char *header, size_t data_len) {
    size_t hl = strlen(header);
    shard_len[i] = 8 + hl + data_len;
    shard_buf[i] = calloc(1, shard_len[i]);
    for (int k = 0; k < 8; k++) shard_buf[i][k] = (uint8_t)((uint64_t)hl >> (8 * k));
    memcpy(shard_buf[i] + 8, header, hl);
}

int fuzz_st_index(const uint8_t *data, size_t size) {
    if (!shard_buf[0]) {
        make_shard(0, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                      "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[8,14]}}", 14);
        make_shard(1, "{\"c\":{\"dtype\":\"U8\",\"shape\":[5],\"data_offsets\":[0,5]},\"__metadata__\":{\"format\":\"pt\"}}", 5);
    }
    st_set s;
    memset(&s, 0, sizeof s);
    moe_error err = {{0}};
    char p[256];
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, IDX_DIR "/%s", shard_name[i]);
        CHECK(st_add_buffer(&s, shard_buf[i], shard_len[i], p, &err) == MOE_OK, "%s", err.msg);
    }
    char *text = malloc(size ? size : 1);   /* exact size: no NUL terminator to lean on */
    if (!text) { st_close(&s); return 0; }
    memcpy(text, data, size);
    if (st_apply_index(&s, IDX_DIR, text, size, IDX_DIR "/model.safetensors.index.json", &err) == MOE_OK) {
        CHECK(s.n_files == 2, "opened %d files", s.n_files);
        check_set(&s);
    } else {
        check_error(&err, IDX_DIR "/model.safetensors.index.json");
    }
    free(text);
    st_close(&s);
    return 0;
}

/* ------------------------------------------------------------------ config.json */

int fuzz_config(const uint8_t *data, size_t size) {
    moe_config c;
    moe_error err = {{0}};
    char *text = malloc(size ? size : 1);
    if (!text) return 0;
    memcpy(text, data, size);
    if (config_parse(&c, text, size, "config.json", &err) == MOE_OK) {
        const int MAXD = 1 << 24;
        CHECK(c.vocab_size >= 1 && c.vocab_size <= MAXD && c.hidden_size >= 1 && c.hidden_size <= MAXD, "dims");
        CHECK(c.num_hidden_layers >= 1 && c.num_hidden_layers <= MAXD, "layers");
        CHECK(c.kv_lora_rank >= 1 && c.qk_rope_head_dim >= 2 && c.qk_rope_head_dim % 2 == 0, "attention dims");
        CHECK(c.n_group >= 1 && c.topk_group >= 1, "groups");
        if (c.n_routed_experts > 0) {   /* group fields are not checked for a dense model: unused */
            CHECK(c.topk_group <= c.n_group, "topk_group");
            CHECK(c.num_experts_per_tok >= 1 && c.num_experts_per_tok <= c.n_routed_experts, "top-k");
            CHECK(c.n_routed_experts % c.n_group == 0 && config_group_size(&c) >= 1, "group size");
        }
        CHECK(c.bos_token_id < c.vocab_size && c.eos_token_id < c.vocab_size, "special ids");
        CHECK(memchr(c.model_type, 0, sizeof c.model_type) != NULL, "model_type not terminated");
        int moe_layers = 0;
        for (int l = 0; l < c.num_hidden_layers + c.num_nextn_predict_layers && l < 4096; l++)
            moe_layers += config_layer_is_moe(&c, l);
        (void)moe_layers;
        rope_params r;
        moe_error rerr = {{0}};
        if (rope_init(&r, &c, &rerr) != MOE_OK) check_error(&rerr, NULL);
        else CHECK(r.dr == c.qk_rope_head_dim, "rope dr");
    } else {
        check_error(&err, "config.json");
    }
    free(text);
    return 0;
}

/* ------------------------------------------------------------------ tokenizer */

/* Encodes and decodes `text` with t; ids must be in range and decoding must work. */
static void exercise_tokenizer(const tokenizer *t, const char *text, size_t len, int roundtrip) {
    int *ids = NULL, n = 0;
    moe_error err = {{0}};
    int V = tokenizer_vocab_size(t);
    if (tokenizer_encode(t, text, len, &ids, &n, &err) != MOE_OK) {
        CHECK(!roundtrip, "encode failed: %s", err.msg);
        check_error(&err, NULL);
        return;
    }
    CHECK(n >= 0 && (n == 0 || ids), "n = %d", n);
    for (int i = 0; i < n; i++) CHECK(ids[i] >= 0 && ids[i] < V, "id %d outside [0, %d)", ids[i], V);
    char *out = NULL;
    size_t olen = 0;
    if (tokenizer_decode(t, ids, n, &out, &olen, &err) == MOE_OK) {
        CHECK(out && out[olen] == 0, "decode result not terminated");
        if (roundtrip)
            CHECK(olen == len && !memcmp(out, text, len), "decode(encode(x)) != x (%zu vs %zu bytes)", olen, len);
        /* streaming decode gives the same bytes */
        tokenizer_stream st;
        tokenizer_stream_init(&st);
        size_t pos = 0;
        int ok = 1;
        for (int i = 0; i < n && ok; i++) {
            const char *p;
            size_t l;
            if (tokenizer_stream_push(t, &st, ids[i], &p, &l, &err) != MOE_OK) { ok = 0; break; }
            CHECK(pos + l <= olen && !memcmp(out + pos, p, l), "stream decode differs at byte %zu", pos);
            pos += l;
        }
        if (ok) {
            const char *p;
            size_t l;
            tokenizer_stream_flush(&st, &p, &l);
            CHECK(pos + l == olen && !memcmp(out + pos, p, l), "stream decode differs at the end");
        }
        tokenizer_stream_free(&st);
        free(out);
    } else {
        CHECK(!roundtrip, "decode failed: %s", err.msg);
        check_error(&err, NULL);
    }
    free(ids);
}

static const char probe_text[] = "Hello, the world 12345 \xe4\xbd\xa0\xe5\xa5\xbd <\xef\xbd\x9cUser\xef\xbd\x9c> \xff\xc3(\n\r\t ";

int fuzz_tokenizer_json(const uint8_t *data, size_t size) {
    tokenizer *t = NULL;
    moe_error err = {{0}};
    char *text = malloc(size ? size : 1);
    if (!text) return 0;
    memcpy(text, data, size);
    if (tokenizer_load_buffer(&t, text, size, "tokenizer.json", NULL, 0, NULL, &err) == MOE_OK) {
        int V = tokenizer_vocab_size(t);
        CHECK(V >= 0 && V <= (1 << 24), "vocab size %d", V);
        exercise_tokenizer(t, probe_text, sizeof probe_text - 1, 0);
        exercise_tokenizer(t, text, size < 256 ? size : 256, 0);
        for (int id = -1; id <= V && id < 2048; id++) {
            size_t l;
            const char *b = tokenizer_token_bytes(t, id, &l);
            if (b && l) sink ^= (uint8_t)b[l - 1];
        }
        tokenizer_free(t);
    } else {
        check_error(&err, "tokenizer.json");
    }
    free(text);
    return 0;
}

static char *tiny_json;
static size_t tiny_len;

int fuzz_tokenizer_config(const uint8_t *data, size_t size) {
    if (!tiny_json) tiny_json = slurp("tests/fuzz/tiny_tokenizer.json", &tiny_len);
    tokenizer *t = NULL;
    moe_error err = {{0}};
    char *text = malloc(size ? size : 1);
    if (!text) return 0;
    memcpy(text, data, size);
    if (tokenizer_load_buffer(&t, tiny_json, tiny_len, "tokenizer.json", text, size, "tokenizer_config.json", &err) ==
        MOE_OK) {
        int V = tokenizer_vocab_size(t), bos = tokenizer_bos_id(t), eos = tokenizer_eos_id(t);
        CHECK(bos >= -1 && bos < V && eos >= -1 && eos < V, "bos %d eos %d V %d", bos, eos, V);
        const char *b = tokenizer_bos_str(t), *e = tokenizer_eos_str(t), *ct = tokenizer_chat_template(t);
        CHECK(b && e, "NULL bos/eos string");
        if (bos >= 0) CHECK(tokenizer_token_id(t, b) == bos, "bos string does not map back");
        exercise_tokenizer(t, b, strlen(b), 0);
        exercise_tokenizer(t, e, strlen(e), 0);
        if (ct) exercise_tokenizer(t, ct, strlen(ct) < 4096 ? strlen(ct) : 4096, 0);
        tokenizer_free(t);
    } else {
        check_error(&err, "tokenizer_config.json");
    }
    free(text);
    return 0;
}

static tokenizer *v3;

int fuzz_encode(const uint8_t *data, size_t size) {
    if (!v3) {
        char p[1024];
        moe_error err = {{0}};
        const char *env = getenv("MOE_FUZZ_TOKENIZER");
        if (tokenizer_load(&v3, env ? env : root_path(p, sizeof p, "tests/data/tokenizer/deepseek_v3"), &err)) {
            fprintf(stderr, "fuzz: %s\n", err.msg);
            abort();
        }
    }
    char *text = malloc(size ? size : 1);
    if (!text) return 0;
    memcpy(text, data, size);
    exercise_tokenizer(v3, text, size, 1);
    free(text);
    return 0;
}

/* ------------------------------------------------------------------ chat template */

static json_t *chat_msgs;

int fuzz_chat(const uint8_t *data, size_t size) {
    if (!chat_msgs) {
        json_error_t je;
        chat_msgs = json_loads(
            "[{\"role\":\"system\",\"content\":\"You are helpful.\"},{\"role\":\"user\",\"content\":\"Hi \u4f60\u597d\"},"
            "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"type\":\"function\",\"function\":"
            "{\"name\":\"get\",\"arguments\":\"{\\\"x\\\": 1}\"}}]},{\"role\":\"tool\",\"content\":\"42\"},"
            "{\"role\":\"assistant\",\"content\":\"<think>hmm</think>The answer is 42.\"},{\"role\":\"user\",\"content\":\"\"}]",
            0, &je);
        CHECK(chat_msgs, "fixture: %s", je.text);
    }
    char *tmpl = malloc(size + 1);   /* the renderer takes a NUL-terminated template */
    if (!tmpl) return 0;
    memcpy(tmpl, data, size);
    tmpl[size] = 0;
    char *out = NULL;
    moe_error err = {{0}};
    json_t *vars = json_pack("{s:b}", "tools_in_user_message", 0);
    if (chat_render_json(tmpl, "tokenizer_config.json", chat_msgs, vars, size & 1, "<｜begin▁of▁sentence｜>",
                         "<｜end▁of▁sentence｜>", &out, &err) == MOE_OK) {
        CHECK(out, "no output");
        sink ^= (uint8_t)out[0];
        free(out);
    } else {
        CHECK(!out, "output on failure");
        check_error(&err, "tokenizer_config.json");
    }
    json_decref(vars);
    free(tmpl);
    return 0;
}

/* ------------------------------------------------------------------ server requests */

/* V3's tokenizer (with its chat template), shared with fuzz_encode. */
static tokenizer *v3_tokenizer(void) {
    if (!v3) {
        char p[1024];
        moe_error err = {{0}};
        const char *env = getenv("MOE_FUZZ_TOKENIZER");
        if (tokenizer_load(&v3, env ? env : root_path(p, sizeof p, "tests/data/tokenizer/deepseek_v3"), &err)) {
            fprintf(stderr, "fuzz: %s\n", err.msg);
            abort();
        }
    }
    return v3;
}

int fuzz_serve_request(const uint8_t *data, size_t size) {
    tokenizer *t = v3_tokenizer();
    serve_kind kind = size & 1 ? SERVE_CHAT : SERVE_COMPLETION;
    char *body = malloc(size ? size : 1);   /* exact size: reads past the end are caught */
    if (!body) return 0;
    memcpy(body, data, size);
    serve_params p;
    serve_error e;
    if (serve_parse_request(kind, body, size, t, tokenizer_vocab_size(t), &p, &e) == 0) {
        CHECK(p.text || (p.ids && p.n_ids > 0), "no prompt");
        CHECK(p.max_tokens >= 1 || p.max_tokens == -1, "max_tokens %d", p.max_tokens);
        CHECK(p.n_stop >= 0 && p.n_stop <= SERVE_MAX_STOP, "n_stop %d", p.n_stop);
        for (int i = 0; i < p.n_stop; i++) CHECK(p.stop[i][0] && strlen(p.stop[i]) <= SERVE_MAX_STOP_LEN, "stop string");
        for (int i = 0; i < p.n_ids; i++) CHECK(p.ids[i] >= 0 && p.ids[i] < tokenizer_vocab_size(t), "id %d", p.ids[i]);
        for (int i = 0; i < p.n_bias; i++)
            CHECK(p.bias_ids[i] >= 0 && p.bias_ids[i] < tokenizer_vocab_size(t) && !isnan(p.bias[i]) && p.bias[i] < 1e7f,
                  "logit_bias %d: id %d bias %g", i, p.bias_ids[i], p.bias[i]);
        CHECK(p.sp.temperature >= 0 && p.sp.top_p > 0 && p.sp.top_p <= 1, "sampling");
        serve_params_free(&p);
    } else {
        CHECK(e.status == 400 || e.status == 500, "status %d", e.status);
        CHECK(e.message[0] && !strchr(e.message, '\n'), "error not one line: %s", e.message);
        char *ej = serve_error_json(&e);
        CHECK(ej, "no error body");
        json_t *j = json_loads(ej, 0, NULL);
        CHECK(j && json_is_string(json_object_get(json_object_get(j, "error"), "message")), "error body: %s", ej);
        json_decref(j);
        free(ej);
    }
    /* the input as generated text: any bytes must give a valid SSE chunk */
    serve_resp_head h = {"cmpl-x", "m", 0, kind};
    size_t len;
    char *chunk = serve_sse_chunk(&h, 1, body, size, size & 2 ? "stop" : NULL, NULL, NULL, &len);
    CHECK(chunk && len > 8 && !strncmp(chunk, "data: {", 7) && !memcmp(chunk + len - 2, "\n\n", 2), "sse chunk");
    json_t *j = json_loadb(chunk + 6, len - 6, 0, NULL);
    CHECK(j, "chunk is not JSON");
    json_decref(j);
    free(chunk);
    free(body);
    return 0;
}

/* ------------------------------------------------------------------ table */

/* ------------------------------------------------------------------ gguf */

/* Walks a value: every element of arrays (nested ones too, up to `budget` elements in
 * all), touching the first and last byte of each string so ASan sees anything outside
 * the buffer; numbers are read through the typed readers. */
static void walk_value(const gguf_value *v, const uint8_t *lo, const uint8_t *hi, long *budget) {
    if (--*budget < 0) return;
    CHECK(v->type < GGUF_VAL_COUNT, "value type %u", v->type);
    if (v->type == GGUF_VAL_ARRAY) {
        CHECK(v->elem < GGUF_VAL_COUNT, "element type %u", v->elem);
        CHECK(v->p >= lo && v->p + v->n_bytes <= hi, "array outside the file");
        for (uint64_t i = 0; i < v->n && *budget > 0; i++) {
            gguf_value e = gguf_arr_at(v, i);
            CHECK(e.p >= v->p && e.p + e.n_bytes <= v->p + v->n_bytes, "element %llu outside its array", (unsigned long long)i);
            walk_value(&e, lo, hi, budget);
        }
        return;
    }
    CHECK(v->p >= lo && v->p + v->n_bytes <= hi, "value outside the file");
    if (v->type == GGUF_VAL_STRING) {
        CHECK(v->n_bytes <= GGUF_MAX_STRING, "string of %llu bytes", (unsigned long long)v->n_bytes);
        if (v->n_bytes) { sink ^= v->p[0]; sink ^= v->p[v->n_bytes - 1]; }
        return;
    }
    int64_t iv;
    double d;
    int is_int = gguf_val_int(v, &iv) == MOE_OK || v->type == GGUF_VAL_U64, is_float = gguf_val_float(v, &d) == MOE_OK;
    CHECK(is_int + is_float == 1 || v->type == GGUF_VAL_BOOL, "type %u is neither integer nor float", v->type);
    if (v->type == GGUF_VAL_BOOL) CHECK(v->p[0] <= 1, "bool %u", v->p[0]);
}

int fuzz_gguf(const uint8_t *data, size_t size) {
    gguf_file g;
    moe_error err = {{0}};
    uint8_t *buf = malloc(size ? size : 1);   /* exact size: ASan sees any read past the end */
    if (!buf) return 0;
    memcpy(buf, data, size);
    if (gguf_parse_buffer(&g, buf, size, "fuzz.gguf", &err) != MOE_OK) {
        check_error(&err, "fuzz.gguf");
        free(buf);
        return 0;
    }
    CHECK(g.n_kv <= GGUF_MAX_KV && g.n_tensors <= GGUF_MAX_TENSORS, "%d keys, %d tensors", g.n_kv, g.n_tensors);
    CHECK(g.alignment && !(g.alignment & (g.alignment - 1)), "alignment %u", g.alignment);
    long budget = 1 << 16;
    for (int i = 0; i < g.n_kv; i++) {
        const gguf_kv *kv = &g.kv[i];
        CHECK(gguf_find_kv(&g, kv->key) == kv, "key %s not found by name", kv->key);
        CHECK(kv->key[0] && strlen(kv->key) < GGUF_MAX_KEY, "key length");
        walk_value(&kv->v, buf, buf + size, &budget);
        /* every typed getter either reads it or says why not, in one line naming the file */
        uint32_t u; float f; int b; const char *s; size_t sl; const gguf_value *a; char sb[16];
        if (gguf_get_u32(&g, kv->key, 1, 0, &u, &err)) check_error(&err, "fuzz.gguf");
        if (gguf_get_f32(&g, kv->key, 1, 0, &f, &err)) check_error(&err, "fuzz.gguf");
        if (gguf_get_bool(&g, kv->key, 1, 0, &b, &err)) check_error(&err, "fuzz.gguf");
        if (gguf_get_str(&g, kv->key, 1, &s, &sl, &err)) check_error(&err, "fuzz.gguf");
        else CHECK((const uint8_t *)s >= buf && (const uint8_t *)s + sl <= buf + size, "string outside the file");
        if (gguf_get_strbuf(&g, kv->key, 1, "", sb, sizeof sb, &err)) check_error(&err, "fuzz.gguf");
        if (gguf_get_arr(&g, kv->key, 1, GGUF_VAL_COUNT, &a, &err)) check_error(&err, "fuzz.gguf");
    }
    const uint8_t *data_lo = buf + g.data_offset;
    for (int i = 0; i < g.n_tensors; i++) {
        const gguf_tensor *t = &g.tensors[i];
        CHECK(gguf_find_tensor(&g, t->name) == t, "tensor %s not found by name", t->name);
        CHECK(t->n_dims >= 0 && t->n_dims <= GGUF_MAX_DIMS, "n_dims %d", t->n_dims);
        int blk = gguf_type_block(t->type);
        CHECK(blk > 0 && t->ne[0] % blk == 0, "type %u / row %lld", t->type, (long long)t->ne[0]);
        uint64_t n = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) n *= (uint64_t)t->ne[d];
        CHECK(n == t->n_elems, "element count of %s", t->name);
        CHECK((uint64_t)t->n_bytes == n / (uint64_t)blk * gguf_type_block_bytes(t->type), "bytes of %s", t->name);
        CHECK(t->offset % g.alignment == 0, "offset of %s", t->name);
        const uint8_t *d = t->data;
        CHECK(d == data_lo + t->offset, "data pointer of %s", t->name);
        if (t->n_bytes) {
            CHECK(d >= data_lo && t->n_bytes <= (size_t)(buf + size - d), "data of %s outside the file", t->name);
            sink ^= d[0];
            sink ^= d[t->n_bytes - 1];
            /* the types the model loader reads (weights_ggml_mat_type): decode the first and
             * the last row of the fuzzed bytes as the loader would (any bits are a value) */
            int md = weights_ggml_mat_type(t->type);
            if (md >= 0 && t->ne[0] > 0 && t->ne[0] <= 4096) {
                static float row[4096];
                size_t rb = mat_row_bytes((mat_dtype)md, (int)t->ne[0]);
                CHECK(rb > 0 && t->n_bytes % rb == 0, "row bytes of %s", t->name);
                mat_type_of((mat_dtype)md)->to_f32(d, row, (int)t->ne[0]);
                mat_type_of((mat_dtype)md)->to_f32(d + t->n_bytes - rb, row, (int)t->ne[0]);
                sink ^= (uint8_t)(row[0] != row[0]);
            }
        }
    }
    for (int i = 0; i < g.n_tensors && g.n_tensors <= 256; i++)   /* no two tensors share a byte */
        for (int j = i + 1; j < g.n_tensors; j++) {
            const uint8_t *a = g.tensors[i].data, *b = g.tensors[j].data;
            size_t na = g.tensors[i].n_bytes, nb = g.tensors[j].n_bytes;
            CHECK(!na || !nb || a + na <= b || b + nb <= a, "tensors %s and %s overlap", g.tensors[i].name,
                  g.tensors[j].name);
        }
    CHECK(gguf_find_tensor(&g, "\x01none") == NULL && gguf_find_kv(&g, "\x01none") == NULL, "found what is not there");
    /* what uses the metadata: the config and the tokenizer */
    moe_config c;
    if (gguf_config(&g, &c, &err) == MOE_OK) {
        CHECK(c.vocab_size >= 1 && c.hidden_size >= 1 && c.num_hidden_layers >= 1, "config dims");
        CHECK(c.qk_rope_head_dim % 2 == 0 && c.qk_nope_head_dim >= 1, "head dims");
        for (int l = 0; l < c.num_hidden_layers + c.num_nextn_predict_layers; l++) (void)config_layer_is_moe(&c, l);
    } else check_error(&err, "fuzz.gguf");
    tokenizer *t = NULL;
    if (gguf_tokenizer(&g, &t, &err) == MOE_OK) {
        CHECK(tokenizer_vocab_size(t) >= 0 && tokenizer_vocab_size(t) <= (1 << 24), "vocab size");
        exercise_tokenizer(t, probe_text, sizeof probe_text - 1, 0);
        tokenizer_free(t);
    } else check_error(&err, "fuzz.gguf");
    gguf_close(&g);
    free(buf);
    return 0;
}

/* ------------------------------------------------------------------ eplb */

/* The invariants of an accepted plan, and plan -> text -> plan giving the same arrays. */
static void check_plan(const eplb_plan *p) {
    const int P = p->n_slots, E = p->n_experts;
    CHECK(p->n_ranks >= 1 && p->n_ranks <= EPLB_MAX_RANKS && E >= 1 && P >= E, "sizes");
    for (int l = 0; l < p->n_layers; l++) {
        int total = 0;
        for (int e = 0; e < E; e++) {
            CHECK(p->copies[(size_t)l * E + e] >= 1, "expert %d of layer %d on no rank", e, l);
            total += p->copies[(size_t)l * E + e];
        }
        CHECK(total == P, "copies sum to %d, want %d", total, P);
        if (l) CHECK(p->layer_id[l] > p->layer_id[l - 1], "layers ascending");
        for (int s = 0; s < P; s++) {
            size_t at = (size_t)l * P + s;
            CHECK(p->slot_expert[at] >= 0 && p->slot_expert[at] < E, "slot expert");
            CHECK(p->slot_replica[at] >= 0 && p->slot_replica[at] < p->copies[(size_t)l * E + p->slot_expert[at]],
                  "slot replica");
            CHECK(p->slot_rank[at] >= 0 && p->slot_rank[at] < p->n_ranks, "slot rank");
            if (s) CHECK(p->slot_rank[at] >= p->slot_rank[at - 1], "slots in rank order");
        }
        /* what the engine derives (ep_moe.c): each expert's holders, distinct and ascending */
        for (int e = 0; e < E && l < 8; e++) {
            int ranks[EPLB_MAX_RANKS], h = ep_holders(p, l, e, ranks);
            CHECK(h >= 1 && h <= p->n_ranks && h <= p->copies[(size_t)l * E + e], "expert %d: %d holders", e, h);
            for (int j = 0; j < h; j++) CHECK(ranks[j] >= 0 && ranks[j] < p->n_ranks && (!j || ranks[j] > ranks[j - 1]), "holders");
        }
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    CHECK(f, "open_memstream");
    moe_error werr = {{0}};
    CHECK(eplb_plan_write_stream(p, NULL, NULL, f, &werr) == MOE_OK, "write: %s", werr.msg);
    fclose(f);
    eplb_plan q;
    moe_error err = {{0}};
    CHECK(eplb_plan_parse(&q, buf, len, "again.json", &err) == MOE_OK, "the written plan does not parse: %s", err.msg);
    size_t LP = (size_t)p->n_layers * P;
    CHECK(q.n_layers == p->n_layers && q.n_slots == P && q.n_ranks == p->n_ranks, "round trip sizes");
    CHECK(!memcmp(q.slot_expert, p->slot_expert, sizeof(int) * LP) && !memcmp(q.slot_rank, p->slot_rank, sizeof(int) * LP) &&
          !memcmp(q.slot_replica, p->slot_replica, sizeof(int) * LP), "round trip slots");
    eplb_plan_free(&q);
    free(buf);
}

int fuzz_eplb_plan(const uint8_t *data, size_t size) {
    eplb_plan p;
    moe_error err = {{0}};
    char *text = malloc(size ? size : 1);
    if (!text) return 0;
    memcpy(text, data, size);
    if (eplb_plan_parse(&p, text, size, "plan.json", &err) == MOE_OK) {
        check_plan(&p);
        eplb_plan_free(&p);
    } else {
        check_error(&err, "plan.json");
    }
    free(text);
    return 0;
}

int fuzz_eplb_counts(const uint8_t *data, size_t size) {
    eplb_counts c;
    moe_error err = {{0}};
    char *text = malloc(size ? size : 1);
    if (!text) return 0;
    memcpy(text, data, size);
    if (eplb_counts_parse(&c, text, size, "x.counts.csv", &err) == MOE_OK) {
        CHECK(c.n_layers >= 1 && c.n_experts >= 1 && c.n_experts <= EPLB_MAX_EXPERTS, "counts sizes");
        for (size_t i = 0; i < (size_t)c.n_layers * c.n_experts; i++) CHECK(c.count[i] >= 0, "negative count");
        /* plan it: 1 or 2 ranks (as E allows), a few replicas; every plan must satisfy check_plan */
        int N = c.n_experts >= 2 ? 2 : 1, R = (N - c.n_experts % N) % N + N;
        eplb_plan p;
        if (eplb_rebalance(&p, &c, N, R, 1, 1, &err) == MOE_OK) {
            check_plan(&p);
            eplb_plan_free(&p);
        } else {
            check_error(&err, NULL);
        }
        eplb_counts_free(&c);
    } else {
        check_error(&err, "x.counts.csv");
    }
    free(text);
    return 0;
}

const fuzz_target fuzz_targets[] = {
    {"safetensors", fuzz_safetensors},
    {"st_index", fuzz_st_index},
    {"config", fuzz_config},
    {"tokenizer_json", fuzz_tokenizer_json},
    {"tokenizer_config", fuzz_tokenizer_config},
    {"encode", fuzz_encode},
    {"chat", fuzz_chat},
    {"eplb_plan", fuzz_eplb_plan},
    {"eplb_counts", fuzz_eplb_counts},
    {"gguf", fuzz_gguf},
    {"serve_request", fuzz_serve_request},
    {NULL, NULL},
};

void fuzz_cleanup(void) {
    for (int i = 0; i < 2; i++) { free(shard_buf[i]); shard_buf[i] = NULL; }
    free(tiny_json);
    tiny_json = NULL;
    tokenizer_free(v3);
    v3 = NULL;
    json_decref(chat_msgs);
    chat_msgs = NULL;
}
