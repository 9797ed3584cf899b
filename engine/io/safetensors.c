/* safetensors.c - parse, validate and memory-map safetensors files (see safetensors.h). */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json_util.h"

#define ST_MAX_HEADER (100u << 20)   /* the reference implementation's limit */
#define ST_MAX_TENSORS (1 << 20)     /* V3 has 91,991; millions is not a real checkpoint */
#define ST_MAX_SHARDS 100000

/* ------------------------------------------------------------------ dtypes */

static const struct { const char *name; size_t size; } dtype_info[ST_N_DTYPES] = {
    [ST_F64] = {"F64", 8}, [ST_F32] = {"F32", 4}, [ST_F16] = {"F16", 2}, [ST_BF16] = {"BF16", 2},
    [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1}, [ST_I64] = {"I64", 8},
    [ST_I32] = {"I32", 4}, [ST_I16] = {"I16", 2}, [ST_I8] = {"I8", 1}, [ST_U64] = {"U64", 8},
    [ST_U32] = {"U32", 4}, [ST_U16] = {"U16", 2}, [ST_U8] = {"U8", 1}, [ST_BOOL] = {"BOOL", 1},
};

const char *st_dtype_name(st_dtype dt) { return dt < ST_N_DTYPES ? dtype_info[dt].name : "?"; }
size_t st_dtype_size(st_dtype dt) { return dt < ST_N_DTYPES ? dtype_info[dt].size : 0; }

int st_dtype_parse(const char *s) {
    for (int i = 0; i < ST_N_DTYPES; i++)
        if (!strcmp(s, dtype_info[i].name)) return i;
    return -1;
}

/* ------------------------------------------------------------------ name hash */

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;   /* FNV-1a */
    while (*s) h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    return h;
}

static int hash_build(st_set *s, moe_error *err) {
    free(s->hash);
    int cap = 16;
    while (cap < 2 * s->n_tensors) cap *= 2;
    s->hash = malloc(sizeof(int) * (size_t)cap);
    if (!s->hash) return moe_error_set(err, "out of memory for the tensor table");
    s->hash_cap = cap;
    for (int i = 0; i < cap; i++) s->hash[i] = -1;
    for (int i = 0; i < s->n_tensors; i++) {
        uint64_t h = hash_str(s->tensors[i].name) & (uint64_t)(cap - 1);
        while (s->hash[h] >= 0) {
            if (!strcmp(s->tensors[s->hash[h]].name, s->tensors[i].name))
                return moe_error_set(err, "%s: tensor \"%s\" appears twice", st_tensor_path(s, &s->tensors[i]),
                                     s->tensors[i].name);
            h = (h + 1) & (uint64_t)(cap - 1);
        }
        s->hash[h] = i;
    }
    return MOE_OK;
}

const st_tensor *st_find(const st_set *s, const char *name) {
    if (!s->hash) return NULL;
    uint64_t h = hash_str(name) & (uint64_t)(s->hash_cap - 1);
    while (s->hash[h] >= 0) {
        if (!strcmp(s->tensors[s->hash[h]].name, name)) return &s->tensors[s->hash[h]];
        h = (h + 1) & (uint64_t)(s->hash_cap - 1);
    }
    return NULL;
}

void st_tensor_release(st_set *s, const st_tensor *t) {
    st_tensor *own = &s->tensors[t - s->tensors];
    own->released = 1;
    if (!s->files[t->file].map || t->nbytes == 0) return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), lo = (uintptr_t)t->data, hi = lo + t->nbytes;
    lo = (lo + page - 1) / page * page;          /* whole pages only: neighbours keep theirs */
    hi = hi / page * page;
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

const char *st_tensor_path(const st_set *s, const st_tensor *t) {
    return (t->file >= 0 && t->file < s->n_files) ? s->files[t->file].path : "?";
}

/* ------------------------------------------------------------------ header parsing */

typedef struct { uint64_t begin, end; int idx; } range;

static int cmp_range(const void *a, const void *b) {
    const range *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end < y->end ? -1 : x->end > y->end);
}

static int parse_entry(st_tensor *t, const char *name, const json_t *v, const uint8_t *data, uint64_t data_len,
                       range *r, const char *path, moe_error *err) {
    if (!json_is_object(v)) return moe_error_set(err, "%s: header entry \"%s\" is not an object", path, name);
    const json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
                 *off = json_object_get(v, "data_offsets");
    if (!json_is_string(dt) || !json_is_array(shape) || !json_is_array(off) || json_array_size(off) != 2)
        return moe_error_set(err, "%s: tensor \"%s\" needs string \"dtype\", array \"shape\" and 2-element \"data_offsets\"",
                             path, name);
    int d = st_dtype_parse(json_string_value(dt));
    if (d < 0) return moe_error_set(err, "%s: tensor \"%s\" has unknown dtype \"%s\"", path, name, json_string_value(dt));
    t->dtype = (st_dtype)d;
    size_t nd = json_array_size(shape);
    if (nd > ST_MAX_DIMS) return moe_error_set(err, "%s: tensor \"%s\" has %zu dimensions (max %d)", path, name, nd, ST_MAX_DIMS);
    t->ndim = (int)nd;
    uint64_t numel = 1;
    for (size_t i = 0; i < nd; i++) {
        const json_t *x = json_array_get(shape, i);
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > (1ll << 40))
            return moe_error_set(err, "%s: tensor \"%s\" has an invalid shape", path, name);
        t->shape[i] = json_integer_value(x);
        if (t->shape[i] && numel > (UINT64_MAX >> 8) / (uint64_t)t->shape[i])
            return moe_error_set(err, "%s: tensor \"%s\" shape overflows", path, name);
        numel *= (uint64_t)t->shape[i];
    }
    t->numel = (int64_t)numel;
    const json_t *b = json_array_get(off, 0), *e = json_array_get(off, 1);
    if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 ||
        json_integer_value(e) < json_integer_value(b))
        return moe_error_set(err, "%s: tensor \"%s\" has invalid data_offsets", path, name);
    r->begin = (uint64_t)json_integer_value(b);
    r->end = (uint64_t)json_integer_value(e);
    if (r->end > data_len)
        return moe_error_set(err, "%s: tensor \"%s\" data_offsets [%llu, %llu) lie outside the %llu-byte data buffer",
                             path, name, (unsigned long long)r->begin, (unsigned long long)r->end,
                             (unsigned long long)data_len);
    uint64_t want = numel * st_dtype_size(t->dtype);
    if (r->end - r->begin != want)
        return moe_error_set(err, "%s: tensor \"%s\" has %llu bytes but shape and dtype %s need %llu", path, name,
                             (unsigned long long)(r->end - r->begin), st_dtype_name(t->dtype), (unsigned long long)want);
    t->data = data + r->begin;
    t->nbytes = (size_t)want;
    return MOE_OK;
}

/* Appends the tensors of one file (buf, size) to s; file index fi. */
static int parse_file(st_set *s, const uint8_t *buf, size_t size, int fi, const char *path, moe_error *err) {
    if (size < 8) return moe_error_set(err, "%s: file is %zu bytes, too short for a safetensors header", path, size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | buf[i];
    if (n > ST_MAX_HEADER)
        return moe_error_set(err, "%s: header length %llu exceeds the 100 MB limit", path, (unsigned long long)n);
    if (n > size - 8)
        return moe_error_set(err, "%s: header length %llu is beyond the end of the %zu-byte file (truncated?)", path,
                             (unsigned long long)n, size);
    json_error_t je;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)n, JSON_REJECT_DUPLICATES, &je);
    if (!root) return moe_error_set(err, "%s: invalid header JSON at column %d: %s", path, je.column, je.text);
    int rc = MOE_FAIL;
    range *ranges = NULL;
    if (!json_is_object(root)) { moe_error_set(err, "%s: header is not a JSON object", path); goto done; }
    size_t count = json_object_size(root);
    if (count > ST_MAX_TENSORS || (size_t)s->n_tensors + count > ST_MAX_TENSORS) {
        moe_error_set(err, "%s: header lists %zu tensors, more than the limit of %d", path, count, ST_MAX_TENSORS);
        goto done;
    }
    st_tensor *grown = realloc(s->tensors, sizeof(st_tensor) * (s->n_tensors + count + 1));
    ranges = malloc(sizeof(range) * (count + 1));
    if (!grown || !ranges) {
        if (grown) s->tensors = grown;
        moe_error_set(err, "%s: out of memory for %zu tensors", path, count);
        goto done;
    }
    s->tensors = grown;
    const uint8_t *data = buf + 8 + n;
    uint64_t data_len = size - 8 - n;
    int nr = 0;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(v)) { moe_error_set(err, "%s: __metadata__ is not an object", path); goto done; }
            continue;
        }
        st_tensor *t = &s->tensors[s->n_tensors];
        memset(t, 0, sizeof *t);
        t->file = fi;
        if (parse_entry(t, key, v, data, data_len, &ranges[nr], path, err)) goto done;
        t->name = strdup(key);
        if (!t->name) { moe_error_set(err, "out of memory"); goto done; }
        ranges[nr].idx = s->n_tensors;
        nr++;
        s->n_tensors++;
    }
    qsort(ranges, (size_t)nr, sizeof(range), cmp_range);
    /* against the furthest end so far, not just the previous range: an empty tensor
     * sorted between two overlapping ones must not hide the overlap */
    int far = -1;
    for (int i = 0; i < nr; i++) {
        if (ranges[i].end == ranges[i].begin) continue;   /* empty: holds no bytes */
        if (far >= 0 && ranges[i].begin < ranges[far].end) {
            moe_error_set(err, "%s: tensors \"%s\" and \"%s\" overlap in the data buffer", path,
                          s->tensors[ranges[far].idx].name, s->tensors[ranges[i].idx].name);
            goto done;
        }
        if (far < 0 || ranges[i].end > ranges[far].end) far = i;
    }
    rc = MOE_OK;
done:
    free(ranges);
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------------------ files */

/* Appends a zeroed file slot named `path` (owned copy) to s, or NULL with an error. */
static st_file *file_slot(st_set *s, const char *path, moe_error *err) {
    if (s->n_files >= ST_MAX_SHARDS) { moe_error_set(err, "%s: too many shards", path); return NULL; }
    st_file *grown = realloc(s->files, sizeof(st_file) * (s->n_files + 1));
    if (!grown) { moe_error_set(err, "out of memory"); return NULL; }
    s->files = grown;
    st_file *f = &s->files[s->n_files];
    memset(f, 0, sizeof *f);
    if (!(f->path = strdup(path))) { moe_error_set(err, "out of memory"); return NULL; }
    s->n_files++;
    return f;
}

static int add_file(st_set *s, const char *path, moe_error *err) {
    st_file *f = file_slot(s, path, err);
    if (!f) return MOE_FAIL;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return moe_error_set(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return moe_error_set(err, "%s: not a regular file", path);
    }
    f->size = (size_t)st.st_size;
    if (f->size > 0) {
        f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (f->map == MAP_FAILED) {
            f->map = NULL;
            close(fd);
            return moe_error_set(err, "%s: mmap failed: %s", path, strerror(errno));
        }
    }
    close(fd);
    return parse_file(s, f->map, f->size, s->n_files - 1, path, err);
}

int st_open_file(st_set *s, const char *path, moe_error *err) {
    memset(s, 0, sizeof *s);
    if (add_file(s, path, err) || hash_build(s, err)) { st_close(s); return MOE_FAIL; }
    return MOE_OK;
}

int st_add_buffer(st_set *s, const void *buf, size_t size, const char *path, moe_error *err) {
    st_file *f = file_slot(s, path, err);
    if (!f) return MOE_FAIL;
    f->size = size;                   /* map stays NULL: not owned */
    return parse_file(s, buf, size, s->n_files - 1, path, err);
}

int st_parse_buffer(st_set *s, const void *buf, size_t size, const char *path, moe_error *err) {
    memset(s, 0, sizeof *s);
    if (st_add_buffer(s, buf, size, path, err) || hash_build(s, err)) {
        st_close(s);
        return MOE_FAIL;
    }
    return MOE_OK;
}

int st_apply_index(st_set *s, const char *dir, const char *text, size_t len, const char *index_path, moe_error *err) {
    json_t *root = json_parse_text(text, len, index_path, err);
    if (!root) return MOE_FAIL;
    int rc = MOE_FAIL;
    const json_t *wm = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(wm)) { moe_error_set(err, "%s: missing \"weight_map\" object", index_path); goto done; }
    if (json_object_size(wm) > ST_MAX_TENSORS) {
        moe_error_set(err, "%s: weight_map lists %zu tensors, more than the limit of %d", index_path,
                      json_object_size(wm), ST_MAX_TENSORS);
        goto done;
    }
    /* open every distinct shard once, in order of first mention */
    const char *name;
    json_t *v;
    json_object_foreach((json_t *)wm, name, v) {
        if (!json_is_string(v)) { moe_error_set(err, "%s: weight_map[\"%s\"] is not a string", index_path, name); goto done; }
        const char *shard = json_string_value(v);
        if (strchr(shard, '/') || !strcmp(shard, "..") || !shard[0] || strlen(shard) != json_string_length(v)) {
            moe_error_set(err, "%s: shard name \"%s\" must be a plain file name", index_path, shard);
            goto done;
        }
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", dir, shard) >= (int)sizeof path) {
            moe_error_set(err, "%s: shard name \"%.100s...\" is too long", index_path, shard);
            goto done;
        }
        int known = 0;
        for (int i = 0; i < s->n_files && !known; i++) known = !strcmp(s->files[i].path, path);
        if (known) continue;
        if (access(path, R_OK) != 0) {
            moe_error_set(err, "%s: shard \"%s\" named in the index is missing (%s)", index_path, shard, strerror(errno));
            goto done;
        }
        if (add_file(s, path, err)) goto done;
    }
    if (hash_build(s, err)) goto done;
    /* every indexed name must be in the shard the index names */
    json_object_foreach((json_t *)wm, name, v) {
        const st_tensor *t = st_find(s, name);
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, json_string_value(v));
        if (!t || strcmp(st_tensor_path(s, t), path)) {
            moe_error_set(err, "%s: tensor \"%s\" is not in shard \"%s\"", index_path, name, json_string_value(v));
            goto done;
        }
    }
    rc = MOE_OK;
done:
    json_decref(root);
    return rc;
}

static int open_index(st_set *s, const char *dir, const char *index_path, moe_error *err) {
    char *text;
    size_t len;
    if (file_read_all(index_path, 256u << 20, &text, &len, err)) return MOE_FAIL;
    int rc = st_apply_index(s, dir, text, len, index_path, err);
    free(text);
    return rc;
}

int st_open_dir(st_set *s, const char *dir, moe_error *err) {
    memset(s, 0, sizeof *s);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    int rc;
    if (access(path, F_OK) == 0) {
        rc = open_index(s, dir, path, err);
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (access(path, F_OK) != 0)
            return moe_error_set(err, "%s: no model.safetensors or model.safetensors.index.json", dir);
        rc = add_file(s, path, err);
        if (!rc) rc = hash_build(s, err);
    }
    if (rc) st_close(s);
    return rc;
}

void st_close(st_set *s) {
    for (int i = 0; i < s->n_files; i++) {
        if (s->files[i].map) munmap(s->files[i].map, s->files[i].size);
        free(s->files[i].path);
    }
    for (int i = 0; i < s->n_tensors; i++) free(s->tensors[i].name);
    free(s->files);
    free(s->tensors);
    free(s->hash);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------ writing */

int st_write(const char *path, const st_write_tensor *t, int n, moe_error *err) {
    json_t *hdr = json_object();
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        uint64_t numel = 1;
        json_t *shape = json_array();
        for (int d = 0; d < t[i].ndim; d++) {
            numel *= (uint64_t)t[i].shape[d];
            json_array_append_new(shape, json_integer(t[i].shape[d]));
        }
        uint64_t nb = numel * st_dtype_size(t[i].dtype);
        json_t *e = json_pack("{s:s, s:o, s:[I,I]}", "dtype", st_dtype_name(t[i].dtype), "shape", shape,
                              "data_offsets", (json_int_t)off, (json_int_t)(off + nb));
        json_object_set_new(hdr, t[i].name, e);
        off += nb;
    }
    char *text = json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(hdr);
    if (!text) return moe_error_set(err, "%s: cannot build header", path);
    size_t hl = strlen(text), padded = (hl + 7) / 8 * 8;
    FILE *f = fopen(path, "wb");
    if (!f) { free(text); return moe_error_set(err, "%s: cannot create: %s", path, strerror(errno)); }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(text, 1, hl, f) == hl;
    for (size_t i = hl; i < padded && ok; i++) ok = fputc(' ', f) != EOF;
    free(text);
    for (int i = 0; i < n && ok; i++) {
        uint64_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) numel *= (uint64_t)t[i].shape[d];
        size_t nb = (size_t)(numel * st_dtype_size(t[i].dtype));
        ok = nb == 0 || fwrite(t[i].data, 1, nb, f) == nb;
    }
    if (fclose(f) != 0) ok = 0;
    return ok ? MOE_OK : moe_error_set(err, "%s: write failed", path);
}
