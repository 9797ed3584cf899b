/* config.c - read and validate config.json (see config.h for the notation).
 *
 * Every field of a DeepseekV3 / DeepseekV2 config.json that enters the math is
 * read here; training-only fields (aux_loss_alpha, seq_aux, ep_size, ...) are
 * ignored. Defaults for absent optional fields follow the spec, section 1.
 */
#include "config.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_util.h"

#define CONFIG_MAX_BYTES (16u << 20)
#define DIM_MAX (1 << 24)

/* ------------------------------------------------------------------ helpers */

typedef struct { const json_t *obj; const char *path; moe_error *err; } reader;

static int get_dim(reader *r, const char *key, int required, int def, int lo, int *out) {
    long long v;
    if (json_get_int(r->obj, key, required, def, lo, DIM_MAX, &v, r->path, r->err)) return MOE_FAIL;
    *out = (int)v;
    return MOE_OK;
}

static int get_float(reader *r, const char *key, double def, float *out) {
    double v;
    if (json_get_double(r->obj, key, 0, def, &v, r->path, r->err)) return MOE_FAIL;
    *out = (float)v;
    return MOE_OK;
}

/* ------------------------------------------------------------------ rope_scaling */

static int parse_rope_scaling(moe_config *c, const json_t *rs, const char *path, moe_error *err) {
    c->rope_yarn = 0;
    if (!rs || json_is_null(rs)) return MOE_OK;
    if (!json_is_object(rs)) return moe_error_set(err, "%s: \"rope_scaling\" must be an object or null", path);
    char type[32] = "";
    if (json_get_string(rs, "type", 0, "", type, sizeof type, path, err)) return MOE_FAIL;
    if (!type[0] && json_get_string(rs, "rope_type", 0, "", type, sizeof type, path, err)) return MOE_FAIL;
    if (strcmp(type, "yarn") != 0)
        return moe_error_set(err, "%s: rope_scaling type \"%s\" is not supported (only \"yarn\")", path, type);
    long long orig;
    c->rope_yarn = 1;
    if (json_get_double(rs, "factor", 1, 1.0, &c->yarn_factor, path, err) ||
        json_get_int(rs, "original_max_position_embeddings", 0, 4096, 1, INT_MAX, &orig, path, err) ||
        json_get_double(rs, "beta_fast", 0, 32.0, &c->yarn_beta_fast, path, err) ||
        json_get_double(rs, "beta_slow", 0, 1.0, &c->yarn_beta_slow, path, err) ||
        json_get_double(rs, "mscale", 0, 1.0, &c->yarn_mscale, path, err) ||
        json_get_double(rs, "mscale_all_dim", 0, 0.0, &c->yarn_mscale_all_dim, path, err))
        return moe_error_prefix(err, "rope_scaling");
    c->yarn_original_max_pos = (int)orig;
    if (c->yarn_factor <= 0) return moe_error_set(err, "%s: rope_scaling.factor must be > 0", path);
    if (c->yarn_beta_fast <= 0 || c->yarn_beta_slow <= 0)   /* they divide inside a log */
        return moe_error_set(err, "%s: rope_scaling.beta_fast and beta_slow must be > 0", path);
    return MOE_OK;
}

/* ------------------------------------------------------------------ validation */

int config_validate(const moe_config *c, const char *path, moe_error *err) {
    if (c->qk_rope_head_dim % 2)
        return moe_error_set(err, "%s: qk_rope_head_dim = %d must be even", path, c->qk_rope_head_dim);
    if (c->num_hidden_layers < 1) return moe_error_set(err, "%s: num_hidden_layers must be >= 1", path);
    if (c->n_routed_experts > 0) {
        if (c->num_experts_per_tok < 1 || c->num_experts_per_tok > c->n_routed_experts)
            return moe_error_set(err, "%s: num_experts_per_tok = %d must be in [1, n_routed_experts = %d]", path,
                                 c->num_experts_per_tok, c->n_routed_experts);
        if (c->n_routed_experts % c->n_group)
            return moe_error_set(err, "%s: n_routed_experts = %d is not divisible by n_group = %d", path,
                                 c->n_routed_experts, c->n_group);
        if (c->topk_group > c->n_group)
            return moe_error_set(err, "%s: topk_group = %d is larger than n_group = %d", path, c->topk_group,
                                 c->n_group);
        int grouped = c->n_group > 1 && c->topk_method != TOPK_GREEDY;
        if (grouped && c->topk_group * (c->n_routed_experts / c->n_group) < c->num_experts_per_tok)
            return moe_error_set(err, "%s: topk_group = %d groups of %d experts hold fewer than num_experts_per_tok = %d",
                                 path, c->topk_group, c->n_routed_experts / c->n_group, c->num_experts_per_tok);
        if (c->topk_method == TOPK_NOAUX_TC && grouped && c->n_routed_experts / c->n_group < 2)
            return moe_error_set(err, "%s: noaux_tc group scoring needs at least 2 experts per group", path);
    }
    if (c->num_nextn_predict_layers > 0 && c->n_routed_experts == 0)
        return moe_error_set(err, "%s: MTP layers need n_routed_experts (the MTP block is an MoE layer)", path);
    if (c->bos_token_id >= c->vocab_size || c->eos_token_id >= c->vocab_size)
        return moe_error_set(err, "%s: bos/eos token id outside vocab_size = %d", path, c->vocab_size);
    return MOE_OK;
}

/* ------------------------------------------------------------------ parse */

int config_parse(moe_config *c, const char *text, size_t len, const char *path, moe_error *err) {
    memset(c, 0, sizeof *c);
    json_t *root = json_parse_text(text, len, path, err);
    if (!root) return MOE_FAIL;
    int rc = MOE_FAIL;
    if (!json_is_object(root)) { moe_error_set(err, "%s: top level must be a JSON object", path); goto done; }
    reader r = { root, path, err };

    if (json_get_string(root, "model_type", 0, "deepseek_v3", c->model_type, sizeof c->model_type, path, err))
        goto done;
    /* required sizes */
    if (get_dim(&r, "vocab_size", 1, 0, 1, &c->vocab_size) || get_dim(&r, "hidden_size", 1, 0, 1, &c->hidden_size) ||
        get_dim(&r, "num_hidden_layers", 1, 0, 1, &c->num_hidden_layers) ||
        get_dim(&r, "num_attention_heads", 1, 0, 1, &c->num_attention_heads) ||
        get_dim(&r, "kv_lora_rank", 1, 0, 1, &c->kv_lora_rank) ||
        get_dim(&r, "qk_nope_head_dim", 1, 0, 1, &c->qk_nope_head_dim) ||
        get_dim(&r, "qk_rope_head_dim", 1, 0, 2, &c->qk_rope_head_dim) ||
        get_dim(&r, "v_head_dim", 1, 0, 1, &c->v_head_dim) ||
        get_dim(&r, "intermediate_size", 0, 0, 0, &c->intermediate_size) ||
        get_dim(&r, "q_lora_rank", 0, 0, 0, &c->q_lora_rank) ||
        get_dim(&r, "num_nextn_predict_layers", 0, 0, 0, &c->num_nextn_predict_layers) ||
        get_dim(&r, "max_position_embeddings", 0, 4096, 1, &c->max_position_embeddings))
        goto done;
    /* MoE */
    if (get_dim(&r, "n_routed_experts", 0, 0, 0, &c->n_routed_experts)) goto done;
    if (c->n_routed_experts > 0) {
        if (get_dim(&r, "moe_intermediate_size", 1, 0, 1, &c->moe_intermediate_size) ||
            get_dim(&r, "num_experts_per_tok", 1, 0, 1, &c->num_experts_per_tok))
            goto done;
    }
    if (get_dim(&r, "n_shared_experts", 0, 0, 0, &c->n_shared_experts) ||
        get_dim(&r, "n_group", 0, 1, 1, &c->n_group) || get_dim(&r, "topk_group", 0, 1, 1, &c->topk_group) ||
        get_dim(&r, "first_k_dense_replace", 0, 0, 0, &c->first_k_dense_replace) ||
        get_dim(&r, "moe_layer_freq", 0, 1, 1, &c->moe_layer_freq) ||
        get_float(&r, "routed_scaling_factor", 1.0, &c->routed_scaling_factor) ||
        json_get_bool(root, "norm_topk_prob", 0, 0, &c->norm_topk_prob, path, err))
        goto done;
    char buf[64];
    if (json_get_string(root, "scoring_func", 0, "softmax", buf, sizeof buf, path, err)) goto done;
    if (!strcmp(buf, "softmax")) c->scoring_func = SCORE_SOFTMAX;
    else if (!strcmp(buf, "sigmoid")) c->scoring_func = SCORE_SIGMOID;
    else { moe_error_set(err, "%s: scoring_func \"%s\" is not supported (softmax, sigmoid)", path, buf); goto done; }
    if (json_get_string(root, "topk_method", 0, "greedy", buf, sizeof buf, path, err)) goto done;
    if (!strcmp(buf, "greedy")) c->topk_method = TOPK_GREEDY;
    else if (!strcmp(buf, "group_limited_greedy")) c->topk_method = TOPK_GROUP_LIMITED_GREEDY;
    else if (!strcmp(buf, "noaux_tc")) c->topk_method = TOPK_NOAUX_TC;
    else {
        moe_error_set(err, "%s: topk_method \"%s\" is not supported (greedy, group_limited_greedy, noaux_tc)", path, buf);
        goto done;
    }
    if (json_get_string(root, "hidden_act", 0, "silu", buf, sizeof buf, path, err)) goto done;
    if (strcmp(buf, "silu")) { moe_error_set(err, "%s: hidden_act \"%s\" is not supported (silu)", path, buf); goto done; }
    /* norms and RoPE */
    double eps, theta;
    if (json_get_double(root, "rms_norm_eps", 0, 1e-6, &eps, path, err) ||
        json_get_double(root, "rope_theta", 0, 10000.0, &theta, path, err) ||
        json_get_bool(root, "rope_interleave", 0, 1, &c->rope_interleave, path, err) ||
        json_get_bool(root, "tie_word_embeddings", 0, 0, &c->tie_word_embeddings, path, err))
        goto done;
    if (eps <= 0 || theta <= 1) { moe_error_set(err, "%s: rms_norm_eps must be > 0 and rope_theta > 1", path); goto done; }
    c->rms_norm_eps = (float)eps;
    c->rope_theta = theta;
    if (parse_rope_scaling(c, json_object_get(root, "rope_scaling"), path, err)) goto done;
    /* special tokens (null -> -1) */
    long long bos, eos;
    if (json_get_int(root, "bos_token_id", 0, -1, -1, INT_MAX, &bos, path, err) ||
        json_get_int(root, "eos_token_id", 0, -1, -1, INT_MAX, &eos, path, err))
        goto done;
    c->bos_token_id = (int)bos;
    c->eos_token_id = (int)eos;
    /* FP8 block size */
    c->fp8_block_rows = c->fp8_block_cols = 128;
    const json_t *qc = json_object_get(root, "quantization_config");
    if (qc && json_is_object(qc)) {
        const json_t *bs = json_object_get(qc, "weight_block_size");
        if (bs && !json_is_null(bs)) {
            if (!json_is_array(bs) || json_array_size(bs) != 2 || !json_is_integer(json_array_get(bs, 0)) ||
                !json_is_integer(json_array_get(bs, 1)) || json_integer_value(json_array_get(bs, 0)) < 1 ||
                json_integer_value(json_array_get(bs, 1)) < 1 || json_integer_value(json_array_get(bs, 0)) > DIM_MAX ||
                json_integer_value(json_array_get(bs, 1)) > DIM_MAX) {
                moe_error_set(err, "%s: quantization_config.weight_block_size must be [rows, cols] of positive integers", path);
                goto done;
            }
            c->fp8_block_rows = (int)json_integer_value(json_array_get(bs, 0));
            c->fp8_block_cols = (int)json_integer_value(json_array_get(bs, 1));
        }
    }
    rc = config_validate(c, path, err);
done:
    json_decref(root);
    return rc;
}

int config_load(moe_config *cfg, const char *dir, moe_error *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text;
    size_t len;
    if (file_read_all(path, CONFIG_MAX_BYTES, &text, &len, err)) return MOE_FAIL;
    int rc = config_parse(cfg, text, len, path, err);
    free(text);
    return rc;
}

int config_layer_is_moe(const moe_config *c, int layer) {
    if (c->n_routed_experts == 0) return 0;
    if (layer >= c->num_hidden_layers) return 1;  /* the MTP block is always MoE */
    return layer >= c->first_k_dense_replace && layer % c->moe_layer_freq == 0;
}
