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
    const ckpt_layout *layout;   /* the names of the checkpoint's tensors */
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

/* ------------------------------------------------------------------ compute formats */

mat_dtype weights_target(weights_dtype d, tensor_kind kind, st_dtype stored, int64_t cols) {
    switch (d) {
    case WEIGHTS_F32: return MAT_F32;
    case WEIGHTS_BF16: return MAT_BF16;
    /* projections and the output heads (lm_head, the MTP head: 30% of a decoded token's bytes
     * in the M shape) become Q8, as llama.cpp's q8_0 does; tables (embeddings: one row read
     * per token; the router: it decides, and is small) stay BF16 */
    case WEIGHTS_Q8: return kind != KIND_TABLE && cols % QK8 == 0 ? MAT_Q8 : MAT_BF16;
    default: return stored == ST_BF16 ? MAT_BF16 : MAT_F32;
    }
}

static int load_matrix(loader *ld, mat *m, const char *name, int64_t rows, int64_t cols, tensor_kind kind) {
    const st_tensor *t = find_checked(ld, name, rows, cols);
    if (!t) return MOE_FAIL;
    source src;
    if (source_init(ld, &src, t, name, rows, cols)) return MOE_FAIL;
    m->rows = (int)rows;
    m->cols = (int)cols;
    progress_tick(ld);
    mat_dtype target = weights_target(ld->dtype, kind, t->dtype, cols);
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

/* ------------------------------------------------------------------ by role */

/* The tensor of `role` (layer, expert) in the checkpoint's layout, shape from the config. */
static int load_role_matrix(loader *ld, mat *m, tensor_role role, int layer, int expert) {
    char n[512];
    int64_t rows, cols;
    layout_shape(ld->cfg, role, &rows, &cols);
    return load_matrix(ld, m, layout_name(ld->layout, role, layer, expert, n, sizeof n), rows, cols, layout_kind(role));
}

static int load_role_vector(loader *ld, const float **v, tensor_role role, int layer) {
    char n[512];
    int64_t rows, cols;
    layout_shape(ld->cfg, role, &rows, &cols);
    return load_vector(ld, v, layout_name(ld->layout, role, layer, 0, n, sizeof n), rows);
}

/* Whether the optional tensor of `role` is in the checkpoint. */
static int has_role(loader *ld, tensor_role role, int layer) {
    char n[512];
    return st_find(&ld->w->files, layout_name(ld->layout, role, layer, 0, n, sizeof n)) != NULL;
}

/* ------------------------------------------------------------------ layers */

/* gate, up, down of one MLP: roles first .. first + 2 */
static int load_mlp(loader *ld, mlp_weights *m, tensor_role first, int layer, int expert) {
    return load_role_matrix(ld, &m->gate, first, layer, expert) || load_role_matrix(ld, &m->up, first + 1, layer, expert) ||
           load_role_matrix(ld, &m->down, first + 2, layer, expert);
}

static int load_layer(loader *ld, layer_weights *lw, int i) {
    const moe_config *c = ld->cfg;
    if (load_role_vector(ld, &lw->input_norm, T_INPUT_NORM, i) || load_role_vector(ld, &lw->post_norm, T_POST_NORM, i))
        return MOE_FAIL;
    if (c->q_lora_rank > 0) {
        if (load_role_matrix(ld, &lw->q_a, T_Q_A, i, 0) || load_role_vector(ld, &lw->q_a_norm, T_Q_A_NORM, i) ||
            load_role_matrix(ld, &lw->q_b, T_Q_B, i, 0))
            return MOE_FAIL;
    } else if (load_role_matrix(ld, &lw->q, T_Q, i, 0)) {
        return MOE_FAIL;
    }
    if (load_role_matrix(ld, &lw->kv_a, T_KV_A, i, 0) || load_role_vector(ld, &lw->kv_a_norm, T_KV_A_NORM, i) ||
        load_role_matrix(ld, &lw->kv_b, T_KV_B, i, 0) || load_role_matrix(ld, &lw->o, T_O, i, 0))
        return MOE_FAIL;
    lw->is_moe = config_layer_is_moe(c, i);
    if (!lw->is_moe) {
        if (c->intermediate_size < 1)
            return moe_error_set(ld->err, "config.json: layer %d is dense but intermediate_size is missing", i);
        return load_mlp(ld, &lw->dense, T_DENSE_GATE, i, 0);
    }
    int E = c->n_routed_experts;
    if (load_role_matrix(ld, &lw->router, T_ROUTER, i, 0)) return MOE_FAIL;
    if ((c->topk_method == TOPK_NOAUX_TC || has_role(ld, T_ROUTER_BIAS, i)) &&
        load_role_vector(ld, &lw->router_bias, T_ROUTER_BIAS, i))
        return MOE_FAIL;
    lw->experts = calloc((size_t)E, sizeof(mlp_weights));
    if (!lw->experts) return moe_error_set(ld->err, "out of memory");
    for (int e = 0; e < E; e++)
        if (load_mlp(ld, &lw->experts[e], T_EXPERT_GATE, i, e)) return MOE_FAIL;
    lw->has_shared = c->n_shared_experts > 0;
    if (lw->has_shared && load_mlp(ld, &lw->shared, T_SHARED_GATE, i, 0)) return MOE_FAIL;
    return MOE_OK;
}

static int load_mtp_extras(loader *ld, layer_weights *lw, int i) {
    if (load_role_vector(ld, &lw->enorm, T_MTP_ENORM, i) || load_role_vector(ld, &lw->hnorm, T_MTP_HNORM, i) ||
        load_role_matrix(ld, &lw->eh_proj, T_MTP_EH_PROJ, i, 0) || load_role_vector(ld, &lw->head_norm, T_MTP_HEAD_NORM, i))
        return MOE_FAIL;
    /* the release stores copies of the embedding and head; use them if present */
    lw->mtp_embed = ld->w->embed;
    lw->mtp_head = ld->w->lm_head;
    if (has_role(ld, T_MTP_EMBED, i) && load_role_matrix(ld, &lw->mtp_embed, T_MTP_EMBED, i, 0)) return MOE_FAIL;
    if (has_role(ld, T_MTP_HEAD, i) && load_role_matrix(ld, &lw->mtp_head, T_MTP_HEAD, i, 0)) return MOE_FAIL;
    return MOE_OK;
}

/* ------------------------------------------------------------------ public */

int weights_load(moe_weights *w, const moe_config *cfg, const char *dir, const weights_options *opt, moe_error *err) {
    memset(w, 0, sizeof *w);
    if (st_open_dir(&w->files, dir, err)) return MOE_FAIL;
    loader ld = { w, cfg, &LAYOUT_HF, opt ? opt->dtype : WEIGHTS_AUTO, err, 0, w->files.n_tensors, opt };
    int nl = cfg->num_hidden_layers + cfg->num_nextn_predict_layers;
    w->layers = calloc((size_t)nl, sizeof(layer_weights));
    if (!w->layers) { moe_error_set(err, "out of memory"); goto fail; }
    w->n_layers = nl;
    if (load_role_matrix(&ld, &w->embed, T_EMBED, 0, 0) || load_role_vector(&ld, &w->final_norm, T_FINAL_NORM, 0))
        goto fail;
    if (cfg->tie_word_embeddings && !has_role(&ld, T_LM_HEAD, 0)) w->lm_head = w->embed;
    else if (load_role_matrix(&ld, &w->lm_head, T_LM_HEAD, 0, 0)) goto fail;
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
