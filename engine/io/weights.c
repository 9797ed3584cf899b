/* weights.c - map checkpoint tensors to moe_weights (see weights.h for the
 * notation and the conversion policy). */
#include "weights.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ------------------------------------------------------------------ loader context */

typedef struct {
    moe_weights *w;
    const moe_config *cfg;
    const ckpt_layout *layout;   /* the names of the checkpoint's tensors */
    weights_dtype dtype;
    moe_error *err;
    int done, total;             /* progress, in tensors */
    const weights_options *opt;
    char *chunk;                 /* owned_alloc's current chunk, and its bytes not yet handed out */
    size_t chunk_left;
    int threads;                 /* conversion threads (opt->threads, else one per online CPU) */
    float fp8[256];              /* fp8_e4m3_to_f32 of every byte */
    int q8_rows;                 /* 1: moe's Q8 stays in rows (MOE_Q8_ROWS=1), no 16-row panels */
} loader;

/* Converted buffers are carved from 64 MiB chunks, 2 MiB aligned and advised
 * MADV_HUGEPAGE (this machine's THP mode is "madvise"); larger ones get their own
 * 2 MiB-aligned buffer. A decode pass touches hundreds of separate expert matrices of
 * ~300 KB; on 4 KiB pages each 4 KiB is a TLB miss (a nested page walk in a VM) that the
 * hardware prefetcher does not cross. Measured effect on M q8 is within noise on a quiet
 * Zen 5 and possibly large under load (kernels/README.md, 2026-12-02).
 * Under ASan every buffer is its own allocation, so overflows stay detectable. */
#define OWNED_CHUNK WEIGHTS_CHUNK
#define OWNED_HUGE ((size_t)2 << 20)

static void *owned_push(loader *ld, void *p) {
    moe_weights *w = ld->w;
    if (!p) return NULL;
    if (w->n_owned == w->cap_owned) {
        int cap = w->cap_owned ? 2 * w->cap_owned : 256;
        void **grown = realloc(w->owned, sizeof(void *) * (size_t)cap);
        if (!grown) { free(p); return NULL; }
        w->owned = grown;
        w->cap_owned = cap;
    }
    w->owned[w->n_owned++] = p;
    return p;
}

static void *owned_alloc(loader *ld, size_t bytes) {
    bytes = (bytes + 63) / 64 * 64;
#if defined(__SANITIZE_ADDRESS__)
    return owned_push(ld, aligned_alloc(64, bytes ? bytes : 64));
#else
    if (bytes > OWNED_CHUNK / 4) {
        size_t len = (bytes + OWNED_HUGE - 1) / OWNED_HUGE * OWNED_HUGE;
        void *p = owned_push(ld, aligned_alloc(OWNED_HUGE, len));
        if (p) (void)madvise(p, len, MADV_HUGEPAGE);   /* advice only: 4 KiB pages if refused */
        return p;
    }
    if (ld->chunk_left < bytes) {
        ld->chunk = owned_push(ld, aligned_alloc(OWNED_HUGE, OWNED_CHUNK));
        ld->chunk_left = ld->chunk ? OWNED_CHUNK : 0;
        if (!ld->chunk) return NULL;
        (void)madvise(ld->chunk, OWNED_CHUNK, MADV_HUGEPAGE);
    }
    void *p = ld->chunk + (OWNED_CHUNK - ld->chunk_left);
    ld->chunk_left -= bytes;
    return p;
#endif
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

/* Dequantization state of one stored matrix: element (r, c) as f32. Either a safetensors
 * tensor (t) or rows of a type-table type (GGUF: t == NULL). */
typedef struct {
    const st_tensor *t;
    const st_tensor *scale;      /* FP8 only: [ceil(rows/br), ceil(cols/bc)] */
    int br, bc;
    int64_t cols;
    const uint8_t *rows;         /* typed rows: the first, row_bytes apart, of type md */
    mat_dtype md;
    size_t row_bytes;
    const float *fp8;            /* FP8 only: the loader's byte -> f32 table */
} source;

static void source_row(const source *s, int64_t r, float *out) {
    const st_tensor *t = s->t;
    if (!t) { mat_type_of(s->md)->to_f32(s->rows + (size_t)r * s->row_bytes, out, (int)s->cols); return; }
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
            out[c] = s->fp8[p[c]] * sc;
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
    s->fp8 = ld->fp8;
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

mat_dtype weights_target(weights_dtype d, tensor_kind kind, int stored, int64_t cols) {
    switch (d) {
    case WEIGHTS_F32: return MAT_F32;
    case WEIGHTS_BF16: return MAT_BF16;
    /* projections and the output heads (lm_head, the MTP head: 30% of a decoded token's bytes
     * in the M shape) become Q8, as llama.cpp's q8_0 does; tables (embeddings: one row read
     * per token; the router: it decides, and is small) stay BF16 */
    case WEIGHTS_Q8: return kind != KIND_TABLE && cols % QK8 == 0 ? MAT_Q8 : MAT_BF16;
    /* q4: ggml's Q4_K layout (kernels/README.md says why not Q4_0). The output heads stay Q8
     * (llama.cpp's Q4_K_M makes them Q6_K; moe has no Q6_K quantizer yet); a row that is not a
     * whole 256-block falls back to Q8 too (llama.cpp falls back to Q5_0) */
    case WEIGHTS_Q4:
        if (kind == KIND_TABLE) return MAT_BF16;
        if (cols % 256 == 0 && kind != KIND_HEAD) return MAT_Q4_K;
        return cols % QK8 == 0 ? MAT_Q8 : MAT_BF16;
    default: return stored >= 0 ? (mat_dtype)stored : MAT_F32;   /* as stored, else exactly f32 */
    }
}

/* Rows [r0, r1) of a conversion: one thread's share, with its own f32 row buffer. */
#define CONVERT_MAX_THREADS 64
#define CONVERT_SPLIT ((int64_t)1 << 20)
typedef struct {
    const source *src;
    const mat_type *ty;
    unsigned char *dst;          /* the whole matrix: row r at dst + r row_bytes */
    size_t row_bytes;
    int cols;
    int64_t r0, r1;
    float *row;                  /* [cols] */
} convert_job;

static void *convert_rows(void *arg) {
    convert_job *j = arg;
    for (int64_t r = j->r0; r < j->r1; r++) {
        source_row(j->src, r, j->row);
        j->ty->from_f32(j->row, j->dst + (size_t)r * j->row_bytes, j->cols);
    }
    return NULL;
}

/* The matrix m (rows, cols, dtype set) from src: zero-copy when `as_stored` points at bytes
 * already in m's format, else converted row by row into a buffer of its own. */
static int store_matrix(loader *ld, mat *m, const char *name, const source *src, const void *as_stored, size_t nbytes) {
    if (as_stored) {
        m->data = as_stored;
        ld->w->bytes_mapped += nbytes;
        return MOE_OK;
    }
    size_t bytes = mat_bytes(m);
    const mat_type *ty = mat_type_of(m->dtype);
    if (!ty->from_f32)
        return moe_error_set(ld->err, "\"%s\": moe cannot convert to %s (no quantizer for it)", name, ty->name);
    /* matrices of 1 M values and more (all of them when opt->threads is given) are split by
     * rows over the conversion threads (the Q4_K fit costs ~60 ns per value: V2-Lite in q4
     * took 17 min on one thread) */
    int nt = (int64_t)m->rows * m->cols >= CONVERT_SPLIT || (ld->opt && ld->opt->threads > 0) ? ld->threads : 1;
    if (nt > m->rows) nt = m->rows;
    if (nt < 1) nt = 1;
    void *buf = owned_alloc(ld, bytes);
    float *rows = malloc(sizeof(float) * (size_t)m->cols * (size_t)nt);
    if (!buf || !rows) {
        free(rows);
        return moe_error_set(ld->err, "out of memory converting \"%s\" (%zu bytes)", name, bytes);
    }
    convert_job jobs[CONVERT_MAX_THREADS];
    pthread_t tid[CONVERT_MAX_THREADS];
    int started[CONVERT_MAX_THREADS] = {0};
    for (int i = 0; i < nt; i++)
        jobs[i] = (convert_job){ .src = src, .ty = ty, .dst = buf, .row_bytes = mat_row_bytes(m->dtype, m->cols),
                                 .cols = m->cols, .r0 = (int64_t)m->rows * i / nt, .r1 = (int64_t)m->rows * (i + 1) / nt,
                                 .row = rows + (size_t)m->cols * (size_t)i };
    for (int i = 1; i < nt; i++) started[i] = pthread_create(&tid[i], NULL, convert_rows, &jobs[i]) == 0;
    convert_rows(&jobs[0]);
    for (int i = 1; i < nt; i++) {
        if (started[i]) pthread_join(tid[i], NULL);
        else convert_rows(&jobs[i]);   /* no thread to be had: this one does its rows */
    }
    free(rows);
    m->data = buf;
    ld->w->bytes_converted += bytes;
    ld->w->n_converted++;
    return MOE_OK;
}

/* A matrix already in its compute format, copied byte for byte into the loader's huge-page
 * buffers (owned_alloc) and its file pages released: a decode pass streams hundreds of
 * expert matrices, and the page cache's 4 KiB pages cost a TLB miss (a nested page walk in a
 * VM) every 4 KiB that the hardware prefetcher does not cross. Measured on M bf16 decode,
 * AMD Zen 5, 1 thread: docs/bench.md "Weights in huge pages". `--mmap` keeps the mapping. */
static int copy_matrix(loader *ld, mat *m, const char *name, const st_tensor *t) {
    void *buf = owned_alloc(ld, t->nbytes);
    if (!buf) return moe_error_set(ld->err, "out of memory copying \"%s\" (%zu bytes; --mmap reads it in place)", name,
                                   (size_t)t->nbytes);
    memcpy(buf, t->data, t->nbytes);
    m->data = buf;
    ld->w->bytes_converted += t->nbytes;
    ld->w->bytes_copied += t->nbytes;
    st_tensor_release(&ld->w->files, t);
    return MOE_OK;
}

static int load_matrix(loader *ld, mat *m, const char *name, int64_t rows, int64_t cols, tensor_kind kind) {
    const st_tensor *t = find_checked(ld, name, rows, cols);
    if (!t) return MOE_FAIL;
    source src;
    if (source_init(ld, &src, t, name, rows, cols)) return MOE_FAIL;
    m->rows = (int)rows;
    m->cols = (int)cols;
    progress_tick(ld);
    int stored = t->dtype == ST_F32 ? MAT_F32 : t->dtype == ST_BF16 ? MAT_BF16 : -1;
    mat_dtype target = weights_target(ld->dtype, kind, stored, cols);
    m->dtype = target;
    /* zero-copy when the stored bytes already are the compute format */
    int same = (target == MAT_F32 && t->dtype == ST_F32 && (uintptr_t)t->data % 4 == 0) ||
               (target == MAT_BF16 && t->dtype == ST_BF16 && (uintptr_t)t->data % 2 == 0);
    if (same && kind != KIND_TABLE && !(ld->opt && ld->opt->mmap_in_place))
        return copy_matrix(ld, m, name, t);
    if (store_matrix(ld, m, name, &src, same ? t->data : NULL, t->nbytes)) return MOE_FAIL;
    if (!same) st_tensor_release(&ld->w->files, t);   /* its pages leave our RSS: peak = converted + mapped weights */
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

/* ------------------------------------------------------------------ GGUF tensors */

int weights_ggml_mat_type(uint32_t ggml) {
    switch (ggml) {
    case GGML_TYPE_F32: return MAT_F32;
    case GGML_TYPE_BF16: return MAT_BF16;
    case GGML_TYPE_F16: return MAT_F16;
    case GGML_TYPE_Q8_0: return MAT_Q8_0;
    case GGML_TYPE_Q4_0: return MAT_Q4_0;
    case GGML_TYPE_Q4_K: return MAT_Q4_K;
    case GGML_TYPE_Q5_K: return MAT_Q5_K;
    case GGML_TYPE_Q6_K: return MAT_Q6_K;
    case GGML_TYPE_Q5_0: return MAT_Q5_0;
    default: return -1;
    }
}

int weights_is_gguf(const char *path) {
    size_t len = strlen(path);
    FILE *f = fopen(path, "rb");
    if (!f) return len > 5 && !strcmp(path + len - 5, ".gguf");   /* gguf_open will say why it cannot be read */
    char magic[4] = {0};
    int n = (int)fread(magic, 1, 4, f);
    fclose(f);
    return n == 4 && !memcmp(magic, "GGUF", 4);
}

/* The GGUF tensor `name` as `count` matrices of rows x cols (numpy order; GGUF's ne is the
 * reverse: ne = {cols, rows[, count]}), with its type-table type; NULL with an error when it
 * is missing, shaped otherwise, or of a type moe cannot read. */
static const gguf_tensor *gguf_checked(loader *ld, const char *name, int64_t count, int64_t rows, int64_t cols,
                                       mat_dtype *md) {
    const gguf_file *g = &ld->w->gguf;
    const gguf_tensor *t = gguf_find_tensor(g, name);
    if (!t) { moe_error_set(ld->err, "%s: missing tensor \"%s\"", g->path, name); return NULL; }
    int want_nd = count > 1 ? 3 : cols ? 2 : 1;
    int64_t want[3] = {cols ? cols : rows, cols ? rows : 1, count};
    int ok = t->n_dims == want_nd;
    for (int i = 0; ok && i < want_nd; i++) ok = t->ne[i] == want[i];
    if (!ok) {
        char got[128] = "{", *p = got + 1;
        for (int i = 0; i < t->n_dims && p < got + sizeof got - 24; i++) p += sprintf(p, "%s%lld", i ? ", " : "", (long long)t->ne[i]);
        strcat(got, "}");
        return moe_error_set(ld->err, "%s: tensor \"%s\" has ne %s but the metadata implies {%lld%s%.0lld%s%.0lld}", g->path,
                             name, got, (long long)want[0], want_nd > 1 ? ", " : "", want_nd > 1 ? (long long)want[1] : 0,
                             want_nd > 2 ? ", " : "", want_nd > 2 ? (long long)want[2] : 0), NULL;
    }
    int ty = weights_ggml_mat_type(t->type);
    if (ty < 0)
        return moe_error_set(ld->err, "%s: tensor \"%s\" is %s, a type moe does not read (F32, F16, BF16, Q8_0, Q4_0, Q5_0, "
                             "Q4_K, Q5_K, Q6_K)", g->path, name, gguf_type_name(t->type)), NULL;
    *md = (mat_dtype)ty;
    return t;
}

/* Matrix `index` of a GGUF tensor holding `count` rows x cols matrices. */
static int gguf_matrix(loader *ld, mat *m, const char *name, int64_t count, int index, int64_t rows, int64_t cols,
                       tensor_kind kind) {
    mat_dtype md;
    const gguf_tensor *t = gguf_checked(ld, name, count, rows, cols, &md);
    if (!t) return MOE_FAIL;
    if (index == 0) progress_tick(ld);
    size_t row_bytes = mat_row_bytes(md, (int)cols);
    source src = { .cols = cols, .rows = (const uint8_t *)t->data + (size_t)index * rows * row_bytes, .md = md,
                   .row_bytes = row_bytes };
    m->rows = (int)rows;
    m->cols = (int)cols;
    m->dtype = weights_target(ld->dtype, kind, md, cols);
    return store_matrix(ld, m, name, &src, m->dtype == md ? src.rows : NULL, (size_t)rows * row_bytes);
}

static int gguf_vector(loader *ld, const float **v, const char *name, int64_t n) {
    mat_dtype md;
    const gguf_tensor *t = gguf_checked(ld, name, 1, n, 0, &md);
    if (!t) return MOE_FAIL;
    progress_tick(ld);
    if (md == MAT_F32 && (uintptr_t)t->data % 4 == 0) { *v = t->data; return MOE_OK; }
    float *buf = owned_alloc(ld, sizeof(float) * (size_t)n);
    if (!buf) return moe_error_set(ld->err, "out of memory");
    mat_type_of(md)->to_f32(t->data, buf, (int)n);
    *v = buf;
    return MOE_OK;
}

/* kv_b [nh*(dn+dv), R] of layer i from llama.cpp's split: attn_k_b [nh][R][dn] (W_UK
 * transposed per head) and attn_v_b [nh][dv][R]; assembled in f32 (exact), then converted
 * like any projection. Older files store attn_kv_b itself. */
static int gguf_kv_b(loader *ld, mat *m, int i) {
    const moe_config *c = ld->cfg;
    char nk[128], nv[128];
    int64_t nh = c->num_attention_heads, dn = c->qk_nope_head_dim, dv = c->v_head_dim, R = c->kv_lora_rank;
    layout_name(ld->layout, T_KV_B, i, 0, nk, sizeof nk);
    if (gguf_find_tensor(&ld->w->gguf, nk)) return gguf_matrix(ld, m, nk, 1, 0, nh * (dn + dv), R, KIND_PROJECTION);
    layout_name(ld->layout, T_K_B, i, 0, nk, sizeof nk);
    layout_name(ld->layout, T_V_B, i, 0, nv, sizeof nv);
    mat_dtype mk, mv;
    const gguf_tensor *tk = gguf_checked(ld, nk, nh, R, dn, &mk), *tv = tk ? gguf_checked(ld, nv, nh, dv, R, &mv) : NULL;
    if (!tv) return MOE_FAIL;
    progress_tick(ld);
    /* decode reads the split halves as stored (one row per output: plain matvecs over the
     * file's own bytes, ~8x fewer than f32 kv_b at 4 bits) when --dtype keeps their types;
     * kv_b below is the f32 assembly the prefill products use (an F32 file keeps kv_b alone:
     * the same sums as its safetensors checkpoint, bit for bit) */
    layer_weights *lw = &ld->w->layers[i];
    if (mk != MAT_F32 && mv != MAT_F32 && weights_target(ld->dtype, KIND_PROJECTION, mk, dn) == mk &&
        weights_target(ld->dtype, KIND_PROJECTION, mv, R) == mv) {
        lw->k_b = (mat){ .dtype = mk, .rows = (int)(nh * R), .cols = (int)dn, .data = tk->data };
        lw->v_b = (mat){ .dtype = mv, .rows = (int)(nh * dv), .cols = (int)R, .data = tv->data };
        ld->w->bytes_mapped += mat_bytes(&lw->k_b) + mat_bytes(&lw->v_b);
    }
    float *kvb = malloc(sizeof(float) * (size_t)(nh * (dn + dv) * R)), *row = malloc(sizeof(float) * (size_t)(dn > R ? dn : R));
    if (!kvb || !row) { free(kvb); free(row); return moe_error_set(ld->err, "out of memory assembling kv_b of layer %d", i); }
    size_t kb = mat_row_bytes(mk, (int)dn), vb = mat_row_bytes(mv, (int)R);
    for (int64_t h = 0; h < nh; h++) {
        float *head = kvb + (size_t)(h * (dn + dv)) * R;
        for (int64_t r = 0; r < R; r++) {
            mat_type_of(mk)->to_f32((const uint8_t *)tk->data + (size_t)(h * R + r) * kb, row, (int)dn);
            for (int64_t k = 0; k < dn; k++) head[k * R + r] = row[k];
        }
        for (int64_t j = 0; j < dv; j++)
            mat_type_of(mv)->to_f32((const uint8_t *)tv->data + (size_t)(h * dv + j) * vb, head + (size_t)(dn + j) * R, (int)R);
    }
    free(row);
    source src = { .cols = R, .rows = (const uint8_t *)kvb, .md = MAT_F32, .row_bytes = sizeof(float) * (size_t)R };
    m->rows = (int)(nh * (dn + dv));
    m->cols = (int)R;
    mat_dtype target = weights_target(ld->dtype, KIND_PROJECTION, MAT_F32, R);
    m->dtype = target;
    if (target == MAT_F32) {   /* keep the assembled buffer */
        if (!owned_push(ld, kvb)) return moe_error_set(ld->err, "out of memory");
        m->data = kvb;
        ld->w->bytes_converted += mat_bytes(m);
        ld->w->n_converted++;
        return MOE_OK;
    }
    int rc = store_matrix(ld, m, nk, &src, NULL, 0);
    free(kvb);
    return rc;
}

/* ------------------------------------------------------------------ by role */

/* The tensor of `role` (layer, expert) in the checkpoint's layout, shape from the config. */
static int load_role_matrix(loader *ld, mat *m, tensor_role role, int layer, int expert) {
    char n[512];
    int64_t rows, cols;
    layout_shape(ld->cfg, role, &rows, &cols);
    const char *name = layout_name(ld->layout, role, layer, expert, n, sizeof n);
    int rc;
    if (!ld->w->is_gguf) {
        rc = load_matrix(ld, m, name, rows, cols, layout_kind(role));
    } else if (role == T_KV_B && ld->layout->kv_b_split) {
        rc = gguf_kv_b(ld, m, layer);
    } else {
        int stacked = ld->layout->experts_stacked && role >= T_EXPERT_GATE && role <= T_EXPERT_DOWN;
        rc = gguf_matrix(ld, m, name, stacked ? ld->cfg->n_routed_experts : 1, stacked ? expert : 0, rows, cols,
                         layout_kind(role));
    }
    /* moe's Q8, converted at load, in 16-row panels where the AVX-512 kernels read that faster
     * (kernels/matvec_q8p_avx512.c): every matrix that only matvec / matmul read. Not kv_b,
     * k_b, v_b: MLA's decode reads their rows one head at a time and transposed. The same
     * bytes; MOE_Q8_ROWS=1 keeps the rows (for comparisons). */
    if (rc == MOE_OK && m->dtype == MAT_Q8 && role != T_KV_B && role != T_K_B && role != T_V_B && q8p_preferred() &&
        !ld->q8_rows) {
        if (m->rows % Q8P_ROWS == 0) {
            if (q8p_pack(m) == 0) ld->w->n_q8_panels++;
        } else {   /* a last panel padded with zero rows: a buffer of its own (the row-major one stays owned) */
            size_t bytes = q8p_bytes(m->rows, m->cols);
            void *buf = owned_alloc(ld, bytes);
            if (buf && q8p_pack_into(m, buf) == 0) {
                m->data = buf;
                m->dtype = MAT_Q8P;
                ld->w->bytes_converted += bytes;
                ld->w->n_q8_panels++;
            }
        }
    }
    return rc;
}

static int load_role_vector(loader *ld, const float **v, tensor_role role, int layer) {
    char n[512];
    int64_t rows, cols;
    layout_shape(ld->cfg, role, &rows, &cols);
    const char *name = layout_name(ld->layout, role, layer, 0, n, sizeof n);
    return ld->w->is_gguf ? gguf_vector(ld, v, name, rows) : load_vector(ld, v, name, rows);
}

/* Whether the optional tensor of `role` is in the checkpoint. */
static int has_role(loader *ld, tensor_role role, int layer) {
    char n[512];
    const char *name = layout_name(ld->layout, role, layer, 0, n, sizeof n);
    return ld->w->is_gguf ? gguf_find_tensor(&ld->w->gguf, name) != NULL : st_find(&ld->w->files, name) != NULL;
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
    for (int e = 0; e < E; e++) {
        if (ld->opt && ld->opt->holds && !ld->opt->holds(ld->opt->holds_ctx, i, e)) continue;   /* another rank's */
        if (load_mlp(ld, &lw->experts[e], T_EXPERT_GATE, i, e)) return MOE_FAIL;
    }
    lw->has_shared = c->n_shared_experts > 0;
    if (lw->has_shared && load_mlp(ld, &lw->shared, T_SHARED_GATE, i, 0)) return MOE_FAIL;
    return MOE_OK;
}

/* Whether the MTP module's copy (role `copy` of layer i) holds the same bytes as the main
 * model's tensor `main_role` (safetensors checkpoints; same dtype and shape). Reads both once;
 * pages of a tensor already converted at load are given back again. */
static int same_as_main(loader *ld, tensor_role copy, tensor_role main_role, int i) {
    if (ld->w->is_gguf) return 0;
    char n1[512], n2[512];
    const st_tensor *a = st_find(&ld->w->files, layout_name(ld->layout, copy, i, 0, n1, sizeof n1));
    const st_tensor *b = st_find(&ld->w->files, layout_name(ld->layout, main_role, 0, 0, n2, sizeof n2));
    if (!a || !b || a->dtype != b->dtype || a->dtype == ST_F8_E4M3 || a->ndim != b->ndim || a->nbytes != b->nbytes) return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    int same = memcmp(a->data, b->data, a->nbytes) == 0;
    st_tensor_release(&ld->w->files, a);   /* not used (same) or loaded again below */
    if (b->released) st_tensor_release(&ld->w->files, b);
    return same;
}

static int load_mtp_extras(loader *ld, layer_weights *lw, int i) {
    if (load_role_vector(ld, &lw->enorm, T_MTP_ENORM, i) || load_role_vector(ld, &lw->hnorm, T_MTP_HNORM, i) ||
        load_role_matrix(ld, &lw->eh_proj, T_MTP_EH_PROJ, i, 0) || load_role_vector(ld, &lw->head_norm, T_MTP_HEAD_NORM, i))
        return MOE_FAIL;
    /* the release stores copies of the embedding and head; use them if present, unless they
     * are byte for byte the main model's (DeepSeek-V3 shares them): then the main ones */
    lw->mtp_embed = ld->w->embed;
    lw->mtp_head = ld->w->lm_head;
    if (has_role(ld, T_MTP_EMBED, i) && !same_as_main(ld, T_MTP_EMBED, T_EMBED, i) &&
        load_role_matrix(ld, &lw->mtp_embed, T_MTP_EMBED, i, 0))
        return MOE_FAIL;
    if (ld->opt && ld->dtype != ld->opt->dtype)   /* --draft-dtype: a head of its own, in that format */
        return load_role_matrix(ld, &lw->mtp_head, has_role(ld, T_MTP_HEAD, i) ? T_MTP_HEAD : T_LM_HEAD,
                                has_role(ld, T_MTP_HEAD, i) ? i : 0, 0);
    if (has_role(ld, T_MTP_HEAD, i) && !same_as_main(ld, T_MTP_HEAD, T_LM_HEAD, i) &&
        load_role_matrix(ld, &lw->mtp_head, T_MTP_HEAD, i, 0))
        return MOE_FAIL;
    return MOE_OK;
}

/* ------------------------------------------------------------------ public */

int weights_load(moe_weights *w, const moe_config *cfg, const char *path, const weights_options *opt, moe_error *err) {
    memset(w, 0, sizeof *w);
    w->is_gguf = weights_is_gguf(path);
    if (w->is_gguf ? gguf_open(&w->gguf, path, err) : st_open_dir(&w->files, path, err)) return MOE_FAIL;
    loader ld = { w, cfg, w->is_gguf ? &LAYOUT_GGUF : &LAYOUT_HF, opt ? opt->dtype : WEIGHTS_AUTO, err, 0,
                  w->is_gguf ? w->gguf.n_tensors : w->files.n_tensors, opt, NULL, 0, 1, {0}, 0 };
    ld.threads = opt && opt->threads > 0 ? opt->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    ld.q8_rows = getenv("MOE_Q8_ROWS") && strcmp(getenv("MOE_Q8_ROWS"), "0");
    if (ld.threads < 1) ld.threads = 1;
    if (ld.threads > CONVERT_MAX_THREADS) ld.threads = CONVERT_MAX_THREADS;
    for (int b = 0; b < 256; b++) ld.fp8[b] = fp8_e4m3_to_f32((uint8_t)b);
    int nl = cfg->num_hidden_layers + cfg->num_nextn_predict_layers;
    w->layers = calloc((size_t)nl, sizeof(layer_weights));
    if (!w->layers) { moe_error_set(err, "out of memory"); goto fail; }
    w->n_layers = nl;
    if (load_role_matrix(&ld, &w->embed, T_EMBED, 0, 0) || load_role_vector(&ld, &w->final_norm, T_FINAL_NORM, 0))
        goto fail;
    if (cfg->tie_word_embeddings && !has_role(&ld, T_LM_HEAD, 0)) w->lm_head = w->embed;
    else if (load_role_matrix(&ld, &w->lm_head, T_LM_HEAD, 0, 0)) goto fail;
    for (int i = 0; i < nl; i++) {
        if (i == cfg->num_hidden_layers && opt && opt->mtp_dtype != WEIGHTS_AUTO) ld.dtype = opt->mtp_dtype;
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
    if (w->is_gguf) gguf_close(&w->gguf);
    else st_close(&w->files);
    memset(w, 0, sizeof *w);
}

const char *weights_dtype_name(weights_dtype d) {
    static const char *names[WEIGHTS_N_DTYPES] = {"auto", "f32", "bf16", "q8", "q4"};
    return d < WEIGHTS_N_DTYPES ? names[d] : "?";
}

int weights_dtype_parse(const char *s) {
    for (int i = 0; i < WEIGHTS_N_DTYPES; i++)
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
