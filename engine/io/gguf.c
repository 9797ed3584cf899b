/* gguf.c - read (validate, mmap) and write GGUF files (see gguf.h for the layout,
 * the notation and the limits).
 *
 * Reading is one pass over the bytes with a bounds-checked cursor: every length,
 * count and offset is checked against what is left of the file before it is used,
 * so a hostile file ends in one error line. Values stay in the file: a gguf_value
 * points at its bytes; only keys and tensor names are copied (NUL-terminated), and
 * arrays of strings or arrays at the top level get an offset table so element i is
 * found in O(1) (the token list of a 129k vocabulary).
 */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAX_NE (1ll << 40)       /* one dimension */
#define GGUF_MAX_ELEMS (1ull << 62)   /* a tensor's element count */

/* ------------------------------------------------------------------ type tables */

static const char *const vtype_names[GGUF_VAL_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
};
static const uint8_t vtype_size[GGUF_VAL_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8}; /* 0: variable */

const char *gguf_vtype_name(uint32_t t) { return t < GGUF_VAL_COUNT ? vtype_names[t] : "?"; }

static const struct { const char *name; int block; uint16_t bytes; } type_info[GGML_TYPE_COUNT] = {
    [GGML_TYPE_F32] = {"F32", 1, 4},          [GGML_TYPE_F16] = {"F16", 1, 2},
    [GGML_TYPE_Q4_0] = {"Q4_0", 32, 18},      [GGML_TYPE_Q4_1] = {"Q4_1", 32, 20},
    [GGML_TYPE_Q5_0] = {"Q5_0", 32, 22},      [GGML_TYPE_Q5_1] = {"Q5_1", 32, 24},
    [GGML_TYPE_Q8_0] = {"Q8_0", 32, 34},      [GGML_TYPE_Q8_1] = {"Q8_1", 32, 40},
    [GGML_TYPE_Q2_K] = {"Q2_K", 256, 84},     [GGML_TYPE_Q3_K] = {"Q3_K", 256, 110},
    [GGML_TYPE_Q4_K] = {"Q4_K", 256, 144},    [GGML_TYPE_Q5_K] = {"Q5_K", 256, 176},
    [GGML_TYPE_Q6_K] = {"Q6_K", 256, 210},    [GGML_TYPE_Q8_K] = {"Q8_K", 256, 292},
    [GGML_TYPE_IQ2_XXS] = {"IQ2_XXS", 256, 66}, [GGML_TYPE_IQ2_XS] = {"IQ2_XS", 256, 74},
    [GGML_TYPE_IQ3_XXS] = {"IQ3_XXS", 256, 98}, [GGML_TYPE_IQ1_S] = {"IQ1_S", 256, 50},
    [GGML_TYPE_IQ4_NL] = {"IQ4_NL", 32, 18},  [GGML_TYPE_IQ3_S] = {"IQ3_S", 256, 110},
    [GGML_TYPE_IQ2_S] = {"IQ2_S", 256, 82},   [GGML_TYPE_IQ4_XS] = {"IQ4_XS", 256, 136},
    [GGML_TYPE_I8] = {"I8", 1, 1},            [GGML_TYPE_I16] = {"I16", 1, 2},
    [GGML_TYPE_I32] = {"I32", 1, 4},          [GGML_TYPE_I64] = {"I64", 1, 8},
    [GGML_TYPE_F64] = {"F64", 1, 8},          [GGML_TYPE_IQ1_M] = {"IQ1_M", 256, 56},
    [GGML_TYPE_BF16] = {"BF16", 1, 2},        [GGML_TYPE_TQ1_0] = {"TQ1_0", 256, 54},
    [GGML_TYPE_TQ2_0] = {"TQ2_0", 256, 66},   [GGML_TYPE_MXFP4] = {"MXFP4", 32, 17},
    [GGML_TYPE_NVFP4] = {"NVFP4", 64, 36},    [GGML_TYPE_Q1_0] = {"Q1_0", 128, 18},
    [GGML_TYPE_Q2_0] = {"Q2_0", 64, 18},
};

const char *gguf_type_name(uint32_t t) { return t < GGML_TYPE_COUNT && type_info[t].name ? type_info[t].name : "?"; }
int gguf_type_block(uint32_t t) { return t < GGML_TYPE_COUNT ? type_info[t].block : 0; }
size_t gguf_type_block_bytes(uint32_t t) { return t < GGML_TYPE_COUNT ? type_info[t].bytes : 0; }

int gguf_type_supported(uint32_t t) {
    switch (t) {
    case GGML_TYPE_F32: case GGML_TYPE_F16: case GGML_TYPE_BF16: case GGML_TYPE_Q8_0:
    case GGML_TYPE_Q4_0: case GGML_TYPE_Q4_K: case GGML_TYPE_Q5_K: case GGML_TYPE_Q6_K: return 1;
    default: return 0;
    }
}

/* ------------------------------------------------------------------ little-endian reads */

static uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* ------------------------------------------------------------------ name hash */

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;   /* FNV-1a */
    while (*s) h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    return h;
}

/* Builds an open-addressing table over n names (name(i)); -1 + the duplicate's index in *dup. */
static int *hash_build(int n, int *cap_out, const char *(*name)(const gguf_file *, int), const gguf_file *g, int *dup) {
    int cap = 16;
    while (cap < 2 * n) cap *= 2;
    int *h = malloc(sizeof(int) * (size_t)cap);
    *dup = -1;
    if (!h) return NULL;
    for (int i = 0; i < cap; i++) h[i] = -1;
    for (int i = 0; i < n; i++) {
        uint64_t k = hash_str(name(g, i)) & (uint64_t)(cap - 1);
        while (h[k] >= 0) {
            if (!strcmp(name(g, h[k]), name(g, i))) { *dup = i; return h; }
            k = (k + 1) & (uint64_t)(cap - 1);
        }
        h[k] = i;
    }
    *cap_out = cap;
    return h;
}

static int hash_find(const int *h, int cap, const char *(*name)(const gguf_file *, int), const gguf_file *g,
                     const char *s) {
    if (!h) return -1;
    uint64_t k = hash_str(s) & (uint64_t)(cap - 1);
    while (h[k] >= 0) {
        if (!strcmp(name(g, h[k]), s)) return h[k];
        k = (k + 1) & (uint64_t)(cap - 1);
    }
    return -1;
}

static const char *kv_name(const gguf_file *g, int i) { return g->kv[i].key; }
static const char *t_name(const gguf_file *g, int i) { return g->tensors[i].name; }

const gguf_kv *gguf_find_kv(const gguf_file *g, const char *key) {
    int i = hash_find(g->kv_hash, g->kv_cap, kv_name, g, key);
    return i < 0 ? NULL : &g->kv[i];
}

const gguf_tensor *gguf_find_tensor(const gguf_file *g, const char *name) {
    int i = hash_find(g->t_hash, g->t_cap, t_name, g, name);
    return i < 0 ? NULL : &g->tensors[i];
}

/* ------------------------------------------------------------------ the cursor */

typedef struct {
    const uint8_t *b;      /* the file */
    size_t size, pos;      /* its bytes, the next byte */
    const char *path;
    moe_error *err;
    uint64_t arr_elems;    /* array elements read so far (GGUF_MAX_ARRAY_ELEMS) */
    uint64_t *pool;        /* offset tables of top-level arrays, back to back */
    size_t npool, cappool;
} rd;

static int truncated(rd *r, const char *what, const char *name) {
    return moe_error_set(r->err, "%s: file ends inside %s%s%s%s (at byte %zu of %zu; truncated?)", r->path, what,
                         name ? " \"" : "", name ? name : "", name ? "\"" : "", r->pos, r->size);
}

static int need(rd *r, uint64_t n, const char *what, const char *name) {
    return n > r->size - r->pos ? truncated(r, what, name) : MOE_OK;
}

static int get32(rd *r, uint32_t *v, const char *what, const char *name) {
    if (need(r, 4, what, name)) return MOE_FAIL;
    *v = ld32(r->b + r->pos);
    r->pos += 4;
    return MOE_OK;
}

static int get64(rd *r, uint64_t *v, const char *what, const char *name) {
    if (need(r, 8, what, name)) return MOE_FAIL;
    *v = ld64(r->b + r->pos);
    r->pos += 8;
    return MOE_OK;
}

/* A string (u64 length + bytes) of at most max bytes: (*s, *len) into the file. */
static int get_str(rd *r, uint64_t max, const uint8_t **s, uint64_t *len, const char *what, const char *name) {
    if (get64(r, len, what, name)) return MOE_FAIL;
    if (*len > max)
        return moe_error_set(r->err, "%s: %s%s%s%s is a string of %llu bytes, more than the limit of %llu", r->path,
                             what, name ? " \"" : "", name ? name : "", name ? "\"" : "", (unsigned long long)*len,
                             (unsigned long long)max);
    if (need(r, *len, what, name)) return MOE_FAIL;
    *s = r->b + r->pos;
    r->pos += (size_t)*len;
    return MOE_OK;
}

/* A NUL-terminated copy of a key or tensor name of 1..max-1 bytes without NUL bytes. */
static int get_name(rd *r, size_t max, char **out, const char *what, uint64_t index) {
    const uint8_t *s;
    uint64_t len;
    char label[64];
    snprintf(label, sizeof label, "%s %llu", what, (unsigned long long)index);
    if (get64(r, &len, label, NULL)) return MOE_FAIL;
    if (len == 0) return moe_error_set(r->err, "%s: %s is empty", r->path, label);
    if (len >= max)
        return moe_error_set(r->err, "%s: %s is %llu bytes long, more than the limit of %zu", r->path, label,
                             (unsigned long long)len, max - 1);
    if (need(r, len, label, NULL)) return MOE_FAIL;
    s = r->b + r->pos;
    if (memchr(s, 0, (size_t)len)) return moe_error_set(r->err, "%s: %s \"%.*s\" holds a NUL byte", r->path, label,
                                                        (int)len, (const char *)s);
    r->pos += (size_t)len;
    if (!(*out = malloc((size_t)len + 1))) return moe_error_set(r->err, "%s: out of memory", r->path);
    memcpy(*out, s, (size_t)len);
    (*out)[len] = 0;
    return MOE_OK;
}

/* ------------------------------------------------------------------ values */

/* Encoded size of a validated value of `type` at p (the whole value: for a string the
 * length field too, for an array its header too). */
static uint64_t val_size(uint32_t type, const uint8_t *p) {
    if (type == GGUF_VAL_STRING) return 8 + ld64(p);
    if (type != GGUF_VAL_ARRAY) return vtype_size[type];
    uint32_t elem = ld32(p);
    uint64_t n = ld64(p + 4), off = 12;
    if (vtype_size[elem]) return off + n * vtype_size[elem];
    for (uint64_t i = 0; i < n; i++) off += val_size(elem, p + off);
    return off;
}

static int pool_reserve(rd *r, uint64_t n) {
    if (r->npool + n <= r->cappool) return MOE_OK;
    size_t cap = r->cappool ? r->cappool : 1024;
    while (cap < r->npool + n) cap *= 2;
    uint64_t *p = realloc(r->pool, cap * sizeof *p);
    if (!p) return moe_error_set(r->err, "%s: out of memory for the array index", r->path);
    r->pool = p;
    r->cappool = cap;
    return MOE_OK;
}

/* Reads (and checks) a value of `type` for `key` at the cursor into v. depth: nesting
 * of this value (0 = a key's value). Top-level arrays of strings or arrays record each
 * element's offset in the pool (v->idx is set to the pool index + 1 and fixed later). */
static int parse_value(rd *r, uint32_t type, int depth, const char *key, gguf_value *v) {
    memset(v, 0, sizeof *v);
    v->type = type;
    v->n = 1;
    if (type >= GGUF_VAL_COUNT)
        return moe_error_set(r->err, "%s: key \"%s\" has unknown value type %u", r->path, key, type);
    if (type == GGUF_VAL_STRING) {
        const uint8_t *s = NULL;
        if (get_str(r, GGUF_MAX_STRING, &s, &v->n_bytes, "the value of key", key)) return MOE_FAIL;
        v->p = s;
        return MOE_OK;
    }
    if (type != GGUF_VAL_ARRAY) {
        if (need(r, vtype_size[type], "the value of key", key)) return MOE_FAIL;
        v->p = r->b + r->pos;
        v->n_bytes = vtype_size[type];
        if (type == GGUF_VAL_BOOL && *v->p > 1)
            return moe_error_set(r->err, "%s: key \"%s\": bool value %u is not 0 or 1", r->path, key, *v->p);
        r->pos += vtype_size[type];
        return MOE_OK;
    }
    uint32_t elem;
    uint64_t n;
    if (get32(r, &elem, "the array of key", key) || get64(r, &n, "the array of key", key)) return MOE_FAIL;
    if (elem >= GGUF_VAL_COUNT)
        return moe_error_set(r->err, "%s: key \"%s\" is an array of unknown value type %u", r->path, key, elem);
    if (elem == GGUF_VAL_ARRAY && depth + 1 >= GGUF_MAX_DEPTH)
        return moe_error_set(r->err, "%s: key \"%s\" nests arrays more than %d deep", r->path, key, GGUF_MAX_DEPTH);
    if (n > GGUF_MAX_ARRAY_ELEMS - r->arr_elems)
        return moe_error_set(r->err, "%s: key \"%s\" has an array of %llu elements: the file's arrays exceed the limit "
                             "of %u elements", r->path, key, (unsigned long long)n, GGUF_MAX_ARRAY_ELEMS);
    r->arr_elems += n;
    v->elem = elem;
    v->n = n;
    v->p = r->b + r->pos;
    size_t start = r->pos;
    if (vtype_size[elem]) {
        if (need(r, n * vtype_size[elem], "the array of key", key)) return MOE_FAIL;   /* n < 2^24: no overflow */
        if (elem == GGUF_VAL_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (v->p[i] > 1)
                    return moe_error_set(r->err, "%s: key \"%s\": bool element %llu is %u, not 0 or 1", r->path, key,
                                         (unsigned long long)i, v->p[i]);
        r->pos += (size_t)(n * vtype_size[elem]);
        v->n_bytes = n * vtype_size[elem];
        return MOE_OK;
    }
    size_t first = r->npool;
    if (depth == 0) {
        if (pool_reserve(r, n)) return MOE_FAIL;
        r->npool += n;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (depth == 0) r->pool[first + i] = r->pos - start;
        gguf_value sub;
        if (parse_value(r, elem, depth + 1, key, &sub)) return MOE_FAIL;
    }
    if (depth == 0 && n) v->idx = (const uint64_t *)(uintptr_t)(first + 1);   /* fixed up once the pool stops moving */
    v->n_bytes = r->pos - start;
    return MOE_OK;
}

gguf_value gguf_arr_at(const gguf_value *a, uint64_t i) {
    gguf_value v = {.type = a->elem, .n = 1};
    const uint8_t *p;
    if (vtype_size[a->elem]) {
        v.p = a->p + i * vtype_size[a->elem];
        v.n_bytes = vtype_size[a->elem];
        return v;
    }
    if (a->idx) p = a->p + a->idx[i];
    else {
        p = a->p;
        for (uint64_t k = 0; k < i; k++) p += val_size(a->elem, p);
    }
    if (a->elem == GGUF_VAL_STRING) {
        v.n_bytes = ld64(p);
        v.p = p + 8;
        return v;
    }
    v.elem = ld32(p);
    v.n = ld64(p + 4);
    v.p = p + 12;
    v.n_bytes = val_size(GGUF_VAL_ARRAY, p) - 12;
    return v;
}

int gguf_val_int(const gguf_value *v, int64_t *out) {
    const uint8_t *p = v->p;
    switch (v->type) {
    case GGUF_VAL_U8: *out = p[0]; return MOE_OK;
    case GGUF_VAL_I8: *out = (int8_t)p[0]; return MOE_OK;
    case GGUF_VAL_U16: { uint16_t x; memcpy(&x, p, 2); *out = x; return MOE_OK; }
    case GGUF_VAL_I16: { int16_t x; memcpy(&x, p, 2); *out = x; return MOE_OK; }
    case GGUF_VAL_U32: *out = ld32(p); return MOE_OK;
    case GGUF_VAL_I32: *out = (int32_t)ld32(p); return MOE_OK;
    case GGUF_VAL_U64: { uint64_t x = ld64(p); if (x > INT64_MAX) return MOE_FAIL; *out = (int64_t)x; return MOE_OK; }
    case GGUF_VAL_I64: *out = (int64_t)ld64(p); return MOE_OK;
    default: return MOE_FAIL;
    }
}

int gguf_val_float(const gguf_value *v, double *out) {
    if (v->type == GGUF_VAL_F32) { float f; memcpy(&f, v->p, 4); *out = f; return MOE_OK; }
    if (v->type == GGUF_VAL_F64) { memcpy(out, v->p, 8); return MOE_OK; }
    return MOE_FAIL;
}

/* ------------------------------------------------------------------ typed getters */

static int lookup(const gguf_file *g, const char *key, int required, const gguf_kv **kv, moe_error *err) {
    *kv = gguf_find_kv(g, key);
    if (!*kv && required) return moe_error_set(err, "%s: missing required key \"%s\"", g->path, key);
    return MOE_OK;
}

static int wrong_type(const gguf_file *g, const gguf_kv *kv, const char *want, moe_error *err) {
    if (kv->v.type == GGUF_VAL_ARRAY)
        return moe_error_set(err, "%s: key \"%s\" is an array of %s, not %s", g->path, kv->key,
                             gguf_vtype_name(kv->v.elem), want);
    return moe_error_set(err, "%s: key \"%s\" has type %s, not %s", g->path, kv->key, gguf_vtype_name(kv->v.type), want);
}

int gguf_get_i64(const gguf_file *g, const char *key, int required, int64_t def, int64_t *out, moe_error *err) {
    const gguf_kv *kv;
    if (lookup(g, key, required, &kv, err)) return MOE_FAIL;
    if (!kv) { *out = def; return MOE_OK; }
    if (gguf_val_int(&kv->v, out)) {
        if (kv->v.type == GGUF_VAL_U64)
            return moe_error_set(err, "%s: key \"%s\" = %llu is out of range", g->path, key,
                                 (unsigned long long)ld64(kv->v.p));
        return wrong_type(g, kv, "an integer", err);
    }
    return MOE_OK;
}

int gguf_get_u32(const gguf_file *g, const char *key, int required, uint32_t def, uint32_t *out, moe_error *err) {
    int64_t v;
    if (gguf_get_i64(g, key, required, def, &v, err)) return MOE_FAIL;
    if (v < 0 || v > UINT32_MAX)
        return moe_error_set(err, "%s: key \"%s\" = %lld is out of range [0, %u]", g->path, key, (long long)v, UINT32_MAX);
    *out = (uint32_t)v;
    return MOE_OK;
}

int gguf_get_f64(const gguf_file *g, const char *key, int required, double def, double *out, moe_error *err) {
    const gguf_kv *kv;
    if (lookup(g, key, required, &kv, err)) return MOE_FAIL;
    if (!kv) { *out = def; return MOE_OK; }
    if (gguf_val_float(&kv->v, out)) return wrong_type(g, kv, "a float", err);
    return MOE_OK;
}

int gguf_get_f32(const gguf_file *g, const char *key, int required, float def, float *out, moe_error *err) {
    double d;
    if (gguf_get_f64(g, key, required, def, &d, err)) return MOE_FAIL;
    *out = (float)d;
    return MOE_OK;
}

int gguf_get_bool(const gguf_file *g, const char *key, int required, int def, int *out, moe_error *err) {
    const gguf_kv *kv;
    if (lookup(g, key, required, &kv, err)) return MOE_FAIL;
    if (!kv) { *out = def; return MOE_OK; }
    if (kv->v.type != GGUF_VAL_BOOL) return wrong_type(g, kv, "bool", err);
    *out = kv->v.p[0];
    return MOE_OK;
}

int gguf_get_str(const gguf_file *g, const char *key, int required, const char **out, size_t *len, moe_error *err) {
    const gguf_kv *kv;
    *out = NULL;
    *len = 0;
    if (lookup(g, key, required, &kv, err)) return MOE_FAIL;
    if (!kv) return MOE_OK;
    if (kv->v.type != GGUF_VAL_STRING) return wrong_type(g, kv, "string", err);
    *out = (const char *)kv->v.p;
    *len = (size_t)kv->v.n_bytes;
    return MOE_OK;
}

int gguf_get_strbuf(const gguf_file *g, const char *key, int required, const char *def, char *buf, size_t n,
                    moe_error *err) {
    const char *s;
    size_t len;
    if (gguf_get_str(g, key, required, &s, &len, err)) return MOE_FAIL;
    if (!s) { s = def; len = strlen(def); }
    if (len >= n || memchr(s, 0, len))
        return moe_error_set(err, "%s: key \"%s\" is longer than %zu bytes or holds a NUL byte", g->path, key, n - 1);
    memcpy(buf, s, len);
    buf[len] = 0;
    return MOE_OK;
}

int gguf_get_arr(const gguf_file *g, const char *key, int required, uint32_t elem_type, const gguf_value **out,
                 moe_error *err) {
    const gguf_kv *kv;
    *out = NULL;
    if (lookup(g, key, required, &kv, err)) return MOE_FAIL;
    if (!kv) return MOE_OK;
    if (kv->v.type != GGUF_VAL_ARRAY || (elem_type < GGUF_VAL_COUNT && kv->v.elem != elem_type)) {
        char want[48];
        snprintf(want, sizeof want, elem_type < GGUF_VAL_COUNT ? "an array of %s" : "an array",
                 gguf_vtype_name(elem_type));
        return wrong_type(g, kv, want, err);
    }
    *out = &kv->v;
    return MOE_OK;
}

/* ------------------------------------------------------------------ parsing */

typedef struct { uint64_t begin, end; int idx; } range;

static int cmp_range(const void *a, const void *b) {
    const range *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end < y->end ? -1 : x->end > y->end);
}

static int parse_tensor(rd *r, gguf_file *g, uint64_t i) {
    gguf_tensor *t = &g->tensors[i];
    if (get_name(r, GGUF_MAX_NAME, &t->name, "tensor name", i)) return MOE_FAIL;
    g->n_tensors = (int)i + 1;   /* owns the name from here on */
    uint32_t nd;
    if (get32(r, &nd, "the info of tensor", t->name)) return MOE_FAIL;
    if (nd > GGUF_MAX_DIMS)
        return moe_error_set(r->err, "%s: tensor \"%s\" has %u dimensions (at most %d)", r->path, t->name, nd,
                             GGUF_MAX_DIMS);
    t->n_dims = (int)nd;
    uint64_t ne_prod = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        uint64_t x = 1;
        if ((uint32_t)d < nd && get64(r, &x, "the info of tensor", t->name)) return MOE_FAIL;
        if (x > (uint64_t)GGUF_MAX_NE)
            return moe_error_set(r->err, "%s: tensor \"%s\" dimension %d is %lld (negative or over 2^40)", r->path,
                                 t->name, d, (long long)x);
        t->ne[d] = (int64_t)x;
        if (x && ne_prod > (GGUF_MAX_ELEMS - 1) / x)
            return moe_error_set(r->err, "%s: tensor \"%s\" element count overflows (over 2^62)", r->path, t->name);
        ne_prod *= x;
    }
    t->n_elems = ne_prod;
    if (get32(r, &t->type, "the info of tensor", t->name)) return MOE_FAIL;
    int blk = gguf_type_block(t->type);
    if (!blk)
        return moe_error_set(r->err, "%s: tensor \"%s\" has unknown ggml type id %u", r->path, t->name, t->type);
    if (t->ne[0] % blk)
        return moe_error_set(r->err, "%s: tensor \"%s\": rows of %lld elements are not a whole number of %s blocks of %d",
                             r->path, t->name, (long long)t->ne[0], gguf_type_name(t->type), blk);
    uint64_t blocks = ne_prod / (uint64_t)blk, bb = gguf_type_block_bytes(t->type);
    if (blocks > (uint64_t)SIZE_MAX / bb || blocks * bb > ((uint64_t)1 << 62))
        return moe_error_set(r->err, "%s: tensor \"%s\" byte size overflows", r->path, t->name);
    t->n_bytes = (size_t)(blocks * bb);
    if (get64(r, &t->offset, "the info of tensor", t->name)) return MOE_FAIL;
    if (t->offset % g->alignment)
        return moe_error_set(r->err, "%s: tensor \"%s\" offset %llu is not a multiple of the alignment %u", r->path,
                             t->name, (unsigned long long)t->offset, g->alignment);
    return MOE_OK;
}

static int parse(gguf_file *g, moe_error *err) {
    rd r = {.b = g->buf, .size = g->size, .path = g->path, .err = err};
    uint64_t n_tensors, n_kv;
    if (g->size < 4 || memcmp(g->buf, "GGUF", 4)) {
        if (g->size < 4) return moe_error_set(err, "%s: file is %zu bytes, too short for a GGUF header", g->path, g->size);
        return moe_error_set(err, "%s: not a GGUF file (magic \"%.4s\", want \"GGUF\")", g->path, (const char *)g->buf);
    }
    r.pos = 4;
    if (get32(&r, &g->version, "the header", NULL)) return MOE_FAIL;
    if (g->version != 2 && g->version != 3)
        return moe_error_set(err, "%s: GGUF version %u is not supported (only 2 and 3)%s", g->path, g->version,
                             (g->version & 0xffff) == 0 ? "; a big-endian file?" : "");
    if (get64(&r, &n_tensors, "the header", NULL) || get64(&r, &n_kv, "the header", NULL)) return MOE_FAIL;
    if (n_tensors > GGUF_MAX_TENSORS)
        return moe_error_set(err, "%s: header lists %llu tensors, more than the limit of %d", g->path,
                             (unsigned long long)n_tensors, GGUF_MAX_TENSORS);
    if (n_kv > GGUF_MAX_KV)
        return moe_error_set(err, "%s: header lists %llu keys, more than the limit of %d", g->path,
                             (unsigned long long)n_kv, GGUF_MAX_KV);
    /* each key takes >= 13 bytes, each tensor info >= 25: a count the file cannot hold is caught before allocating */
    if (n_kv * 13 + n_tensors * 25 > g->size - r.pos)
        return moe_error_set(err, "%s: header lists %llu keys and %llu tensors, more than the %zu bytes after it can hold "
                             "(truncated?)", g->path, (unsigned long long)n_kv, (unsigned long long)n_tensors,
                             g->size - r.pos);
    g->kv = calloc(n_kv + 1, sizeof *g->kv);
    g->tensors = calloc(n_tensors + 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) return moe_error_set(err, "%s: out of memory", g->path);

    int rc = MOE_FAIL;
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        uint32_t type;
        if (get_name(&r, GGUF_MAX_KEY, &kv->key, "key", i)) goto done;
        g->n_kv = (int)i + 1;
        if (get32(&r, &type, "the value type of key", kv->key) || parse_value(&r, type, 0, kv->key, &kv->v)) goto done;
    }
    for (int i = 0; i < g->n_kv; i++)   /* the pool has stopped moving */
        if (g->kv[i].v.idx) g->kv[i].v.idx = r.pool + ((uintptr_t)g->kv[i].v.idx - 1);
    g->idx_pool = r.pool;
    r.pool = NULL;
    int dup;
    if (!(g->kv_hash = hash_build(g->n_kv, &g->kv_cap, kv_name, g, &dup))) {
        moe_error_set(err, "%s: out of memory", g->path);
        goto done;
    }
    if (dup >= 0) { moe_error_set(err, "%s: key \"%s\" appears twice", g->path, g->kv[dup].key); goto done; }

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv *al = gguf_find_kv(g, "general.alignment");
    if (al) {
        if (al->v.type != GGUF_VAL_U32) { wrong_type(g, al, "u32", err); goto done; }
        g->alignment = ld32(al->v.p);
        if (!g->alignment || (g->alignment & (g->alignment - 1))) {
            moe_error_set(err, "%s: general.alignment = %u is not a power of two", g->path, g->alignment);
            goto done;
        }
    }
    for (uint64_t i = 0; i < n_tensors; i++)
        if (parse_tensor(&r, g, i)) goto done;
    if (!(g->t_hash = hash_build(g->n_tensors, &g->t_cap, t_name, g, &dup))) {
        moe_error_set(err, "%s: out of memory", g->path);
        goto done;
    }
    if (dup >= 0) { moe_error_set(err, "%s: tensor \"%s\" appears twice", g->path, g->tensors[dup].name); goto done; }

    /* the data section */
    uint64_t pad = (g->alignment - r.pos % g->alignment) % g->alignment;
    g->data_offset = r.pos + (size_t)pad;
    if (n_tensors && pad > g->size - r.pos) { r.pos = g->size; truncated(&r, "the padding before the tensor data", NULL); goto done; }
    uint64_t data_len = n_tensors ? g->size - g->data_offset : 0;
    range *rg = malloc(sizeof *rg * (n_tensors + 1));
    if (!rg) { moe_error_set(err, "%s: out of memory", g->path); goto done; }
    int nr = 0;
    for (int i = 0; i < g->n_tensors; i++) {
        gguf_tensor *t = &g->tensors[i];
        if (t->offset > data_len || t->n_bytes > data_len - t->offset) {
            moe_error_set(err, "%s: tensor \"%s\" data [%llu, %llu) lies outside the %llu-byte data section (truncated?)",
                          g->path, t->name, (unsigned long long)t->offset,
                          (unsigned long long)t->offset + (unsigned long long)t->n_bytes, (unsigned long long)data_len);
            free(rg);
            goto done;
        }
        t->data = g->buf + g->data_offset + t->offset;
        if (t->n_bytes) rg[nr++] = (range){t->offset, t->offset + t->n_bytes, i};
    }
    qsort(rg, (size_t)nr, sizeof *rg, cmp_range);
    for (int i = 1; i < nr; i++)   /* sorted by begin, empty ones left out: neighbours suffice */
        if (rg[i].begin < rg[i - 1].end) {
            moe_error_set(err, "%s: tensors \"%s\" and \"%s\" overlap in the data section", g->path,
                          g->tensors[rg[i - 1].idx].name, g->tensors[rg[i].idx].name);
            free(rg);
            goto done;
        }
    free(rg);
    rc = MOE_OK;
done:
    free(r.pool);
    return rc;
}

int gguf_parse_buffer(gguf_file *g, const void *buf, size_t size, const char *path, moe_error *err) {
    memset(g, 0, sizeof *g);
    g->buf = buf;
    g->size = size;
    if (!(g->path = strdup(path))) return moe_error_set(err, "out of memory");
    int rc = parse(g, err);
    if (rc) gguf_close(g);
    return rc;
}

int gguf_open(gguf_file *g, const char *path, moe_error *err) {
    memset(g, 0, sizeof *g);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return moe_error_set(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return moe_error_set(err, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    void *map = NULL;
    if (size) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            close(fd);
            return moe_error_set(err, "%s: mmap failed: %s", path, strerror(errno));
        }
    }
    close(fd);
    static const uint8_t empty[1];
    if (gguf_parse_buffer(g, map ? map : empty, size, path, err)) {
        if (map) munmap(map, size);
        return MOE_FAIL;
    }
    g->map = map;
    return MOE_OK;
}

void gguf_close(gguf_file *g) {
    if (!g) return;
    for (int i = 0; i < g->n_kv; i++) free(g->kv[i].key);
    for (int i = 0; i < g->n_tensors; i++) free(g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
    free(g->idx_pool);
    free(g->kv_hash);
    free(g->t_hash);
    free(g->path);
    if (g->map) munmap(g->map, g->size);
    memset(g, 0, sizeof *g);
}

/* ================================================================== writing */

void gguf_writer_init(gguf_writer *w) {
    memset(w, 0, sizeof *w);
    w->alignment = GGUF_DEFAULT_ALIGNMENT;
}

void gguf_writer_free(gguf_writer *w) {
    for (int i = 0; i < w->n_kv; i++) free(w->keys[i]);
    for (int i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->keys);
    free(w->tensors);
    free(w->meta);
    memset(w, 0, sizeof *w);
}

static int w_fail(gguf_writer *w, const char *fmt, const char *name) {
    if (!w->failed) moe_error_set(&w->err, fmt, name);
    w->failed = 1;
    return MOE_FAIL;
}

static int w_bytes(gguf_writer *w, const void *p, size_t n) {
    if (w->meta_len + n > w->meta_cap) {
        size_t cap = w->meta_cap ? w->meta_cap : 4096;
        while (cap < w->meta_len + n) cap *= 2;
        uint8_t *m = realloc(w->meta, cap);
        if (!m) return w_fail(w, "out of memory writing GGUF metadata%s", "");
        w->meta = m;
        w->meta_cap = cap;
    }
    if (n) memcpy(w->meta + w->meta_len, p, n);
    w->meta_len += n;
    return MOE_OK;
}

static int w_u32(gguf_writer *w, uint32_t v) { return w_bytes(w, &v, 4); }
static int w_u64(gguf_writer *w, uint64_t v) { return w_bytes(w, &v, 8); }
static int w_string(gguf_writer *w, const char *s, size_t n) {
    return (w_u64(w, n) || w_bytes(w, s, n)) ? MOE_FAIL : MOE_OK;
}

/* Starts a key: checks it and writes its name and value type. */
static int w_key(gguf_writer *w, const char *key, uint32_t type) {
    if (w->failed) return MOE_FAIL;
    size_t n = strlen(key);
    if (!n || n >= GGUF_MAX_KEY) return w_fail(w, "GGUF key \"%.300s\" is empty or too long", key);
    for (int i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key)) return w_fail(w, "GGUF key \"%s\" added twice", key);
    char **k = realloc(w->keys, sizeof *k * (size_t)(w->n_kv + 1));
    if (!k) return w_fail(w, "out of memory for key \"%s\"", key);
    w->keys = k;
    if (!(k[w->n_kv] = strdup(key))) return w_fail(w, "out of memory for key \"%s\"", key);
    w->n_kv++;
    return (w_string(w, key, n) || w_u32(w, type)) ? MOE_FAIL : MOE_OK;
}

int gguf_w_u32(gguf_writer *w, const char *key, uint32_t v) {
    return (w_key(w, key, GGUF_VAL_U32) || w_u32(w, v)) ? MOE_FAIL : MOE_OK;
}
int gguf_w_i32(gguf_writer *w, const char *key, int32_t v) {
    return (w_key(w, key, GGUF_VAL_I32) || w_bytes(w, &v, 4)) ? MOE_FAIL : MOE_OK;
}
int gguf_w_u64(gguf_writer *w, const char *key, uint64_t v) {
    return (w_key(w, key, GGUF_VAL_U64) || w_u64(w, v)) ? MOE_FAIL : MOE_OK;
}
int gguf_w_f32(gguf_writer *w, const char *key, float v) {
    return (w_key(w, key, GGUF_VAL_F32) || w_bytes(w, &v, 4)) ? MOE_FAIL : MOE_OK;
}
int gguf_w_f64(gguf_writer *w, const char *key, double v) {
    return (w_key(w, key, GGUF_VAL_F64) || w_bytes(w, &v, 8)) ? MOE_FAIL : MOE_OK;
}
int gguf_w_bool(gguf_writer *w, const char *key, int v) {
    uint8_t b = v ? 1 : 0;
    return (w_key(w, key, GGUF_VAL_BOOL) || w_bytes(w, &b, 1)) ? MOE_FAIL : MOE_OK;
}
int gguf_w_strn(gguf_writer *w, const char *key, const char *s, size_t len) {
    if (len > GGUF_MAX_STRING) return w_fail(w, "GGUF string value of key \"%s\" is longer than 1 MiB", key);
    return (w_key(w, key, GGUF_VAL_STRING) || w_string(w, s, len)) ? MOE_FAIL : MOE_OK;
}
int gguf_w_str(gguf_writer *w, const char *key, const char *s) { return gguf_w_strn(w, key, s, strlen(s)); }

int gguf_w_arr(gguf_writer *w, const char *key, uint32_t elem, const void *data, uint64_t n) {
    if (elem >= GGUF_VAL_COUNT || !vtype_size[elem])
        return w_fail(w, "GGUF array of key \"%s\": gguf_w_arr takes numbers or bools only", key);
    if (n > GGUF_MAX_ARRAY_ELEMS) return w_fail(w, "GGUF array of key \"%s\" is too long", key);
    int bad = w_key(w, key, GGUF_VAL_ARRAY) || w_u32(w, elem) || w_u64(w, n) ||
              w_bytes(w, data, (size_t)n * vtype_size[elem]);
    return bad ? MOE_FAIL : MOE_OK;
}

int gguf_w_arr_str(gguf_writer *w, const char *key, const char *const *s, const size_t *lens, uint64_t n) {
    if (n > GGUF_MAX_ARRAY_ELEMS) return w_fail(w, "GGUF array of key \"%s\" is too long", key);
    if (w_key(w, key, GGUF_VAL_ARRAY) || w_u32(w, GGUF_VAL_STRING) || w_u64(w, n)) return MOE_FAIL;
    for (uint64_t i = 0; i < n; i++) {
        size_t l = lens ? lens[i] : strlen(s[i]);
        if (l > GGUF_MAX_STRING) return w_fail(w, "GGUF array of key \"%s\" holds a string longer than 1 MiB", key);
        if (w_string(w, s[i], l)) return MOE_FAIL;
    }
    return MOE_OK;
}

int gguf_w_raw(gguf_writer *w, const char *key, uint32_t vtype, const void *bytes, size_t n) {
    return (w_key(w, key, vtype) || w_bytes(w, bytes, n)) ? MOE_FAIL : MOE_OK;
}

int gguf_w_alignment(gguf_writer *w, uint32_t alignment) {
    if (!alignment || (alignment & (alignment - 1))) return w_fail(w, "GGUF alignment%s is not a power of two", "");
    if (w->n_tensors) return w_fail(w, "GGUF alignment%s set after a tensor", "");
    w->alignment = alignment;
    return gguf_w_u32(w, "general.alignment", alignment);
}

int gguf_w_tensor(gguf_writer *w, const char *name, int n_dims, const int64_t *ne, uint32_t type, const void *data) {
    if (w->failed) return MOE_FAIL;
    size_t len = strlen(name);
    if (!len || len >= GGUF_MAX_NAME) return w_fail(w, "GGUF tensor name \"%.300s\" is empty or 64 bytes or longer", name);
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS) return w_fail(w, "GGUF tensor \"%s\" needs 1 to 4 dimensions", name);
    int blk = gguf_type_block(type);
    if (!blk) return w_fail(w, "GGUF tensor \"%s\" has an unknown ggml type", name);
    uint64_t n = 1;
    for (int d = 0; d < n_dims; d++) {
        if (ne[d] < 0 || ne[d] > GGUF_MAX_NE || (ne[d] && n > (GGUF_MAX_ELEMS - 1) / (uint64_t)ne[d]))
            return w_fail(w, "GGUF tensor \"%s\" has an invalid shape", name);
        n *= (uint64_t)ne[d];
    }
    if (ne[0] % blk) return w_fail(w, "GGUF tensor \"%s\": rows are not a whole number of blocks", name);
    for (int i = 0; i < w->n_tensors; i++)
        if (!strcmp(w->tensors[i].name, name)) return w_fail(w, "GGUF tensor \"%s\" added twice", name);
    struct gguf_wtensor *t = realloc(w->tensors, sizeof *t * (size_t)(w->n_tensors + 1));
    if (!t) return w_fail(w, "out of memory for tensor \"%s\"", name);
    w->tensors = t;
    t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return w_fail(w, "out of memory for tensor \"%s\"", name);
    w->n_tensors++;
    t->n_dims = n_dims;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    t->type = type;
    t->data = data;
    t->n_bytes = (size_t)(n / (uint64_t)blk * gguf_type_block_bytes(type));
    return MOE_OK;
}

/* The output: a FILE or a growing buffer. */
typedef struct {
    FILE *f;
    uint8_t *buf; size_t len, cap;
    int failed;
} sink;

static void put(sink *s, const void *p, size_t n) {
    if (s->failed || !n) return;
    if (s->f) { if (fwrite(p, 1, n, s->f) != n) s->failed = 1; return; }
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->len + n) cap *= 2;
        uint8_t *b = realloc(s->buf, cap);
        if (!b) { s->failed = 1; return; }
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
}

static void put_pad(sink *s, uint64_t at, uint32_t align) {
    static const uint8_t zeros[256];
    uint64_t pad = (align - at % align) % align;
    while (pad) {
        size_t k = pad < sizeof zeros ? (size_t)pad : sizeof zeros;
        put(s, zeros, k);
        pad -= k;
    }
}

static void emit(gguf_writer *w, sink *s) {
    uint32_t version = 3;
    uint64_t nt = (uint64_t)w->n_tensors, nk = (uint64_t)w->n_kv, at = 0, off = 0;
    put(s, "GGUF", 4);
    put(s, &version, 4);
    put(s, &nt, 8);
    put(s, &nk, 8);
    put(s, w->meta, w->meta_len);
    at = 24 + w->meta_len;
    for (int i = 0; i < w->n_tensors; i++) {
        const struct gguf_wtensor *t = &w->tensors[i];
        uint64_t len = strlen(t->name);
        uint32_t nd = (uint32_t)t->n_dims;
        put(s, &len, 8);
        put(s, t->name, (size_t)len);
        put(s, &nd, 4);
        put(s, t->ne, 8 * nd);
        put(s, &t->type, 4);
        put(s, &off, 8);
        at += 8 + len + 4 + 8 * nd + 4 + 8;
        off += t->n_bytes + (w->alignment - t->n_bytes % w->alignment) % w->alignment;
    }
    if (!w->n_tensors) return;
    put_pad(s, at, w->alignment);
    for (int i = 0; i < w->n_tensors; i++) {
        put(s, w->tensors[i].data, w->tensors[i].n_bytes);
        put_pad(s, w->tensors[i].n_bytes, w->alignment);
    }
}

int gguf_write_file(gguf_writer *w, const char *path, moe_error *err) {
    if (w->failed) return moe_error_set(err, "%s: %s", path, w->err.msg);
    sink s = {0};
    if (!(s.f = fopen(path, "wb"))) return moe_error_set(err, "%s: cannot create: %s", path, strerror(errno));
    emit(w, &s);
    int bad = s.failed;
    int e = errno;
    if (fclose(s.f) != 0 && !bad) { bad = 1; e = errno; }
    if (bad) return moe_error_set(err, "%s: write failed: %s", path, strerror(e));
    return MOE_OK;
}

int gguf_write_buffer(gguf_writer *w, uint8_t **out, size_t *len, moe_error *err) {
    *out = NULL;
    *len = 0;
    if (w->failed) return moe_error_set(err, "%s", w->err.msg);
    sink s = {0};
    emit(w, &s);
    if (s.failed) { free(s.buf); return moe_error_set(err, "out of memory writing a GGUF buffer"); }
    if (!s.buf && !(s.buf = malloc(1))) return moe_error_set(err, "out of memory writing a GGUF buffer");
    *out = s.buf;
    *len = s.len;
    return MOE_OK;
}
