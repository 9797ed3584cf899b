/* weights.c - map checkpoint tensors to moe_weights (see weights.h for the
 * notation and the conversion policy). */
#include "weights.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ loader context */

typedef struct {
    moe_weights *w;
    const moe_config *cfg;
    weights_dtype dtype;
    moe_error *err;
    int done, total;             /* progress, in tensors */
    const weights_options *opt;
} loader;

static void *owned_alloc(loader *ld, size_t bytes) {
    moe_weights *w = ld->w;
    if (w->n_owned == w->cap_owned) {
        int cap = w->cap_owned ? 2 * w->cap_owned : 256;
        void **grown = realloc(w->owned, sizeof(void *) * (size_t)cap);
        if (!grown) return NULL;
        w->owned = grown;
        w->cap_owned = cap;
    }
    void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (p) w->owned[w->n_owned++] = p;
    return p;
}

static void progress_tick(loader *ld) {
    ld->done++;
    if (ld->opt && ld->opt->progress && (ld->done % 256 == 0 || ld->done == ld->total))
        ld->opt->progress(ld->opt->progress_ctx, ld->done, ld->total);
}

/* Finds `name` and checks it is a 1-D [n0] or 2-D [n0, n1] float tensor. n1 = 0 means 1-D. */
static const st_tensor *find_checked(loader *ld, const char *name, int64_t n0, int64_t n1) {
    const st_tensor *t = st_find(&ld->w->files, name);
    if (!t) {
        moe_error_set(ld->err, "checkpoint: missing tensor \"%s\"", name);
        return NULL;
    }
    const char *path = st_tensor_path(&ld->w->files, t);
    if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16 && t->dtype != ST_F8_E4M3) {
        moe_error_set(ld->err, "%s: tensor \"%s\" has dtype %s (expected F32, BF16, F16 or F8_E4M3)", path, name,
                      st_dtype_name(t->dtype));
        return NULL;
    }
    int want_nd = n1 ? 2 : 1;
    if (t->ndim != want_nd || t->shape[0] != n0 || (n1 && t->shape[1] != n1)) {
        char got[128] = "[", *p = got + 1;
        for (int i = 0; i < t->ndim && p < got + sizeof got - 24; i++)
            p += sprintf(p, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        strcat(got, "]");
        if (n1) moe_error_set(ld->err, "%s: tensor \"%s\" has shape %s but the config implies [%lld, %lld]", path, name,
                              got, (long long)n0, (long long)n1);
        else moe_error_set(ld->err, "%s: tensor \"%s\" has shape %s but the config implies [%lld]", path, name, got,
                           (long long)n0);
        return NULL;
    }
    return t;
}

/* Dequantization state of one stored matrix: element (r, c) as f32. */
typedef struct {
    const st_tensor *t;
    const st_tensor *scale;      /* FP8 only: [ceil(rows/br), ceil(cols/bc)] */
    int br, bc;
    int64_t cols;
} source;

static void source_row(const source *s, int64_t r, float *out) {
    const st_tensor *t = s->t;
    int64_t n = s->cols, base = r * n;
    switch (t->dtype) {
    case ST_F32: memcpy(out, (const float *)t->data + base, sizeof(float) * (size_t)n); break;
    case ST_BF16: {
        const uint8_t *p = (const uint8_t *)t->data + 2 * base;   /* may be unaligned */
        for (int64_t c = 0; c < n; c++) out[c] = bf16_to_f32((uint16_t)(p[2 * c] | p[2 * c + 1] << 8));
        break;
    }
    case ST_F16: {
        const uint8_t *p = (const uint8_t *)t->data + 2 * base;
        for (int64_t c = 0; c < n; c++) out[c] = f16_to_f32((uint16_t)(p[2 * c] | p[2 * c + 1] << 8));
        break;
    }
    case ST_F8_E4M3: {
        const uint8_t *p = (const uint8_t *)t->data + base;
        const uint8_t *srow = (const uint8_t *)s->scale->data + 4 * (r / s->br) * s->scale->shape[1];
        for (int64_t c = 0; c < n; c++) {
            float sc;
            if (s->scale->dtype == ST_F32) memcpy(&sc, srow + 4 * (c / s->bc), 4);
            else sc = bf16_to_f32((uint16_t)(srow[2 * (c / s->bc)] | srow[2 * (c / s->bc) + 1] << 8));
            out[c] = fp8_e4m3_to_f32(p[c]) * sc;
        }
        break;
    }
    default: break;
    }
}

static int source_init(loader *ld, source *s, const st_tensor *t, const char *name, int64_t rows, int64_t cols) {
    memset(s, 0, sizeof *s);
    s->t = t;
    s->cols = cols;
    if (t->dtype != ST_F8_E4M3) return MOE_OK;
    char sname[512];
    snprintf(sname, sizeof sname, "%s_scale_inv", name);
    s->br = ld->cfg->fp8_block_rows;
    s->bc = ld->cfg->fp8_block_cols;
    const st_tensor *sc = st_find(&ld->w->files, sname);
    const char *path = st_tensor_path(&ld->w->files, t);
    if (!sc) return moe_error_set(ld->err, "%s: FP8 tensor \"%s\" has no \"%s\"", path, name, sname);
    int64_t want0 = (rows + s->br - 1) / s->br, want1 = (cols + s->bc - 1) / s->bc;
    if ((sc->dtype != ST_F32 && sc->dtype != ST_BF16) || sc->ndim != 2 || sc->shape[0] != want0 || sc->shape[1] != want1)
        return moe_error_set(ld->err, "%s: \"%s\" must be F32 [%lld, %lld] for %dx%d blocks", st_tensor_path(&ld->w->files, sc),
                             sname, (long long)want0, (long long)want1, s->br, s->bc);
    s->scale = sc;
    progress_tick(ld);
    return MOE_OK;
}

/* ------------------------------------------------------------------ matrices and vectors */

/* What a matrix is, for --dtype q8: projections and the output heads (lm_head, the MTP
 * head: 30% of a decoded token's bytes in the M shape) become Q8, as llama.cpp's q8_0 does;
 * TABLE (embeddings: one row read per token; the router: it decides, and is small) stays
 * BF16. */
typedef enum { KIND_PROJECTION, KIND_HEAD, KIND_TABLE } mat_kind;

static int load_matrix(loader *ld, mat *m, const char *name, int64_t rows, int64_t cols, mat_kind kind) {
    const st_tensor *t = find_checked(ld, name, rows, cols);
    if (!t) return MOE_FAIL;
    source src;
    if (source_init(ld, &src, t, name, rows, cols)) return MOE_FAIL;
    m->rows = (int)rows;
    m->cols = (int)cols;
    progress_tick(ld);
    /* choose the compute format */
    mat_dtype target;
    switch (ld->dtype) {
    case WEIGHTS_F32: target = MAT_F32; break;
    case WEIGHTS_BF16: target = MAT_BF16; break;
    case WEIGHTS_Q8: target = (kind != KIND_TABLE && cols % QK8 == 0) ? MAT_Q8 : MAT_BF16; break;
    default: target = t->dtype == ST_BF16 ? MAT_BF16 : MAT_F32; break;
    }
    m->dtype = target;
    /* zero-copy when the stored bytes already are the compute format */
    if ((target == MAT_F32 && t->dtype == ST_F32 && (uintptr_t)t->data % 4 == 0) ||
        (target == MAT_BF16 && t->dtype == ST_BF16 && (uintptr_t)t->data % 2 == 0)) {
        m->data = t->data;
        ld->w->bytes_mapped += t->nbytes;
        return MOE_OK;
    }
    size_t bytes = mat_bytes(m);
    void *buf = owned_alloc(ld, bytes);
    float *row = malloc(sizeof(float) * (size_t)cols);
    if (!buf || !row) {
        free(row);
        return moe_error_set(ld->err, "out of memory converting \"%s\" (%zu bytes)", name, bytes);
    }
    const mat_type *ty = mat_type_of(target);
    size_t row_bytes = mat_row_bytes(target, (int)cols);
    for (int64_t r = 0; r < rows; r++) {
        source_row(&src, r, row);
        ty->from_f32(row, (unsigned char *)buf + (size_t)r * row_bytes, (int)cols);
    }
    free(row);
    m->data = buf;
    st_tensor_release(&ld->w->files, t);   /* its pages leave our RSS: peak = converted + mapped weights */
    ld->w->bytes_converted += bytes;
    ld->w->n_converted++;
    return MOE_OK;
}

static int load_vector(loader *ld, const float **v, const char *name, int64_t n) {
    const st_tensor *t = find_checked(ld, name, n, 0);
    if (!t) return MOE_FAIL;
    progress_tick(ld);
    if (t->dtype == ST_F32 && (uintptr_t)t->data % 4 == 0) {
        *v = t->data;
        return MOE_OK;
    }
    if (t->dtype == ST_F8_E4M3)
        return moe_error_set(ld->err, "%s: vector \"%s\" cannot be FP8", st_tensor_path(&ld->w->files, t), name);
    float *buf = owned_alloc(ld, sizeof(float) * (size_t)n);
    if (!buf) return moe_error_set(ld->err, "out of memory");
    source src = { .t = t, .cols = n };
    source_row(&src, 0, buf);
    *v = buf;
    return MOE_OK;
}

/* ------------------------------------------------------------------ layers */

static int load_mlp(loader *ld, mlp_weights *m, const char *prefix, int width) {
    char n[512];
    int H = ld->cfg->hidden_size;
    snprintf(n, sizeof n, "%sgate_proj.weight", prefix);
    if (load_matrix(ld, &m->gate, n, width, H, KIND_PROJECTION)) return MOE_FAIL;
    snprintf(n, sizeof n, "%sup_proj.weight", prefix);
    if (load_matrix(ld, &m->up, n, width, H, KIND_PROJECTION)) return MOE_FAIL;
    snprintf(n, sizeof n, "%sdown_proj.weight", prefix);
    return load_matrix(ld, &m->down, n, H, width, KIND_PROJECTION);
}

static int load_layer(loader *ld, layer_weights *lw, int i) {
    const moe_config *c = ld->cfg;
    int H = c->hidden_size, nh = c->num_attention_heads, dq = c->qk_nope_head_dim + c->qk_rope_head_dim;
    int R = c->kv_lora_rank, dr = c->qk_rope_head_dim;
    char p[128], n[512];
    snprintf(p, sizeof p, "model.layers.%d.", i);
#define NAME(s) (snprintf(n, sizeof n, "%s%s", p, s), n)
    if (load_vector(ld, &lw->input_norm, NAME("input_layernorm.weight"), H) ||
        load_vector(ld, &lw->post_norm, NAME("post_attention_layernorm.weight"), H))
        return MOE_FAIL;
    if (c->q_lora_rank > 0) {
        if (load_matrix(ld, &lw->q_a, NAME("self_attn.q_a_proj.weight"), c->q_lora_rank, H, KIND_PROJECTION) ||
            load_vector(ld, &lw->q_a_norm, NAME("self_attn.q_a_layernorm.weight"), c->q_lora_rank) ||
            load_matrix(ld, &lw->q_b, NAME("self_attn.q_b_proj.weight"), (int64_t)nh * dq, c->q_lora_rank, KIND_PROJECTION))
            return MOE_FAIL;
    } else if (load_matrix(ld, &lw->q, NAME("self_attn.q_proj.weight"), (int64_t)nh * dq, H, KIND_PROJECTION)) {
        return MOE_FAIL;
    }
    if (load_matrix(ld, &lw->kv_a, NAME("self_attn.kv_a_proj_with_mqa.weight"), R + dr, H, KIND_PROJECTION) ||
        load_vector(ld, &lw->kv_a_norm, NAME("self_attn.kv_a_layernorm.weight"), R) ||
        load_matrix(ld, &lw->kv_b, NAME("self_attn.kv_b_proj.weight"),
                    (int64_t)nh * (c->qk_nope_head_dim + c->v_head_dim), R, KIND_PROJECTION) ||
        load_matrix(ld, &lw->o, NAME("self_attn.o_proj.weight"), H, (int64_t)nh * c->v_head_dim, KIND_PROJECTION))
        return MOE_FAIL;
    lw->is_moe = config_layer_is_moe(c, i);
    if (!lw->is_moe) {
        if (c->intermediate_size < 1)
            return moe_error_set(ld->err, "config.json: layer %d is dense but intermediate_size is missing", i);
        return load_mlp(ld, &lw->dense, NAME("mlp."), c->intermediate_size);
    }
    int E = c->n_routed_experts;
    if (load_matrix(ld, &lw->router, NAME("mlp.gate.weight"), E, H, KIND_TABLE)) return MOE_FAIL;
    const char *bias_name = NAME("mlp.gate.e_score_correction_bias");
    if (c->topk_method == TOPK_NOAUX_TC || st_find(&ld->w->files, bias_name)) {
        if (load_vector(ld, &lw->router_bias, bias_name, E)) return MOE_FAIL;
    }
    lw->experts = calloc((size_t)E, sizeof(mlp_weights));
    if (!lw->experts) return moe_error_set(ld->err, "out of memory");
    for (int e = 0; e < E; e++) {
        char ep[160];
        snprintf(ep, sizeof ep, "%smlp.experts.%d.", p, e);
        if (load_mlp(ld, &lw->experts[e], ep, c->moe_intermediate_size)) return MOE_FAIL;
    }
    lw->has_shared = c->n_shared_experts > 0;
    if (lw->has_shared && load_mlp(ld, &lw->shared, NAME("mlp.shared_experts."), c->moe_intermediate_size * c->n_shared_experts))
        return MOE_FAIL;
    return MOE_OK;
#undef NAME
}

static int load_mtp_extras(loader *ld, layer_weights *lw, int i) {
    const moe_config *c = ld->cfg;
    int H = c->hidden_size;
    char n[512];
#define NAME(s) (snprintf(n, sizeof n, "model.layers.%d.%s", i, s), n)
    if (load_vector(ld, &lw->enorm, NAME("enorm.weight"), H) || load_vector(ld, &lw->hnorm, NAME("hnorm.weight"), H) ||
        load_matrix(ld, &lw->eh_proj, NAME("eh_proj.weight"), H, 2 * H, KIND_PROJECTION) ||
        load_vector(ld, &lw->head_norm, NAME("shared_head.norm.weight"), H))
        return MOE_FAIL;
    /* the release stores copies of the embedding and head; use them if present */
    lw->mtp_embed = ld->w->embed;
    lw->mtp_head = ld->w->lm_head;
    if (st_find(&ld->w->files, NAME("embed_tokens.weight")) &&
        load_matrix(ld, &lw->mtp_embed, n, c->vocab_size, H, KIND_TABLE))
        return MOE_FAIL;
    if (st_find(&ld->w->files, NAME("shared_head.head.weight")) &&
        load_matrix(ld, &lw->mtp_head, n, c->vocab_size, H, KIND_HEAD))
        return MOE_FAIL;
    return MOE_OK;
#undef NAME
}

/* ------------------------------------------------------------------ public */

int weights_load(moe_weights *w, const moe_config *cfg, const char *dir, const weights_options *opt, moe_error *err) {
    memset(w, 0, sizeof *w);
    if (st_open_dir(&w->files, dir, err)) return MOE_FAIL;
    loader ld = { w, cfg, opt ? opt->dtype : WEIGHTS_AUTO, err, 0, w->files.n_tensors, opt };
    int H = cfg->hidden_size, V = cfg->vocab_size, nl = cfg->num_hidden_layers + cfg->num_nextn_predict_layers;
    w->layers = calloc((size_t)nl, sizeof(layer_weights));
    if (!w->layers) { moe_error_set(err, "out of memory"); goto fail; }
    w->n_layers = nl;
    if (load_matrix(&ld, &w->embed, "model.embed_tokens.weight", V, H, KIND_TABLE) ||
        load_vector(&ld, &w->final_norm, "model.norm.weight", H))
        goto fail;
    if (cfg->tie_word_embeddings && !st_find(&w->files, "lm_head.weight")) w->lm_head = w->embed;
    else if (load_matrix(&ld, &w->lm_head, "lm_head.weight", V, H, KIND_HEAD)) goto fail;
    for (int i = 0; i < nl; i++) {
        if (load_layer(&ld, &w->layers[i], i)) goto fail;
        if (i >= cfg->num_hidden_layers && load_mtp_extras(&ld, &w->layers[i], i)) goto fail;
    }
    if (opt && opt->progress) opt->progress(opt->progress_ctx, ld.total, ld.total);
    return MOE_OK;
fail:
    weights_free(w);
    return MOE_FAIL;
}

void weights_free(moe_weights *w) {
    for (int i = 0; w->layers && i < w->n_layers; i++) free(w->layers[i].experts);
    free(w->layers);
    for (int i = 0; i < w->n_owned; i++) free(w->owned[i]);
    free(w->owned);
    st_close(&w->files);
    memset(w, 0, sizeof *w);
}

const char *weights_dtype_name(weights_dtype d) {
    static const char *names[] = {"auto", "f32", "bf16", "q8"};
    return d <= WEIGHTS_Q8 ? names[d] : "?";
}

int weights_dtype_parse(const char *s) {
    for (int i = 0; i <= WEIGHTS_Q8; i++)
        if (!strcmp(s, weights_dtype_name((weights_dtype)i))) return i;
    return -1;
}

/* F32: a copy; BF16 / Q8: the vectorized transposed matvec of the one row with x = {1},
 * which is exact (kernels.h). */
void mat_row_f32(const mat *W, int r, float *out) {
    static const float one = 1.0f;
    if (W->dtype == MAT_F32) memcpy(out, (const float *)W->data + (size_t)r * W->cols, sizeof(float) * (size_t)W->cols);
    else matvec_t_rows(W, &one, out, r, r + 1);
}
