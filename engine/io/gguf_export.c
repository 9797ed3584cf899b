/* gguf_export.c - a model as a llama.cpp deepseek2 GGUF file (see gguf_export.h). */
#include "gguf_export.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf_config.h"
#include "tokenizer.h"
#include "weights.h"

/* ------------------------------------------------------------------ buffers */

typedef struct {
    gguf_writer w;
    void **bufs; int n_bufs, cap;   /* tensor data made here, freed after writing */
    uint32_t type;                  /* ggml type of the 2-D weights */
    int mat_type;                   /* its type-table type */
    moe_error *err;
} exporter;

static void *ex_alloc(exporter *x, size_t bytes) {
    if (x->n_bufs == x->cap) {
        int cap = x->cap ? 2 * x->cap : 256;
        void **g = realloc(x->bufs, sizeof *g * (size_t)cap);
        if (!g) return NULL;
        x->bufs = g;
        x->cap = cap;
    }
    void *p = malloc(bytes ? bytes : 1);
    if (p) x->bufs[x->n_bufs++] = p;
    return p;
}

/* `count` f32 matrices of rows x cols (each given by its first row pointer, contiguous) as
 * one tensor ne = {cols, rows[, count]} of type `type` (F32: no copy when count == 1). */
static int put_matrices(exporter *x, const char *name, const float *const *mats, int count, int rows, int cols, int f32) {
    int64_t ne[3] = {cols, rows, count};
    int nd = count > 1 ? 3 : 2;
    if (f32 && count == 1) return gguf_w_tensor(&x->w, name, nd, ne, GGML_TYPE_F32, mats[0]);
    int mt = f32 ? MAT_F32 : x->mat_type;
    size_t rb = mat_row_bytes((mat_dtype)mt, cols);
    if (!rb || cols % mat_type_of((mat_dtype)mt)->block_elems)
        return moe_error_set(x->err, "%s: %d columns are not a whole number of %s blocks", name, cols,
                             mat_type_of((mat_dtype)mt)->name);
    unsigned char *buf = ex_alloc(x, rb * (size_t)rows * (size_t)count);
    if (!buf) return moe_error_set(x->err, "out of memory writing %s", name);
    for (int e = 0; e < count; e++)
        for (int r = 0; r < rows; r++)
            mat_type_of((mat_dtype)mt)->from_f32(mats[e] + (size_t)r * cols, buf + ((size_t)e * rows + r) * rb, cols);
    return gguf_w_tensor(&x->w, name, nd, ne, f32 ? GGML_TYPE_F32 : x->type, buf);
}

static int put_vector(exporter *x, const char *name, const float *v, int n) {
    int64_t ne[1] = {n};
    return gguf_w_tensor(&x->w, name, 1, ne, GGML_TYPE_F32, v);
}

static const float *f32_of(const mat *W) { return W->dtype == MAT_F32 ? (const float *)W->data : NULL; }

/* ------------------------------------------------------------------ tensors */

static int put_role(exporter *x, tensor_role role, int layer, const mat *W, int f32) {
    char n[128];
    const float *p = f32_of(W);
    if (!p) return moe_error_set(x->err, "gguf export: the model must be loaded with --dtype f32");
    return put_matrices(x, layout_name(&LAYOUT_GGUF, role, layer, 0, n, sizeof n), &p, 1, W->rows, W->cols, f32);
}

static int put_role_vec(exporter *x, tensor_role role, int layer, const float *v, int len) {
    char n[128];
    return put_vector(x, layout_name(&LAYOUT_GGUF, role, layer, 0, n, sizeof n), v, len);
}

static int put_layer(exporter *x, const moe_model *m, int i) {
    const moe_config *c = &m->cfg;
    const layer_weights *lw = &m->w.layers[i];
    int H = c->hidden_size, nh = c->num_attention_heads, dn = c->qk_nope_head_dim, dv = c->v_head_dim, R = c->kv_lora_rank;
    if (put_role_vec(x, T_INPUT_NORM, i, lw->input_norm, H) || put_role_vec(x, T_POST_NORM, i, lw->post_norm, H)) return MOE_FAIL;
    if (c->q_lora_rank > 0) {
        if (put_role(x, T_Q_A, i, &lw->q_a, 0) || put_role_vec(x, T_Q_A_NORM, i, lw->q_a_norm, c->q_lora_rank) ||
            put_role(x, T_Q_B, i, &lw->q_b, 0))
            return MOE_FAIL;
    } else if (put_role(x, T_Q, i, &lw->q, 0)) {
        return MOE_FAIL;
    }
    if (put_role(x, T_KV_A, i, &lw->kv_a, 0) || put_role_vec(x, T_KV_A_NORM, i, lw->kv_a_norm, R) ||
        put_role(x, T_O, i, &lw->o, 0))
        return MOE_FAIL;
    /* kv_b -> k_b [nh][R][dn] (W_UK transposed per head) and v_b [nh][dv][R] */
    const float *kvb = f32_of(&lw->kv_b);
    if (!kvb) return moe_error_set(x->err, "gguf export: the model must be loaded with --dtype f32");
    float *kb = ex_alloc(x, sizeof(float) * (size_t)nh * R * dn), *vb = ex_alloc(x, sizeof(float) * (size_t)nh * dv * R);
    if (!kb || !vb) return moe_error_set(x->err, "out of memory");
    for (int h = 0; h < nh; h++) {
        const float *head = kvb + (size_t)h * (dn + dv) * R;
        for (int k = 0; k < dn; k++)
            for (int r = 0; r < R; r++) kb[((size_t)h * R + r) * dn + k] = head[(size_t)k * R + r];
        memcpy(vb + (size_t)h * dv * R, head + (size_t)dn * R, sizeof(float) * (size_t)dv * R);
    }
    char n[128];
    /* 3-D tensors ne = {dn, R, nh} and {R, dv, nh}: nh stacked per-head matrices */
    const float **kh = malloc(sizeof *kh * (size_t)nh), **vh = malloc(sizeof *vh * (size_t)nh);
    if (!kh || !vh) { free(kh); free(vh); return moe_error_set(x->err, "out of memory"); }
    for (int h = 0; h < nh; h++) { kh[h] = kb + (size_t)h * R * dn; vh[h] = vb + (size_t)h * dv * R; }
    int rc = put_matrices(x, layout_name(&LAYOUT_GGUF, T_K_B, i, 0, n, sizeof n), kh, nh, R, dn, 0) ||
             put_matrices(x, layout_name(&LAYOUT_GGUF, T_V_B, i, 0, n, sizeof n), vh, nh, dv, R, 0);
    free(kh);
    free(vh);
    if (rc) return MOE_FAIL;
    if (!lw->is_moe) {
        return put_role(x, T_DENSE_GATE, i, &lw->dense.gate, 0) || put_role(x, T_DENSE_UP, i, &lw->dense.up, 0) ||
               put_role(x, T_DENSE_DOWN, i, &lw->dense.down, 0);
    }
    int E = c->n_routed_experts;
    if (put_role(x, T_ROUTER, i, &lw->router, 1)) return MOE_FAIL;
    if (lw->router_bias && put_role_vec(x, T_ROUTER_BIAS, i, lw->router_bias, E)) return MOE_FAIL;
    const float **ep = malloc(sizeof *ep * (size_t)E);
    if (!ep) return moe_error_set(x->err, "out of memory");
    for (int k = 0; k < 3 && rc == MOE_OK; k++) {
        int bad = 0;
        for (int e = 0; e < E; e++) {
            const mat *W = k == 0 ? &lw->experts[e].gate : k == 1 ? &lw->experts[e].up : &lw->experts[e].down;
            bad |= !(ep[e] = f32_of(W));
        }
        const mat *W0 = k == 0 ? &lw->experts[0].gate : k == 1 ? &lw->experts[0].up : &lw->experts[0].down;
        rc = bad ? moe_error_set(x->err, "gguf export: the model must be loaded with --dtype f32")
                 : put_matrices(x, layout_name(&LAYOUT_GGUF, (tensor_role)(T_EXPERT_GATE + k), i, 0, n, sizeof n), ep, E,
                                W0->rows, W0->cols, 0);
    }
    free(ep);
    if (rc) return MOE_FAIL;
    if (lw->has_shared &&
        (put_role(x, T_SHARED_GATE, i, &lw->shared.gate, 0) || put_role(x, T_SHARED_UP, i, &lw->shared.up, 0) ||
         put_role(x, T_SHARED_DOWN, i, &lw->shared.down, 0)))
        return MOE_FAIL;
    return MOE_OK;
}

/* ------------------------------------------------------------------ tokenizer */

int gguf_put_tokenizer(gguf_writer *w, const char *dir, moe_error *err) {
    char p[4096];
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    json_error_t je;
    json_t *root = json_load_file(p, JSON_ALLOW_NUL, &je);
    if (!root) return moe_error_set(err, "%s: %s (line %d)", p, je.text, je.line);
    json_t *vocab = json_object_get(json_object_get(root, "model"), "vocab");
    json_t *merges = json_object_get(json_object_get(root, "model"), "merges");
    json_t *added = json_object_get(root, "added_tokens");
    if (!json_is_object(vocab) || !json_is_array(merges)) {
        json_decref(root);
        return moe_error_set(err, "%s: model.vocab (object) and model.merges (array) are needed", p);
    }
    int n = 0, rc = MOE_FAIL;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) if ((int)json_integer_value(v) + 1 > n) n = (int)json_integer_value(v) + 1;
    for (size_t i = 0; i < json_array_size(added); i++) {
        int id = (int)json_integer_value(json_object_get(json_array_get(added, i), "id"));
        if (id + 1 > n) n = id + 1;
    }
    size_t nm = json_array_size(merges);
    const char **tok = calloc((size_t)n + 1, sizeof *tok);
    size_t *tl = calloc((size_t)n + 1, sizeof *tl);
    int32_t *ty = calloc((size_t)n + 1, sizeof *ty);
    char **ms = calloc(nm + 1, sizeof *ms);
    tokenizer *t = NULL;
    if (!tok || !tl || !ty || !ms) { moe_error_set(err, "out of memory"); goto done; }
    json_object_foreach(vocab, key, v) {
        int id = (int)json_integer_value(v);
        if (id < 0 || id >= n) continue;
        tok[id] = key; tl[id] = strlen(key); ty[id] = TOKENIZER_TOKEN_NORMAL;
    }
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i);
        int id = (int)json_integer_value(json_object_get(a, "id"));
        const char *content = json_string_value(json_object_get(a, "content"));
        if (id < 0 || id >= n || !content) continue;
        tok[id] = content;
        tl[id] = json_string_length(json_object_get(a, "content"));
        ty[id] = json_is_true(json_object_get(a, "special")) ? TOKENIZER_TOKEN_CONTROL : TOKENIZER_TOKEN_USER_DEFINED;
    }
    for (int i = 0; i < n; i++)
        if (!tok[i]) { tok[i] = "[PAD]"; tl[i] = 5; ty[i] = TOKENIZER_TOKEN_UNUSED; }
    for (size_t i = 0; i < nm; i++) {
        json_t *mg = json_array_get(merges, i);
        const char *a = json_is_string(mg) ? json_string_value(mg) : json_string_value(json_array_get(mg, 0));
        const char *b = json_is_string(mg) ? NULL : json_string_value(json_array_get(mg, 1));
        if (!a || (!json_is_string(mg) && !b)) { moe_error_set(err, "%s: merge %zu is not \"a b\" or [a, b]", p, i); goto done; }
        ms[i] = malloc(strlen(a) + (b ? strlen(b) : 0) + 2);
        if (!ms[i]) { moe_error_set(err, "out of memory"); goto done; }
        if (b) sprintf(ms[i], "%s %s", a, b);
        else strcpy(ms[i], a);
    }
    if (tokenizer_load(&t, dir, err)) goto done;
    if (gguf_w_str(w, "tokenizer.ggml.model", "gpt2") || gguf_w_str(w, "tokenizer.ggml.pre", "deepseek-v3") ||
        gguf_w_arr_str(w, "tokenizer.ggml.tokens", tok, tl, (uint64_t)n) ||
        gguf_w_arr(w, "tokenizer.ggml.token_type", GGUF_VAL_I32, ty, (uint64_t)n) ||
        gguf_w_arr_str(w, "tokenizer.ggml.merges", (const char *const *)ms, NULL, nm) ||
        gguf_w_bool(w, "tokenizer.ggml.add_bos_token", tokenizer_add_bos(t)) ||
        (tokenizer_chat_template(t) && gguf_w_str(w, "tokenizer.chat_template", tokenizer_chat_template(t)))) {
        *err = w->err;
        goto done;
    }
    rc = MOE_OK;
done:
    tokenizer_free(t);
    for (size_t i = 0; ms && i < nm; i++) free(ms[i]);
    free(ms); free(tok); free(tl); free(ty);
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------------------ the model */

/* What llama.cpp's deepseek2 GGUF cannot say: refuse rather than write a different model. */
static int check_representable(const moe_config *c, moe_error *err) {
    moe_topk_method implied = c->scoring_func == SCORE_SIGMOID ? TOPK_NOAUX_TC
                            : c->n_group > 1                   ? TOPK_GROUP_LIMITED_GREEDY
                                                               : TOPK_GREEDY;
    if (c->moe_layer_freq != 1)
        return moe_error_set(err, "gguf export: moe_layer_freq %d (MoE every %d layers) has no deepseek2 GGUF equivalent "
                             "(only leading dense layers)", c->moe_layer_freq, c->moe_layer_freq);
    if (!c->rope_interleave)
        return moe_error_set(err, "gguf export: rope_interleave false (half-split RoPE) has no deepseek2 GGUF equivalent");
    if (c->topk_method != implied)
        return moe_error_set(err, "gguf export: topk_method with %s scoring and %d groups is not what llama.cpp runs for it",
                             c->scoring_func == SCORE_SIGMOID ? "sigmoid" : "softmax", c->n_group);
    if (c->rope_yarn && c->yarn_mscale != c->yarn_mscale_all_dim)
        return moe_error_set(err, "gguf export: YaRN mscale %g != mscale_all_dim %g has no deepseek2 GGUF equivalent",
                             c->yarn_mscale, c->yarn_mscale_all_dim);
    return MOE_OK;
}

int gguf_export_model(const moe_model *m, const char *tokenizer_dir, uint32_t type, const char *out, moe_error *err) {
    exporter x = { .type = type, .err = err };
    x.mat_type = weights_ggml_mat_type(type);
    if (x.mat_type < 0 || !mat_type_of((mat_dtype)x.mat_type)->from_f32)
        return moe_error_set(err, "gguf export: cannot write %s tensors", gguf_type_name(type));
    const moe_config *c = &m->cfg;
    if (check_representable(c, err)) return MOE_FAIL;
    gguf_writer_init(&x.w);
    int rc = gguf_put_config(&x.w, c);
    if (rc == MOE_OK && gguf_w_u32(&x.w, "general.file_type", type == GGML_TYPE_F32 ? 0 : type == GGML_TYPE_BF16 ? 32
                                                                : type == GGML_TYPE_Q8_0 ? 7 : type == GGML_TYPE_Q4_0 ? 2 : 1))
        rc = MOE_FAIL;
    /* Two keys llama.cpp needs beyond what its converter writes (gguf_put_config matches the
     * converter): q_lora_rank = 0 when q is not low-rank, since deepseek2 requires the key unless
     * block_count is 26, 27 or 48 (its guess at a "lite" model); and with no tokenizer.json,
     * tokenizer.ggml.model "none", which gives <arch>.vocab_size dummy tokens. */
    if (rc == MOE_OK && !c->q_lora_rank && gguf_w_u32(&x.w, "deepseek2.attention.q_lora_rank", 0)) rc = MOE_FAIL;
    if (rc == MOE_OK)
        rc = tokenizer_dir ? gguf_put_tokenizer(&x.w, tokenizer_dir, err)
                           : gguf_w_str(&x.w, "tokenizer.ggml.model", "none") ? MOE_FAIL : MOE_OK;
    if (rc == MOE_OK) {
        const float *embed = f32_of(&m->w.embed);
        char n[128];
        if (!embed) rc = moe_error_set(err, "gguf export: the model must be loaded with --dtype f32");
        else rc = put_matrices(&x, layout_name(&LAYOUT_GGUF, T_EMBED, 0, 0, n, sizeof n), &embed, 1, m->w.embed.rows,
                               m->w.embed.cols, 0);
    }
    for (int i = 0; rc == MOE_OK && i < c->num_hidden_layers; i++) rc = put_layer(&x, m, i);
    if (rc == MOE_OK) rc = put_role_vec(&x, T_FINAL_NORM, 0, m->w.final_norm, c->hidden_size);
    if (rc == MOE_OK && !(c->tie_word_embeddings && m->w.lm_head.data == m->w.embed.data))
        rc = put_role(&x, T_LM_HEAD, 0, &m->w.lm_head, 0);
    if (rc == MOE_OK && x.w.failed) rc = moe_error_set(err, "%s", x.w.err.msg);
    if (rc == MOE_OK) rc = gguf_write_file(&x.w, out, err);
    gguf_writer_free(&x.w);
    for (int i = 0; i < x.n_bufs; i++) free(x.bufs[i]);
    free(x.bufs);
    return rc;
}
