/* gguf_config.c - deepseek2 GGUF metadata <-> moe_config, and the tokenizer from
 * tokenizer.ggml.* (see gguf_config.h for the key table and the tensor layout).
 *
 * kv_b_proj (HF [nh*(dn+dv), R]) is stored split for MLA's absorbed form: viewed as
 * [nh, dn+dv, R], the first dn rows of each head transposed give attn_k_b (numpy
 * [nh, R, dn], GGUF ne {dn, R, nh}) and the last dv rows attn_v_b (numpy
 * [nh, dv, R], ne {R, dv, nh}).
 */
#include "gguf_config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIM_MAX (1 << 24)
#define ARCH "deepseek2"

/* ------------------------------------------------------------------ helpers */

typedef struct { const gguf_file *g; char key[128]; moe_error *err; } reader;

static const char *k(reader *r, const char *suffix) {
    snprintf(r->key, sizeof r->key, ARCH ".%s", suffix);
    return r->key;
}

/* An arch key as a dimension in [lo, 2^24]. */
static int get_dim(reader *r, const char *suffix, int required, int def, int lo, int *out) {
    const char *key = k(r, suffix);
    const gguf_kv *kv = gguf_find_kv(r->g, key);
    if (kv && kv->v.type == GGUF_VAL_ARRAY)
        return moe_error_set(r->err, "%s: key \"%s\" is a per-layer array; only one value for all layers is supported",
                             r->g->path, key);
    int64_t v;
    if (gguf_get_i64(r->g, key, required, def, &v, r->err)) return MOE_FAIL;
    if (v < lo || v > DIM_MAX)
        return moe_error_set(r->err, "%s: key \"%s\" = %lld is out of range [%d, %d]", r->g->path, key, (long long)v, lo,
                             DIM_MAX);
    *out = (int)v;
    return MOE_OK;
}

/* The decimal a float was written from: the shortest that reads back as the same
 * float (gguf-py stores config.json's 1e-06 as the f32 nearest it). */
static double f32_decimal(double x) {
    float f = (float)x;
    char buf[40];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if ((float)strtod(buf, NULL) == f) return strtod(buf, NULL);
    }
    return x;
}

static double round15(double x) {
    char buf[40];
    snprintf(buf, sizeof buf, "%.15g", x);
    return strtod(buf, NULL);
}

static int get_real(reader *r, const char *suffix, int required, double def, double *out) {
    const char *key = k(r, suffix);
    const gguf_kv *kv = gguf_find_kv(r->g, key);
    if (gguf_get_f64(r->g, key, required, def, out, r->err)) return MOE_FAIL;
    if (kv && kv->v.type == GGUF_VAL_F32) *out = f32_decimal(*out);
    if (!isfinite(*out)) return moe_error_set(r->err, "%s: key \"%s\" is not finite", r->g->path, key);
    return MOE_OK;
}

/* ------------------------------------------------------------------ metadata -> config */

int gguf_config(const gguf_file *g, moe_config *c, moe_error *err) {
    memset(c, 0, sizeof *c);
    reader r = {.g = g, .err = err};
    char arch[64], rs_type[32];
    if (gguf_get_strbuf(g, "general.architecture", 1, "", arch, sizeof arch, err)) return MOE_FAIL;
    if (strcmp(arch, ARCH))
        return moe_error_set(err, "%s: general.architecture \"%s\" is not supported (only \"" ARCH "\")", g->path, arch);
    int blocks, nextn, kdim, vdim;
    double eps, theta, scale;
    if (get_dim(&r, "block_count", 1, 0, 1, &blocks) || get_dim(&r, "nextn_predict_layers", 0, 0, 0, &nextn) ||
        get_dim(&r, "context_length", 1, 0, 1, &c->max_position_embeddings) ||
        get_dim(&r, "embedding_length", 1, 0, 1, &c->hidden_size) ||
        get_dim(&r, "feed_forward_length", 0, 0, 0, &c->intermediate_size) ||
        get_dim(&r, "attention.head_count", 1, 0, 1, &c->num_attention_heads) ||
        get_dim(&r, "attention.q_lora_rank", 0, 0, 0, &c->q_lora_rank) ||
        get_dim(&r, "attention.kv_lora_rank", 1, 0, 1, &c->kv_lora_rank) ||
        get_dim(&r, "rope.dimension_count", 1, 0, 2, &c->qk_rope_head_dim) ||
        get_dim(&r, "leading_dense_block_count", 0, 0, 0, &c->first_k_dense_replace) ||
        get_dim(&r, "expert_count", 0, 0, 0, &c->n_routed_experts) ||
        get_dim(&r, "expert_shared_count", 0, 0, 0, &c->n_shared_experts) ||
        get_dim(&r, "expert_group_count", 0, 1, 0, &c->n_group) ||
        get_dim(&r, "expert_group_used_count", 0, 1, 0, &c->topk_group))
        return MOE_FAIL;
    if (nextn >= blocks)
        return moe_error_set(err, "%s: " ARCH ".nextn_predict_layers = %d leaves no main layer of block_count = %d",
                             g->path, nextn, blocks);
    c->num_hidden_layers = blocks - nextn;
    c->num_nextn_predict_layers = nextn;
    if (!c->n_group) c->n_group = 1;
    if (!c->topk_group) c->topk_group = 1;
    /* head dims: the MLA keys, else (older files) the plain ones */
    const int have_mla = gguf_find_kv(g, ARCH ".attention.key_length_mla") != NULL;
    if (get_dim(&r, have_mla ? "attention.key_length_mla" : "attention.key_length", 1, 0, 1, &kdim) ||
        get_dim(&r, have_mla ? "attention.value_length_mla" : "attention.value_length", 1, 0, 1, &vdim))
        return MOE_FAIL;
    if (kdim <= c->qk_rope_head_dim)
        return moe_error_set(err, "%s: key length %d must exceed " ARCH ".rope.dimension_count = %d", g->path, kdim,
                             c->qk_rope_head_dim);
    c->qk_nope_head_dim = kdim - c->qk_rope_head_dim;
    c->v_head_dim = vdim;
    /* MoE */
    if (c->n_routed_experts > 0 &&
        (get_dim(&r, "expert_feed_forward_length", 1, 0, 1, &c->moe_intermediate_size) ||
         get_dim(&r, "expert_used_count", 1, 0, 1, &c->num_experts_per_tok)))
        return MOE_FAIL;
    uint32_t gating;
    if (gguf_get_u32(g, k(&r, "expert_gating_func"), 0, 1, &gating, err)) return MOE_FAIL;
    if (gating == 0) gating = 1;   /* llama.cpp: none -> softmax (old V2 files) */
    if (gating != 1 && gating != 2)
        return moe_error_set(err, "%s: " ARCH ".expert_gating_func = %u is not supported (1 softmax, 2 sigmoid)", g->path,
                             gating);
    c->scoring_func = gating == 2 ? SCORE_SIGMOID : SCORE_SOFTMAX;
    c->topk_method = gating == 2 ? TOPK_NOAUX_TC : c->n_group > 1 ? TOPK_GROUP_LIMITED_GREEDY : TOPK_GREEDY;
    snprintf(c->model_type, sizeof c->model_type, "%s", gating == 2 ? "deepseek_v3" : "deepseek_v2");
    if (get_real(&r, "expert_weights_scale", 0, 1.0, &scale) ||
        gguf_get_bool(g, k(&r, "expert_weights_norm"), 0, 0, &c->norm_topk_prob, err))
        return MOE_FAIL;
    c->routed_scaling_factor = (float)scale;
    c->moe_layer_freq = 1;
    /* norms, RoPE */
    if (get_real(&r, "attention.layer_norm_rms_epsilon", 1, 0, &eps) || get_real(&r, "rope.freq_base", 0, 10000.0, &theta))
        return MOE_FAIL;
    if (eps <= 0 || theta <= 1)
        return moe_error_set(err, "%s: " ARCH ".attention.layer_norm_rms_epsilon must be > 0 and rope.freq_base > 1",
                             g->path);
    c->rms_norm_eps = (float)eps;
    c->rope_theta = theta;
    c->rope_interleave = 1;
    if (gguf_get_strbuf(g, k(&r, "rope.scaling.type"), 0, "none", rs_type, sizeof rs_type, err)) return MOE_FAIL;
    if (!strcmp(rs_type, "yarn")) {
        double logmul;
        c->rope_yarn = 1;
        if (get_real(&r, "rope.scaling.factor", 1, 0, &c->yarn_factor) ||
            get_dim(&r, "rope.scaling.original_context_length", 0, c->max_position_embeddings, 1,
                    &c->yarn_original_max_pos) ||
            get_real(&r, "rope.scaling.yarn_beta_fast", 0, 32.0, &c->yarn_beta_fast) ||
            get_real(&r, "rope.scaling.yarn_beta_slow", 0, 1.0, &c->yarn_beta_slow) ||
            get_real(&r, "rope.scaling.yarn_log_multiplier", 0, 0.0, &logmul))
            return MOE_FAIL;
        c->yarn_mscale_all_dim = round15(logmul / 0.1);   /* the converter stored 0.1 * mscale_all_dim */
        c->yarn_mscale = c->yarn_mscale_all_dim;
        if (c->yarn_factor <= 0)
            return moe_error_set(err, "%s: " ARCH ".rope.scaling.factor must be > 0", g->path);
        if (c->yarn_beta_fast <= 0 || c->yarn_beta_slow <= 0)
            return moe_error_set(err, "%s: " ARCH ".rope.scaling.yarn_beta_fast and yarn_beta_slow must be > 0", g->path);
    } else if (strcmp(rs_type, "none"))
        return moe_error_set(err, "%s: " ARCH ".rope.scaling.type \"%s\" is not supported (yarn, none)", g->path, rs_type);
    /* vocabulary size: the key, the token list, the embedding */
    const gguf_value *toks;
    const gguf_tensor *emb = gguf_find_tensor(g, "token_embd.weight");
    if (gguf_get_arr(g, "tokenizer.ggml.tokens", 0, GGUF_VAL_STRING, &toks, err)) return MOE_FAIL;
    int vdef = toks ? (int)(toks->n > DIM_MAX ? DIM_MAX + 1 : toks->n) : emb && emb->n_dims == 2 ? (int)emb->ne[1] : -1;
    if (get_dim(&r, "vocab_size", vdef < 0, vdef, 1, &c->vocab_size)) {
        if (vdef < 0)
            return moe_error_set(err, "%s: no vocabulary size: none of " ARCH ".vocab_size, tokenizer.ggml.tokens and "
                                 "token_embd.weight", g->path);
        return MOE_FAIL;
    }
    c->tie_word_embeddings = emb && !gguf_find_tensor(g, "output.weight");
    int64_t bos, eos;
    if (gguf_get_i64(g, "tokenizer.ggml.bos_token_id", 0, -1, &bos, err) ||
        gguf_get_i64(g, "tokenizer.ggml.eos_token_id", 0, -1, &eos, err))
        return MOE_FAIL;
    if (bos < -1 || bos >= c->vocab_size || eos < -1 || eos >= c->vocab_size)
        return moe_error_set(err, "%s: tokenizer.ggml.bos/eos_token_id outside the vocabulary of %d", g->path,
                             c->vocab_size);
    c->bos_token_id = (int)bos;
    c->eos_token_id = (int)eos;
    c->fp8_block_rows = c->fp8_block_cols = 128;
    if (c->qk_rope_head_dim % 2)
        return moe_error_set(err, "%s: " ARCH ".rope.dimension_count = %d must be even", g->path, c->qk_rope_head_dim);
    return config_validate(c, g->path, err);
}

/* ------------------------------------------------------------------ config -> metadata */

int gguf_put_config(gguf_writer *w, const moe_config *c) {
#define U32(key, v) gguf_w_u32(w, ARCH "." key, (uint32_t)(v))
#define F32(key, v) gguf_w_f32(w, ARCH "." key, (float)(v))
    int rc = gguf_w_str(w, "general.architecture", ARCH);
    /* TextModel.set_gguf_parameters, in its order */
    rc = rc || U32("block_count", c->num_hidden_layers) || U32("context_length", c->max_position_embeddings) ||
         U32("embedding_length", c->hidden_size) || U32("feed_forward_length", c->intermediate_size) ||
         U32("attention.head_count", c->num_attention_heads) || U32("attention.head_count_kv", 1);
    if (c->rope_yarn)
        rc = rc || gguf_w_str(w, ARCH ".rope.scaling.type", "yarn") || F32("rope.scaling.factor", c->yarn_factor) ||
             U32("rope.scaling.original_context_length", c->yarn_original_max_pos) ||
             F32("rope.scaling.yarn_beta_fast", c->yarn_beta_fast) || F32("rope.scaling.yarn_beta_slow", c->yarn_beta_slow);
    rc = rc || F32("rope.freq_base", c->rope_theta) || F32("attention.layer_norm_rms_epsilon", c->rms_norm_eps);
    if (c->n_routed_experts)
        rc = rc || U32("expert_count", c->n_routed_experts) || U32("expert_used_count", c->num_experts_per_tok);
    rc = rc || U32("expert_group_count", c->n_group) || U32("expert_group_used_count", c->topk_group) ||
         U32("expert_gating_func", c->scoring_func == SCORE_SIGMOID ? 2 : 1);
    /* DeepseekV2Model.set_gguf_parameters */
    rc = rc || U32("leading_dense_block_count", c->first_k_dense_replace) || U32("vocab_size", c->vocab_size);
    if (c->q_lora_rank) rc = rc || U32("attention.q_lora_rank", c->q_lora_rank);
    rc = rc || U32("attention.kv_lora_rank", c->kv_lora_rank) ||
         U32("attention.key_length", c->kv_lora_rank + c->qk_rope_head_dim) ||
         U32("attention.value_length", c->kv_lora_rank) ||
         U32("attention.key_length_mla", c->qk_nope_head_dim + c->qk_rope_head_dim) ||
         U32("attention.value_length_mla", c->v_head_dim) ||
         U32("expert_feed_forward_length", c->n_routed_experts ? c->moe_intermediate_size : c->intermediate_size) ||
         U32("expert_shared_count", c->n_shared_experts) || F32("expert_weights_scale", c->routed_scaling_factor);
    if (c->norm_topk_prob) rc = rc || gguf_w_bool(w, ARCH ".expert_weights_norm", 1);
    rc = rc || U32("rope.dimension_count", c->qk_rope_head_dim);
    if (c->rope_yarn) rc = rc || F32("rope.scaling.yarn_log_multiplier", 0.1 * c->yarn_mscale_all_dim);
    if (c->bos_token_id >= 0) rc = rc || gguf_w_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)c->bos_token_id);
    if (c->eos_token_id >= 0) rc = rc || gguf_w_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)c->eos_token_id);
    return rc ? MOE_FAIL : MOE_OK;
#undef U32
#undef F32
}

/* ------------------------------------------------------------------ tokenizer */

int gguf_tokenizer(const gguf_file *g, tokenizer **out, moe_error *err) {
    *out = NULL;
    char model[32], pre[64];
    const gguf_value *toks, *types, *merges;
    const char *tmpl;
    size_t tmpl_len;
    int64_t bos, eos;
    int add_bos;
    if (gguf_get_strbuf(g, "tokenizer.ggml.model", 1, "", model, sizeof model, err)) return MOE_FAIL;
    if (strcmp(model, "gpt2"))
        return moe_error_set(err, "%s: tokenizer.ggml.model \"%s\" is not supported (only \"gpt2\": byte-level BPE)",
                             g->path, model);
    if (gguf_get_strbuf(g, "tokenizer.ggml.pre", 0, "default", pre, sizeof pre, err) ||
        gguf_get_arr(g, "tokenizer.ggml.tokens", 1, GGUF_VAL_STRING, &toks, err) ||
        gguf_get_arr(g, "tokenizer.ggml.token_type", 0, GGUF_VAL_COUNT, &types, err) ||
        gguf_get_arr(g, "tokenizer.ggml.merges", 1, GGUF_VAL_STRING, &merges, err) ||
        gguf_get_i64(g, "tokenizer.ggml.bos_token_id", 0, -1, &bos, err) ||
        gguf_get_i64(g, "tokenizer.ggml.eos_token_id", 0, -1, &eos, err) ||
        gguf_get_bool(g, "tokenizer.ggml.add_bos_token", 0, 1, &add_bos, err) ||
        gguf_get_str(g, "tokenizer.chat_template", 0, &tmpl, &tmpl_len, err))
        return MOE_FAIL;
    if (toks->n > (1u << 24) || merges->n > (1u << 24))
        return moe_error_set(err, "%s: tokenizer.ggml.tokens or merges has more than 2^24 entries", g->path);
    if (types && types->n != toks->n)
        return moe_error_set(err, "%s: tokenizer.ggml.token_type has %llu entries for %llu tokens", g->path,
                             (unsigned long long)types->n, (unsigned long long)toks->n);
    if (bos < -1 || bos >= (int64_t)toks->n || eos < -1 || eos >= (int64_t)toks->n)
        return moe_error_set(err, "%s: tokenizer.ggml.bos/eos_token_id outside the %llu tokens", g->path,
                             (unsigned long long)toks->n);
    tokenizer_str *ts = malloc(sizeof *ts * (toks->n + 1)), *ms = malloc(sizeof *ms * (merges->n + 1));
    int *ty = types ? malloc(sizeof *ty * (types->n + 1)) : NULL;
    int rc = MOE_FAIL;
    if (!ts || !ms || (types && !ty)) { moe_error_set(err, "%s: out of memory", g->path); goto done; }
    for (uint64_t i = 0; i < toks->n; i++) {
        gguf_value v = gguf_arr_at(toks, i);
        ts[i] = (tokenizer_str){(const char *)v.p, (size_t)v.n_bytes};
    }
    for (uint64_t i = 0; i < merges->n; i++) {
        gguf_value v = gguf_arr_at(merges, i);
        ms[i] = (tokenizer_str){(const char *)v.p, (size_t)v.n_bytes};
    }
    for (uint64_t i = 0; types && i < types->n; i++) {
        gguf_value v = gguf_arr_at(types, i);
        int64_t x;
        if (gguf_val_int(&v, &x) || x < 0 || x > 100) {
            moe_error_set(err, "%s: tokenizer.ggml.token_type[%llu] is not a token type", g->path, (unsigned long long)i);
            goto done;
        }
        ty[i] = (int)x;
    }
    tokenizer_vocab tv = {
        .path = g->path, .n_tokens = (int)toks->n, .tokens = ts, .types = ty, .n_merges = (int)merges->n,
        .merges = ms, .pre = pre, .bos_id = (int)bos, .eos_id = (int)eos, .add_bos = add_bos,
        .chat_template = tmpl, .chat_template_len = tmpl_len,
    };
    rc = tokenizer_from_vocab(out, &tv, err);
done:
    free(ts);
    free(ms);
    free(ty);
    return rc;
}
