/* ckpt_plan.c - named shapes and the tensor plan (see ckpt_plan.h).
 *
 * Legend
 *   shape     a full config.json (Hugging Face DeepseekV3 / DeepseekV2 fields)
 *   plan      ordered ckpt_tensor list, same names, shapes and order as
 *             tools/reference/mkckpt.py tensor_plan()
 *   copy      the MTP layer's embed_tokens / shared_head.head repeat the main
 *             embedding / lm_head: same seed key, so the same values
 */
#include "ckpt_plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ shapes */

#define V3_COMMON                                                                                       \
    "\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\", "               \
    "\"attention_bias\": false, \"attention_dropout\": 0.0, \"aux_loss_alpha\": 0.001, "                 \
    "\"bos_token_id\": 0, \"eos_token_id\": 1, \"ep_size\": 1, \"hidden_act\": \"silu\", "               \
    "\"initializer_range\": 0.02, \"pretraining_tp\": 1, \"seq_aux\": true, \"tie_word_embeddings\": false, " \
    "\"use_cache\": true, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000, \"moe_layer_freq\": 1, "       \
    "\"n_routed_experts\": 256, \"num_experts_per_tok\": 8, \"n_shared_experts\": 1, \"n_group\": 8, "    \
    "\"topk_group\": 4, \"routed_scaling_factor\": 2.5, \"scoring_func\": \"sigmoid\", "                 \
    "\"topk_method\": \"noaux_tc\", \"norm_topk_prob\": true, \"num_nextn_predict_layers\": 1, "

static const struct { const char *name; const char *json; } shapes[] = {
    {"S", "{" V3_COMMON
          "\"vocab_size\": 8192, \"hidden_size\": 256, \"intermediate_size\": 768, \"moe_intermediate_size\": 64, "
          "\"num_hidden_layers\": 4, \"first_k_dense_replace\": 1, \"num_attention_heads\": 4, "
          "\"num_key_value_heads\": 4, \"q_lora_rank\": 96, \"kv_lora_rank\": 64, \"qk_nope_head_dim\": 32, "
          "\"qk_rope_head_dim\": 16, \"v_head_dim\": 32, \"max_position_embeddings\": 4096, \"rope_scaling\": null}"},
    {"M", "{" V3_COMMON
          "\"vocab_size\": 32000, \"hidden_size\": 1024, \"intermediate_size\": 2816, \"moe_intermediate_size\": 256, "
          "\"num_hidden_layers\": 8, \"first_k_dense_replace\": 1, \"num_attention_heads\": 8, "
          "\"num_key_value_heads\": 8, \"q_lora_rank\": 384, \"kv_lora_rank\": 256, \"qk_nope_head_dim\": 64, "
          "\"qk_rope_head_dim\": 32, \"v_head_dim\": 64, \"max_position_embeddings\": 4096, \"rope_scaling\": null}"},
    {"v3", "{" V3_COMMON
           "\"vocab_size\": 129280, \"hidden_size\": 7168, \"intermediate_size\": 18432, \"moe_intermediate_size\": 2048, "
           "\"num_hidden_layers\": 61, \"first_k_dense_replace\": 3, \"num_attention_heads\": 128, "
           "\"num_key_value_heads\": 128, \"q_lora_rank\": 1536, \"kv_lora_rank\": 512, \"qk_nope_head_dim\": 128, "
           "\"qk_rope_head_dim\": 64, \"v_head_dim\": 128, \"max_position_embeddings\": 163840, "
           "\"rope_scaling\": {\"beta_fast\": 32, \"beta_slow\": 1, \"factor\": 40, \"mscale\": 1.0, "
           "\"mscale_all_dim\": 1.0, \"original_max_position_embeddings\": 4096, \"type\": \"yarn\"}}"},
    {"v2-lite",
     "{\"architectures\": [\"DeepseekV2ForCausalLM\"], \"model_type\": \"deepseek_v2\", \"attention_bias\": false, "
     "\"attention_dropout\": 0.0, \"aux_loss_alpha\": 0.001, \"bos_token_id\": 100000, \"eos_token_id\": 100001, "
     "\"ep_size\": 1, \"hidden_act\": \"silu\", \"initializer_range\": 0.02, \"pretraining_tp\": 1, \"seq_aux\": true, "
     "\"tie_word_embeddings\": false, \"use_cache\": true, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000, "
     "\"vocab_size\": 102400, \"hidden_size\": 2048, \"intermediate_size\": 10944, \"moe_intermediate_size\": 1408, "
     "\"num_hidden_layers\": 27, \"first_k_dense_replace\": 1, \"moe_layer_freq\": 1, \"num_attention_heads\": 16, "
     "\"num_key_value_heads\": 16, \"q_lora_rank\": null, \"kv_lora_rank\": 512, \"qk_nope_head_dim\": 128, "
     "\"qk_rope_head_dim\": 64, \"v_head_dim\": 128, \"n_routed_experts\": 64, \"num_experts_per_tok\": 6, "
     "\"n_shared_experts\": 2, \"n_group\": 1, \"topk_group\": 1, \"routed_scaling_factor\": 1.0, "
     "\"scoring_func\": \"softmax\", \"topk_method\": \"greedy\", \"norm_topk_prob\": false, "
     "\"num_nextn_predict_layers\": 0, \"max_position_embeddings\": 163840, "
     "\"rope_scaling\": {\"beta_fast\": 32, \"beta_slow\": 1, \"factor\": 40, \"mscale\": 0.707, "
     "\"mscale_all_dim\": 0.707, \"original_max_position_embeddings\": 4096, \"type\": \"yarn\"}}"},
};

const char *ckpt_shape_json(const char *name) {
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        if (!strcmp(name, shapes[i].name)) return shapes[i].json;
    return NULL;
}

const char *ckpt_shape_names(void) { return "S, M, v2-lite, v3"; }

/* ------------------------------------------------------------------ plan */

uint64_t ckpt_name_hash(const char *name) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) h = (h ^ *p) * 0x100000001b3ull;
    return h;
}

typedef struct {
    ckpt_plan *p;
    const moe_config *c;
    moe_error *err;
    int fail;
} builder;

/* A tensor of `role` (layer, expert), named and shaped by the Hugging Face layout. */
static ckpt_tensor *add(builder *b, tensor_role role, int layer, int expert, ckpt_init init) {
    ckpt_plan *p = b->p;
    if (b->fail) return NULL;
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 1024;
        ckpt_tensor *g = realloc(p->t, sizeof *g * (size_t)cap);
        if (!g) { b->fail = 1; moe_error_set(b->err, "out of memory building the tensor plan"); return NULL; }
        p->t = g;
        p->cap = cap;
    }
    ckpt_tensor *t = &p->t[p->n++];
    memset(t, 0, sizeof *t);
    layout_name(&LAYOUT_HF, role, layer, expert, t->name, sizeof t->name);
    int64_t rows, cols;
    layout_shape(b->c, role, &rows, &cols);
    t->role = role;
    t->ndim = cols ? 2 : 1;
    t->rows = cols ? rows : 1;
    t->cols = cols ? cols : rows;
    t->init = init; t->gain = 1.0f;
    t->seed_key = ckpt_name_hash(t->name);
    t->use = t->ndim == 1 ? USE_VECTOR : USE_ALWAYS;
    t->expert_layer = -1;
    return t;
}

static void vec(builder *b, tensor_role role, int layer, ckpt_init init) { add(b, role, layer, 0, init); }

static ckpt_tensor *lin(builder *b, tensor_role role, int layer, int expert, float gain) {
    ckpt_tensor *t = add(b, role, layer, expert, INIT_LINEAR);
    if (t) { t->gain = gain; t->projection = 1; }
    return t;
}

/* gate, up, down: roles first .. first + 2 */
static void mlp(builder *b, tensor_role first, int layer, int expert, int expert_layer) {
    for (int k = 0; k < 3; k++) {
        ckpt_tensor *t = lin(b, first + k, layer, expert, k < 2 ? 1.0f : 0.5f);
        if (t && expert_layer >= 0) { t->use = USE_EXPERT; t->expert_layer = expert_layer; }
    }
}

static void decoder(builder *b, int i, int moe) {
    const moe_config *c = b->c;
    if (c->q_lora_rank == 0) {
        lin(b, T_Q, i, 0, 1.0f);
    } else {
        lin(b, T_Q_A, i, 0, 1.0f);
        vec(b, T_Q_A_NORM, i, INIT_NORM);
        lin(b, T_Q_B, i, 0, 1.0f);
    }
    lin(b, T_KV_A, i, 0, 1.0f);
    vec(b, T_KV_A_NORM, i, INIT_NORM);
    lin(b, T_KV_B, i, 0, 1.0f);
    lin(b, T_O, i, 0, 0.5f);
    if (moe) {
        ckpt_tensor *g = lin(b, T_ROUTER, i, 0, 1.0f);
        if (g) g->projection = 0;     /* the router stays BF16 in FP8 checkpoints */
        if (c->topk_method == TOPK_NOAUX_TC) vec(b, T_ROUTER_BIAS, i, INIT_BIAS);
        for (int e = 0; e < c->n_routed_experts; e++) mlp(b, T_EXPERT_GATE, i, e, i);
        if (c->n_shared_experts) mlp(b, T_SHARED_GATE, i, 0, -1);
    } else {
        mlp(b, T_DENSE_GATE, i, 0, -1);
    }
    vec(b, T_INPUT_NORM, i, INIT_NORM);
    vec(b, T_POST_NORM, i, INIT_NORM);
}

/* Marks every tensor from index `from` as used only by the MTP head. */
static void mark_mtp(builder *b, int from) {
    for (int k = from; k < b->p->n; k++) { b->p->t[k].use = USE_MTP; b->p->t[k].expert_layer = -1; }
}

int ckpt_plan_build(ckpt_plan *p, const moe_config *c, moe_error *err) {
    memset(p, 0, sizeof *p);
    builder b = { p, c, err, 0 };
    int L = c->num_hidden_layers;
    char embed[96], head[96];
    layout_name(&LAYOUT_HF, T_EMBED, 0, 0, embed, sizeof embed);
    layout_name(&LAYOUT_HF, T_LM_HEAD, 0, 0, head, sizeof head);
    ckpt_tensor *t = add(&b, T_EMBED, 0, 0, INIT_EMBED);
    if (t) t->use = USE_ROW;
    for (int i = 0; i < L; i++) decoder(&b, i, config_layer_is_moe(c, i));
    vec(&b, T_FINAL_NORM, 0, INIT_NORM);
    if (!c->tie_word_embeddings) lin(&b, T_LM_HEAD, 0, 0, 1.0f);
    if (b.fail) { ckpt_plan_free(p); return MOE_FAIL; }
    /* the head is not a projection for FP8 purposes */
    if (!c->tie_word_embeddings) p->t[p->n - 1].projection = 0;
    for (int k = 0; k < c->num_nextn_predict_layers; k++) {
        int i = L + k, from = p->n;
        if ((t = add(&b, T_MTP_EMBED, i, 0, INIT_EMBED))) t->seed_key = ckpt_name_hash(embed);
        vec(&b, T_MTP_ENORM, i, INIT_NORM);
        vec(&b, T_MTP_HNORM, i, INIT_NORM);
        if ((t = lin(&b, T_MTP_EH_PROJ, i, 0, 1.0f))) t->projection = 0;   /* BF16 in the release */
        decoder(&b, i, 1);
        vec(&b, T_MTP_HEAD_NORM, i, INIT_NORM);
        if ((t = lin(&b, T_MTP_HEAD, i, 0, 1.0f))) {
            t->projection = 0;
            if (c->tie_word_embeddings) { t->init = INIT_EMBED; t->seed_key = ckpt_name_hash(embed); }
            else t->seed_key = ckpt_name_hash(head);
        }
        if (b.fail) { ckpt_plan_free(p); return MOE_FAIL; }
        mark_mtp(&b, from);
    }
    if (b.fail) { ckpt_plan_free(p); return MOE_FAIL; }
    return MOE_OK;
}

void ckpt_plan_free(ckpt_plan *p) {
    free(p->t);
    memset(p, 0, sizeof *p);
}

/* ------------------------------------------------------------------ sizes */

const char *ckpt_dtype_name(ckpt_dtype d) {
    static const char *names[] = {"f32", "bf16", "f16", "fp8"};
    return d < CK_N_DTYPES ? names[d] : "?";
}

int ckpt_dtype_parse(const char *s) {
    for (int i = 0; i < CK_N_DTYPES; i++)
        if (!strcmp(s, ckpt_dtype_name((ckpt_dtype)i))) return i;
    return -1;
}

uint64_t ckpt_tensor_bytes(const ckpt_tensor *t, ckpt_dtype d, int br, int bc) {
    uint64_t n = (uint64_t)t->rows * (uint64_t)t->cols;
    if (t->init == INIT_BIAS || d == CK_F32) return 4 * n;
    if (d == CK_FP8 && t->projection && t->ndim == 2) return n;
    return 2 * n;
}

uint64_t ckpt_scale_bytes(const ckpt_tensor *t, ckpt_dtype d, int br, int bc) {
    if (d != CK_FP8 || !t->projection || t->ndim != 2) return 0;
    return 4 * (uint64_t)((t->rows + br - 1) / br) * (uint64_t)((t->cols + bc - 1) / bc);
}
