/* cmd_mkckpt.c - `moe mkckpt`: write a random-weight checkpoint of any
 * DeepSeek-V3-family shape in exact Hugging Face layout, or (--plan) print its
 * memory arithmetic without writing.
 *
 * Legend
 *   plan      tools/moe/ckpt_plan.c: names, shapes, init of every tensor, in the
 *             order of tools/reference/mkckpt.py
 *   values    N(0,1) is approximated by the Irwin-Hall sum of four 16-bit
 *             uniforms (one xoshiro256** draw per value, |z| <= 3.46): linear
 *             N(0, 1/fan_in) (o_proj, down_proj halved), embeddings N(0,1), norms
 *             1 + 0.15 N(0,1), e_score_correction_bias clip(0.1 N, +-0.25) as F32.
 *             Each row has its own generator seeded from (seed, tensor name, row),
 *             so values do not depend on the thread count, the dtype or the
 *             sharding; the MTP copies of embed/head equal the originals.
 *   stream    each thread claims whole tensors in turn, generates them in slabs
 *             of rows (<= 32 MiB) and pwrite()s them at offsets computed up
 *             front: memory stays O(threads x slab), no barrier per tensor.
 *   layout    per file, tensors ordered by decreasing alignment (F32, then
 *             BF16/F16, then F8_E4M3) in plan order; header padded with spaces
 *             so the data starts at a multiple of 64: every tensor is aligned
 *             to its element size. FP8: <name>_scale_inv F32 [ceil(r/b), ceil(c/b)].
 *   shards    above --shard-gb (default 4 GB per file) the tensors go to
 *             model-0000k-of-0000n.safetensors + model.safetensors.index.json.
 */
#include <dirent.h>
#include <stdatomic.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "ckpt_plan.h"
#include "cli.h"
#include "commands.h"
#include "json_util.h"
#include "kernels.h"
#include "threadpool.h"

#define SLAB_BYTES (32u << 20)

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe mkckpt (--shape NAME | --config FILE) -o DIR [options]\n"
            "       moe mkckpt (--shape NAME | --config FILE) --plan [--dtype D]\n"
            "\n"
            "Writes a random-weight checkpoint (config.json + model.safetensors, or shards +\n"
            "model.safetensors.index.json) in exact Hugging Face DeepseekV3 layout, streaming\n"
            "tensors to disk. With --plan, prints parameters, bytes per format, bytes read per\n"
            "decoded token and KV cache per token, and writes nothing.\n"
            "\n"
            "options:\n"
            "  --shape NAME        %s\n"
            "  --config FILE       a config.json; with --shape, its fields override the shape's\n"
            "  --dtype D           f32 | bf16 (default) | f16 | fp8 (E4M3 projections + F32 block scales)\n"
            "  --fp8-block N       fp8 block edge (default 128, as released)\n"
            "  --seed S            default 0\n"
            "  -o, --out DIR       output directory (created; stale *.safetensors removed)\n"
            "  --shard-gb X        start a new shard file above X GB (default 4)\n"
            "  -t, --threads N     filling threads (default: one per core)\n"
            "  --plan              print the memory plan only\n"
            "  -q, --quiet\n"
            "  -h, --help\n",
            ckpt_shape_names());
}

/* ------------------------------------------------------------------ random values */

typedef struct { uint64_t s[4]; } xoshiro;

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t xoshiro_next(xoshiro *g) {
    uint64_t *s = g->s, r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
    return r;
}

static void xoshiro_seed(xoshiro *g, uint64_t key) {
    for (int i = 0; i < 4; i++) g->s[i] = splitmix64(&key);
}

/* Approximately N(0,1): Irwin-Hall sum of four 16-bit uniforms, scaled to unit variance. */
static inline float approx_normal(xoshiro *g) {
    uint64_t r = xoshiro_next(g);
    int64_t sum = (int64_t)(r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
    return (float)(sum - 131070) * (1.7320508f / 65536.0f);
}

/* Row r of tensor t as f32. */
static void gen_row(const ckpt_tensor *t, uint64_t seed, int64_t r, float *out) {
    xoshiro g;
    uint64_t k = seed * 0x9e3779b97f4a7c15ull ^ t->seed_key;
    k = splitmix64(&k) + (uint64_t)r * 0xd1b54a32d192ed03ull;
    xoshiro_seed(&g, k);
    int64_t n = t->cols;
    switch (t->init) {
    case INIT_EMBED:
        for (int64_t c = 0; c < n; c++) out[c] = approx_normal(&g);
        break;
    case INIT_NORM:
        for (int64_t c = 0; c < n; c++) out[c] = 1.0f + 0.15f * approx_normal(&g);
        break;
    case INIT_LINEAR: {
        float s = t->gain / sqrtf((float)t->cols);
        for (int64_t c = 0; c < n; c++) out[c] = s * approx_normal(&g);
        break;
    }
    case INIT_BIAS:
        for (int64_t c = 0; c < n; c++) out[c] = fmaxf(-0.25f, fminf(0.25f, 0.1f * approx_normal(&g)));
        break;
    }
}

/* ------------------------------------------------------------------ encodings */

/* f32 -> bf16, round to nearest even (the generator never makes NaN). */
static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static uint16_t f32_to_f16(float f) {
    _Float16 h = (_Float16)f;          /* round to nearest even */
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}

/* float8 e4m3fn, round to nearest even, saturating at +-448 (0x7E), by bit arithmetic
 * (checked equal to a frexpf/nearbyintf version on all 2^32 inputs). */
static inline uint8_t f32_to_e4m3(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    uint8_t sign = (uint8_t)(u >> 24 & 0x80);
    uint32_t a = u & 0x7fffffffu, code;
    if (a > 0x7f800000u) return 0x7f;                                    /* NaN */
    if (a >= 0x43e00000u) return sign | 0x7e;                            /* >= 448: saturate */
    if (a < 0x3c800000u) {                                               /* < 2^-6: subnormal, steps of 2^-9 */
        float f, t;
        memcpy(&f, &a, 4);
        t = f * 512.0f + 8388608.0f;                                     /* the FPU rounds to nearest even */
        memcpy(&code, &t, 4);
        code -= 0x4b000000u;                                             /* 8 = the smallest normal, 0x08 */
    } else {
        code = ((a + 0x7ffffu + ((a >> 20) & 1u)) >> 20) - (120u << 3);  /* keep 3 mantissa bits, RNE; rebias 127 -> 7 */
        if (code > 0x7e) code = 0x7e;
    }
    return (uint8_t)(sign | code);
}

/* ------------------------------------------------------------------ file plan */

/* One tensor in one file: a plan entry, or the FP8 scale of one. */
typedef struct {
    int t;                /* index into the plan */
    int is_scale;
    int file;
    st_dtype dtype;
    uint64_t offset, nbytes;
} entry;

typedef struct {
    ckpt_plan plan;
    ckpt_dtype dtype;
    int br, bc;
    uint64_t seed;
    entry *e; int n_e;
    int n_files;
} writer;

static st_dtype entry_dtype(const writer *w, const ckpt_tensor *t, int is_scale) {
    if (is_scale || t->init == INIT_BIAS) return ST_F32;
    switch (w->dtype) {
    case CK_F32: return ST_F32;
    case CK_F16: return ST_F16;
    case CK_FP8: return t->projection && t->ndim == 2 ? ST_F8_E4M3 : ST_BF16;
    default: return ST_BF16;
    }
}

static int writer_layout(writer *w, uint64_t shard_bytes, moe_error *err) {
    const ckpt_plan *p = &w->plan;
    w->e = calloc((size_t)p->n * 2, sizeof(entry));
    if (!w->e) return moe_error_set(err, "out of memory");
    uint64_t in_file = 0;
    int file = 0;
    for (int i = 0; i < p->n; i++) {
        const ckpt_tensor *t = &p->t[i];
        uint64_t b = ckpt_tensor_bytes(t, w->dtype, w->br, w->bc) + ckpt_scale_bytes(t, w->dtype, w->br, w->bc);
        if (in_file > 0 && in_file + b > shard_bytes) { file++; in_file = 0; }
        in_file += b;
        entry *e = &w->e[w->n_e++];
        *e = (entry){ i, 0, file, entry_dtype(w, t, 0), 0, ckpt_tensor_bytes(t, w->dtype, w->br, w->bc) };
        if (ckpt_scale_bytes(t, w->dtype, w->br, w->bc)) {
            e = &w->e[w->n_e++];
            *e = (entry){ i, 1, file, ST_F32, 0, ckpt_scale_bytes(t, w->dtype, w->br, w->bc) };
        }
    }
    w->n_files = file + 1;
    /* offsets: per file, by decreasing element size, then plan order */
    for (int f = 0; f < w->n_files; f++) {
        uint64_t off = 0;
        for (int size = 4; size >= 1; size /= 2)
            for (int k = 0; k < w->n_e; k++)
                if (w->e[k].file == f && st_dtype_size(w->e[k].dtype) == (size_t)size) {
                    w->e[k].offset = off;
                    off += w->e[k].nbytes;
                }
    }
    return MOE_OK;
}

static void file_name(const writer *w, int f, char *buf, size_t n) {
    if (w->n_files == 1) snprintf(buf, n, "model.safetensors");
    else snprintf(buf, n, "model-%05d-of-%05d.safetensors", f + 1, w->n_files);
}

/* JSON header of file f, padded so that 8 + its length is a multiple of 64. */
static char *file_header(const writer *w, int f, const char *meta_json, size_t *len) {
    size_t cap = 4096, n = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
#define EMIT(...)                                                                                  \
    do {                                                                                           \
        for (;;) {                                                                                 \
            int len_ = snprintf(s + n, cap - n, __VA_ARGS__);                                         \
            if (len_ >= 0 && (size_t)len_ < cap - n) { n += (size_t)len_; break; }                          \
            char *g = realloc(s, cap *= 2);                                                        \
            if (!g) { free(s); return NULL; }                                                      \
            s = g;                                                                                 \
        }                                                                                          \
    } while (0)
    EMIT("{\"__metadata__\":%s", meta_json);
    for (int k = 0; k < w->n_e; k++) {
        const entry *e = &w->e[k];
        if (e->file != f) continue;
        const ckpt_tensor *t = &w->plan.t[e->t];
        if (e->is_scale)
            EMIT(",\"%s_scale_inv\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],\"data_offsets\":[%llu,%llu]}", t->name,
                 (long long)((t->rows + w->br - 1) / w->br), (long long)((t->cols + w->bc - 1) / w->bc),
                 (unsigned long long)e->offset, (unsigned long long)(e->offset + e->nbytes));
        else if (t->ndim == 1)
            EMIT(",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld],\"data_offsets\":[%llu,%llu]}", t->name,
                 st_dtype_name(e->dtype), (long long)t->cols, (unsigned long long)e->offset,
                 (unsigned long long)(e->offset + e->nbytes));
        else
            EMIT(",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld,%lld],\"data_offsets\":[%llu,%llu]}", t->name,
                 st_dtype_name(e->dtype), (long long)t->rows, (long long)t->cols, (unsigned long long)e->offset,
                 (unsigned long long)(e->offset + e->nbytes));
    }
    EMIT("}");
    while ((8 + n) % 64) EMIT(" ");
#undef EMIT
    *len = n;
    return s;
}

/* ------------------------------------------------------------------ parallel fill */

typedef struct {
    const writer *w;
    const ckpt_tensor *t;
    st_dtype dtype;
    int64_t r0, r1;          /* rows of this slab */
    int unit;                /* rows per work unit (FP8: block rows) */
    void *out;               /* slab bytes, row-major from r0 */
    float *scales;           /* FP8: [units, ceil(cols/bc)] */
    float **tmp;             /* per thread: [unit, cols] f32 */
} fill_job;

static void fill_unit(const fill_job *j, int64_t u, float *tmp) {
    const ckpt_tensor *t = j->t;
    int64_t cols = t->cols, ra = j->r0 + u * j->unit, rb = ra + j->unit < j->r1 ? ra + j->unit : j->r1;
    for (int64_t r = ra; r < rb; r++) gen_row(t, j->w->seed, r, tmp + (r - ra) * cols);
    size_t first = (size_t)(ra - j->r0) * (size_t)cols, count = (size_t)(rb - ra) * (size_t)cols;
    switch (j->dtype) {
    case ST_F32: memcpy((float *)j->out + first, tmp, count * 4); break;
    case ST_BF16: {
        uint16_t *o = (uint16_t *)j->out + first;
        for (size_t i = 0; i < count; i++) o[i] = to_bf16(tmp[i]);
        break;
    }
    case ST_F16: {
        uint16_t *o = (uint16_t *)j->out + first;
        for (size_t i = 0; i < count; i++) o[i] = f32_to_f16(tmp[i]);
        break;
    }
    case ST_F8_E4M3: {
        int bc = j->w->bc, nbc = (int)((cols + bc - 1) / bc);
        uint8_t *o = (uint8_t *)j->out + first;
        float *sc = j->scales + (size_t)u * nbc;
        for (int b = 0; b < nbc; b++) {
            int64_t c0 = (int64_t)b * bc, c1 = c0 + bc < cols ? c0 + bc : cols;
            float amax = 0;
            for (int64_t r = 0; r < rb - ra; r++)
                for (int64_t c = c0; c < c1; c++) amax = fmaxf(amax, fabsf(tmp[r * cols + c]));
            float s = fmaxf(amax, 1e-12f) / 448.0f, inv = 1.0f / s;
            sc[b] = s;
            for (int64_t r = 0; r < rb - ra; r++)
                for (int64_t c = c0; c < c1; c++) o[r * cols + c] = f32_to_e4m3(tmp[r * cols + c] * inv);
        }
        break;
    }
    default: break;
    }
}

static void fill_worker(void *arg, int id, int nth) {
    const fill_job *j = arg;
    int64_t units = (j->r1 - j->r0 + j->unit - 1) / j->unit;
    for (int64_t u = units * id / nth; u < units * (id + 1) / nth; u++) fill_unit(j, u, j->tmp[id]);
}

/* ------------------------------------------------------------------ writing */

static int pwrite_all(int fd, const void *buf, size_t n, uint64_t off, const char *path, moe_error *err) {
    const char *p = buf;
    while (n) {
        ssize_t k = pwrite(fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return moe_error_set(err, "%s: write failed: %s", path, k < 0 ? strerror(errno) : "no progress");
        p += k; n -= (size_t)k; off += (uint64_t)k;
    }
    return MOE_OK;
}

typedef struct {
    threadpool *pool;
    int n_threads;
    void **slab;                /* per thread: one slab of output bytes */
    float **scales;             /* per thread: FP8 scales of one slab */
    float **tmp;                /* per thread: [unit, cols] f32 */
    _Atomic uint64_t done;      /* bytes written */
    uint64_t total;
    double t0, last;
    int quiet;
} stream;

/* Rows per slab of entry e: <= SLAB_BYTES, whole FP8 block rows. */
static int64_t slab_rows_of(const writer *w, const entry *e) {
    const ckpt_tensor *t = &w->plan.t[e->t];
    int unit = e->dtype == ST_F8_E4M3 ? w->br : 1;
    int64_t rows = (int64_t)SLAB_BYTES / (t->cols * (int64_t)st_dtype_size(e->dtype)) / unit * unit;
    return rows < unit ? unit : rows;
}

/* Writes tensor e (and its FP8 scales) slab by slab, on the calling thread `id`. */
static int write_entry(writer *w, stream *st, int id, const entry *e, int fd, uint64_t data0, const char *path,
                       moe_error *err) {
    const ckpt_tensor *t = &w->plan.t[e->t];
    if (e->is_scale) return MOE_OK;      /* written together with its weight */
    int fp8 = e->dtype == ST_F8_E4M3;
    int unit = fp8 ? w->br : 1;
    int64_t row_bytes = t->cols * (int64_t)st_dtype_size(e->dtype);
    int64_t slab_rows = slab_rows_of(w, e);
    const entry *scale_e = fp8 ? e + 1 : NULL;
    int nbc = (int)((t->cols + w->bc - 1) / w->bc);
    for (int64_t r0 = 0; r0 < t->rows; r0 += slab_rows) {
        int64_t r1 = r0 + slab_rows < t->rows ? r0 + slab_rows : t->rows;
        fill_job j = { w, t, e->dtype, r0, r1, unit, st->slab[id], st->scales[id], st->tmp + id };
        fill_worker(&j, 0, 1);
        size_t n = (size_t)((r1 - r0) * row_bytes);
        if (pwrite_all(fd, st->slab[id], n, data0 + e->offset + (uint64_t)r0 * row_bytes, path, err)) return MOE_FAIL;
        if (fp8) {
            size_t sb = (size_t)((r1 - r0 + unit - 1) / unit) * nbc * 4;
            if (pwrite_all(fd, st->scales[id], sb, data0 + scale_e->offset + (uint64_t)(r0 / unit) * nbc * 4, path, err))
                return MOE_FAIL;
            st->done += sb;
        }
        st->done += n;
        double now = cli_now();
        if (id == 0 && !st->quiet && now - st->last > 1.0) {
            st->last = now;
            uint64_t done = st->done;
            fprintf(stderr, "\rmkckpt: %.2f / %.2f GB, %.0f MB/s   ", done / 1e9, st->total / 1e9,
                    done / 1e6 / (now - st->t0));
        }
    }
    return MOE_OK;
}

/* The tensors of one file, shared out to the threads one whole tensor at a time
 * (no barrier per tensor: a thread claims the next entry when it is done). */
typedef struct {
    writer *w;
    stream *st;
    int file, fd;
    uint64_t data0;
    const char *path;
    _Atomic int next;
    _Atomic int failed;
    moe_error err;
} file_job;

static void file_worker(void *arg, int id, int nth) {
    file_job *j = arg;
    while (!j->failed) {
        int k = j->next++;
        if (k >= j->w->n_e) return;
        const entry *e = &j->w->e[k];
        if (e->file != j->file || e->is_scale) continue;
        moe_error err = {{0}};
        if (write_entry(j->w, j->st, id, e, j->fd, j->data0, j->path, &err)) {
            if (!j->failed++) j->err = err;
            return;
        }
    }
}

static int write_file(writer *w, stream *st, const char *dir, int f, const char *meta, moe_error *err) {
    char name[64], path[4096];
    file_name(w, f, name, sizeof name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    size_t hlen;
    char *hdr = file_header(w, f, meta, &hlen);
    if (!hdr) return moe_error_set(err, "out of memory");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { free(hdr); return moe_error_set(err, "%s: cannot create: %s", path, strerror(errno)); }
    uint64_t n8 = hlen;
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)(n8 >> (8 * i));
    int rc = pwrite_all(fd, lenb, 8, 0, path, err) || pwrite_all(fd, hdr, hlen, 8, path, err) ? MOE_FAIL : MOE_OK;
    free(hdr);
    if (rc == MOE_OK) {
        file_job j = { .w = w, .st = st, .file = f, .fd = fd, .data0 = 8 + hlen, .path = path };
        if (st->pool) threadpool_run(st->pool, file_worker, &j);
        else file_worker(&j, 0, 1);
        if (j.failed) { *err = j.err; rc = MOE_FAIL; }
    }
    if (close(fd) && rc == MOE_OK) rc = moe_error_set(err, "%s: close failed: %s", path, strerror(errno));
    return rc;
}

static int write_index(const writer *w, const char *dir, uint64_t total, moe_error *err) {
    char path[4096], name[64];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *fp = fopen(path, "w");
    if (!fp) return moe_error_set(err, "%s: cannot create: %s", path, strerror(errno));
    fprintf(fp, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n  \"weight_map\": {", (unsigned long long)total);
    for (int k = 0; k < w->n_e; k++) {
        const entry *e = &w->e[k];
        file_name(w, e->file, name, sizeof name);
        fprintf(fp, "%s\n    \"%s%s\": \"%s\"", k ? "," : "", w->plan.t[e->t].name, e->is_scale ? "_scale_inv" : "", name);
    }
    fprintf(fp, "\n  }\n}\n");
    if (fclose(fp)) return moe_error_set(err, "%s: write failed", path);
    return MOE_OK;
}

/* ------------------------------------------------------------------ config */

/* The config.json object: the shape's fields, overridden by --config's. */
static json_t *build_config(const char *shape, const char *config_path, ckpt_dtype dtype, int block, moe_error *err) {
    json_t *root = NULL;
    if (shape) {
        const char *txt = ckpt_shape_json(shape);
        if (!txt) {
            moe_error_set(err, "unknown shape \"%s\" (have %s)", shape, ckpt_shape_names());
            return NULL;
        }
        if (!(root = json_parse_text(txt, strlen(txt), shape, err))) return NULL;
    }
    if (config_path) {
        char *text;
        size_t len;
        if (file_read_all(config_path, 16u << 20, &text, &len, err)) { json_decref(root); return NULL; }
        json_t *c = json_parse_text(text, len, config_path, err);
        free(text);
        if (!c) { json_decref(root); return NULL; }
        if (!json_is_object(c)) {
            json_decref(c); json_decref(root);
            moe_error_set(err, "%s: top level must be a JSON object", config_path);
            return NULL;
        }
        if (root) { json_object_update(root, c); json_decref(c); }
        else root = c;
    }
    static const char *torch[] = {"float32", "bfloat16", "float16", "bfloat16"};
    json_object_set_new(root, "torch_dtype", json_string(torch[dtype]));
    if (dtype == CK_FP8) {
        json_t *q = json_pack("{s:s, s:s, s:s, s:[i,i]}", "activation_scheme", "dynamic", "fmt", "e4m3", "quant_method",
                              "fp8", "weight_block_size", block, block);
        json_object_set_new(root, "quantization_config", q);
    } else {
        json_object_del(root, "quantization_config");
    }
    return root;
}

/* ------------------------------------------------------------------ --plan */

static void print_count(FILE *f, const char *label, double v, const char *unit) {
    if (v >= 1e9) fprintf(f, "%s%.3f G%s", label, v / 1e9, unit);
    else if (v >= 1e6) fprintf(f, "%s%.3f M%s", label, v / 1e6, unit);
    else if (v >= 1e3) fprintf(f, "%s%.3f k%s", label, v / 1e3, unit);
    else fprintf(f, "%s%.0f %s", label, v, unit);
}

/* Bytes one element of t occupies in the engine's compute format (f32 / bf16 / q8): the
 * loader's own rule (weights_target) for t's kind, on a checkpoint stored as bf16. */
static double engine_elem_bytes(const ckpt_tensor *t, weights_dtype d) {
    if (t->ndim == 1) return 4;                      /* norms and biases are always f32 */
    mat_dtype md = weights_target(d == WEIGHTS_AUTO ? WEIGHTS_BF16 : d, layout_kind(t->role), MAT_BF16, t->cols);
    return (double)mat_row_bytes(md, (int)t->cols) / (double)t->cols;
}

enum { PART_ATTN, PART_ROUTER, PART_EXPERTS, PART_SHARED, PART_DENSE, PART_HEAD, PART_EMBED, PART_NORMS, N_PARTS };
static const char *part_names[N_PARTS] = {"attention", "router", "routed experts", "shared expert", "dense MLP",
                                          "lm_head", "embedding row", "norms"};

static int tensor_part(const ckpt_tensor *t) {
    if (t->use == USE_EXPERT) return PART_EXPERTS;
    if (t->use == USE_ROW) return PART_EMBED;
    if (t->ndim == 1) return PART_NORMS;
    if (strstr(t->name, "self_attn.")) return PART_ATTN;
    if (strstr(t->name, "mlp.gate.weight")) return PART_ROUTER;
    if (strstr(t->name, "shared_experts.")) return PART_SHARED;
    if (strstr(t->name, "lm_head")) return PART_HEAD;
    return PART_DENSE;
}

/* Elements read per decoded token from tensor t (main model only: MTP drafting not counted). */
static double active_elems(const ckpt_tensor *t, const moe_config *c) {
    double n = (double)t->rows * (double)t->cols;
    switch (t->use) {
    case USE_MTP: return 0;
    case USE_ROW: return (double)t->cols;
    case USE_EXPERT: return n * c->num_experts_per_tok / c->n_routed_experts;
    default: return n;
    }
}

static void print_plan(const char *what, const moe_config *c, const writer *w, FILE *f) {
    const ckpt_plan *p = &w->plan;
    double params = 0, params_mtp = 0, active = 0, part[N_PARTS] = {0};
    long n_scales = 0;
    for (int i = 0; i < p->n; i++) {
        const ckpt_tensor *t = &p->t[i];
        double n = (double)t->rows * (double)t->cols;
        params += n;
        if (t->use == USE_MTP) params_mtp += n;
        double a = active_elems(t, c);
        active += a;
        part[tensor_part(t)] += a;
        if (t->projection && t->ndim == 2) n_scales++;
    }
    int L = c->num_hidden_layers, n_mtp = c->num_nextn_predict_layers;
    fprintf(f, "%s: %s, V=%d H=%d, %d layers (%d dense) + %d MTP, %d heads, q_lora %d, kv_lora %d, "
               "E=%d top-%d + %d shared (width %d), dense width %d\n",
            what, c->model_type, c->vocab_size, c->hidden_size, L,
            c->n_routed_experts ? c->first_k_dense_replace : L, n_mtp, c->num_attention_heads, c->q_lora_rank,
            c->kv_lora_rank, c->n_routed_experts, c->num_experts_per_tok, c->n_shared_experts, c->moe_intermediate_size,
            c->intermediate_size);
    fprintf(f, "tensors: %d (+%ld FP8 scales with --dtype fp8)\n", p->n, n_scales);
    fprintf(f, "parameters: %.0f", params);
    print_count(f, " (", params, "");
    print_count(f, "; MTP ", params_mtp, ")\n");
    print_count(f, "active per decoded token: ", active, " params (main model; MTP drafting not counted)\n");
    for (int k = 0; k < N_PARTS; k++) {
        if (!part[k]) continue;
        fprintf(f, "  %-16s", part_names[k]);
        print_count(f, "", part[k], "");
        fprintf(f, "  (%.1f%%)\n", 100.0 * part[k] / active);
    }
    fprintf(f, "\nfile size by --dtype (written by mkckpt):\n");
    for (int d = 0; d < CK_N_DTYPES; d++) {
        double bytes = 0;
        for (int i = 0; i < p->n; i++)
            bytes += (double)(ckpt_tensor_bytes(&p->t[i], (ckpt_dtype)d, w->br, w->bc) +
                              ckpt_scale_bytes(&p->t[i], (ckpt_dtype)d, w->br, w->bc));
        fprintf(f, "  %-5s %10.3f GB%s\n", ckpt_dtype_name((ckpt_dtype)d), bytes / 1e9, d == (int)w->dtype ? "  <- --dtype" : "");
    }
    fprintf(f, "\nengine memory and weight bytes read per decoded token, by load format (moe --dtype):\n");
    fprintf(f, "  %-5s %12s %14s\n", "fmt", "resident", "read/token");
    weights_dtype fmts[4] = {WEIGHTS_F32, WEIGHTS_BF16, WEIGHTS_Q8, WEIGHTS_Q4};
    for (int k = 0; k < 4; k++) {
        double res = 0, rd = 0;
        for (int i = 0; i < p->n; i++) {
            const ckpt_tensor *t = &p->t[i];
            double eb = engine_elem_bytes(t, fmts[k]);
            res += eb * (double)t->rows * (double)t->cols;
            rd += eb * active_elems(t, c);
        }
        fprintf(f, "  %-5s %9.3f GB %11.2f MB\n", weights_dtype_name(fmts[k]), res / 1e9, rd / 1e6);
    }
    {   /* FP8 as stored (an engine computing on FP8 directly would read this) */
        double rd = 0;
        for (int i = 0; i < p->n; i++) {
            const ckpt_tensor *t = &p->t[i];
            double a = active_elems(t, c), n = (double)t->rows * (double)t->cols;
            if (n > 0 && a > 0)
                rd += a / n * (double)(ckpt_tensor_bytes(t, CK_FP8, w->br, w->bc) + ckpt_scale_bytes(t, CK_FP8, w->br, w->bc));
        }
        fprintf(f, "  %-5s %12s %11.2f MB   (FP8 as stored, for comparison)\n", "fp8", "-", rd / 1e6);
    }
    int width = c->kv_lora_rank + c->qk_rope_head_dim, layers = L + n_mtp;
    double per_tok = 4.0 * width * layers;
    int ctx = c->max_position_embeddings;
    fprintf(f, "\nKV cache per token: (kv_lora_rank %d + rope %d) x %d layers (incl. MTP) x 4 B (f32) = %.0f B"
               " (%.0f B in bf16)\n", c->kv_lora_rank, c->qk_rope_head_dim, layers, per_tok, per_tok / 2);
    fprintf(f, "KV cache at max_position_embeddings %d: %.3f GB f32 (for comparison, a full per-head K/V cache "
               "would be %.0f B per token in bf16)\n",
            ctx, per_tok * ctx / 1e9,
            2.0 * layers * c->num_attention_heads * (c->qk_nope_head_dim + c->qk_rope_head_dim + c->v_head_dim));
}

/* ------------------------------------------------------------------ directory */

static int make_dir(const char *dir, moe_error *err) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) && errno != EEXIST) return moe_error_set(err, "%s: cannot create: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) && errno != EEXIST) return moe_error_set(err, "%s: cannot create: %s", buf, strerror(errno));
    return MOE_OK;
}

static int is_stale(const char *n) {
    size_t l = strlen(n);
    return (l > 12 && !strcmp(n + l - 12, ".safetensors")) || !strcmp(n, "model.safetensors.index.json");
}

/* Bytes held by files this run will replace (counted as free space). */
static uint64_t stale_bytes(const char *dir, int remove) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    uint64_t total = 0;
    struct dirent *de;
    char path[4096];
    while ((de = readdir(d))) {
        if (!is_stale(de->d_name)) continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        struct stat sb;
        if (!stat(path, &sb)) total += (uint64_t)sb.st_size;
        if (remove) unlink(path);
    }
    closedir(d);
    return total;
}

/* ------------------------------------------------------------------ command */

int cmd_mkckpt(int argc, char **argv) {
    const char *shape = NULL, *config_path = NULL, *out = NULL;
    int dtype = CK_BF16, plan_only = 0, quiet = 0;
    long block = 128, threads = 0, seed = 0;
    double shard_gb = 4.0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "--shape")) { if (!(shape = cli_value(argc, argv, &i, "mkckpt"))) return 2; }
        else if (!strcmp(a, "--config")) { if (!(config_path = cli_value(argc, argv, &i, "mkckpt"))) return 2; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--out")) { if (!(out = cli_value(argc, argv, &i, "mkckpt"))) return 2; }
        else if (!strcmp(a, "--plan")) plan_only = 1;
        else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) quiet = 1;
        else if (!strcmp(a, "--dtype")) {
            if (!(v = cli_value(argc, argv, &i, "mkckpt"))) return 2;
            if ((dtype = ckpt_dtype_parse(v)) < 0) { fprintf(stderr, "moe mkckpt: --dtype must be f32, bf16, f16 or fp8\n"); return 2; }
        } else if (!strcmp(a, "--fp8-block")) {
            if (!(v = cli_value(argc, argv, &i, "mkckpt")) || !cli_int(v, 1, 1 << 20, "mkckpt", a, &block)) return 2;
        } else if (!strcmp(a, "--seed")) {
            if (!(v = cli_value(argc, argv, &i, "mkckpt")) || !cli_int(v, 0, 0x7fffffff, "mkckpt", a, &seed)) return 2;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!(v = cli_value(argc, argv, &i, "mkckpt")) || !cli_int(v, 1, 1024, "mkckpt", a, &threads)) return 2;
        } else if (!strcmp(a, "--shard-gb")) {
            if (!(v = cli_value(argc, argv, &i, "mkckpt"))) return 2;
            char *end;
            shard_gb = strtod(v, &end);
            if (*end || !(shard_gb > 0)) { fprintf(stderr, "moe mkckpt: --shard-gb must be a positive number\n"); return 2; }
        } else {
            fprintf(stderr, "moe mkckpt: unknown option '%s' (see moe mkckpt --help)\n", a);
            return 2;
        }
    }
    if (!shape && !config_path) {
        fprintf(stderr, "moe mkckpt: --shape NAME or --config FILE is required (shapes: %s)\n", ckpt_shape_names());
        return 2;
    }
    if (!out && !plan_only) { fprintf(stderr, "moe mkckpt: -o DIR is required (or --plan)\n"); return 2; }

    moe_error err = {{0}};
    writer w = { .dtype = (ckpt_dtype)dtype, .br = (int)block, .bc = (int)block, .seed = (uint64_t)seed };
    json_t *cfg_json = build_config(shape, config_path, w.dtype, (int)block, &err);
    if (!cfg_json) { fprintf(stderr, "moe mkckpt: %s\n", err.msg); return 1; }
    char *cfg_text = json_dumps(cfg_json, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
    json_decref(cfg_json);
    moe_config cfg;
    const char *what = shape ? shape : config_path;
    int rc = 1;
    stream st = {0};
    if (!cfg_text || config_parse(&cfg, cfg_text, strlen(cfg_text), what, &err) ||
        ckpt_plan_build(&w.plan, &cfg, &err) || writer_layout(&w, (uint64_t)(shard_gb * 1e9), &err)) {
        fprintf(stderr, "moe mkckpt: %s\n", cfg_text ? err.msg : "out of memory");
        goto done;
    }
    if (plan_only) {
        print_plan(what, &cfg, &w, stdout);
        rc = 0;
        goto done;
    }
    /* space check, then clear stale shards */
    uint64_t total = 0;
    for (int k = 0; k < w.n_e; k++) total += w.e[k].nbytes;
    struct stat before;
    int existed = stat(out, &before) == 0;
    if (make_dir(out, &err)) { fprintf(stderr, "moe mkckpt: %s\n", err.msg); goto done; }
    struct statvfs vfs;
    if (!statvfs(out, &vfs)) {
        uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize + stale_bytes(out, 0);
        uint64_t need = total + (uint64_t)w.n_files * (16u << 20);
        if (need > avail) {
            fprintf(stderr, "moe mkckpt: %s: not enough disk space: the checkpoint needs %.2f GB, %.2f GB are free\n",
                    out, need / 1e9, avail / 1e9);
            if (!existed) rmdir(out);
            goto done;
        }
    }
    stale_bytes(out, 1);
    {
        char path[4096];
        snprintf(path, sizeof path, "%s/config.json", out);
        FILE *fp = fopen(path, "w");
        if (!fp || fputs(cfg_text, fp) < 0 || fputs("\n", fp) < 0 || fclose(fp)) {
            fprintf(stderr, "moe mkckpt: %s: cannot write\n", path);
            goto done;
        }
    }
    /* buffers and threads */
    st.n_threads = threads > 0 ? (int)threads : threadpool_default_threads();
    st.pool = st.n_threads > 1 ? threadpool_create(st.n_threads) : NULL;
    if (st.n_threads > 1 && !st.pool) { fprintf(stderr, "moe mkckpt: cannot start %d threads\n", st.n_threads); goto done; }
    int64_t max_cols = 1, max_unit_rows = w.dtype == CK_FP8 ? block : 1;
    for (int i = 0; i < w.plan.n; i++) if (w.plan.t[i].cols > max_cols) max_cols = w.plan.t[i].cols;
    size_t slab = 0, n_scales = 1;
    for (int k = 0; k < w.n_e; k++) {
        const entry *e = &w.e[k];
        const ckpt_tensor *t = &w.plan.t[e->t];
        int64_t rows = slab_rows_of(&w, e);
        size_t b = (size_t)(rows * t->cols) * st_dtype_size(e->dtype);
        if (b > slab) slab = b;
        if (e->dtype == ST_F8_E4M3) {
            size_t ns = (size_t)((rows + block - 1) / block) * (size_t)((t->cols + block - 1) / block);
            if (ns > n_scales) n_scales = ns;
        }
    }
    st.slab = calloc((size_t)st.n_threads, sizeof(void *));
    st.scales = calloc((size_t)st.n_threads, sizeof(float *));
    st.tmp = calloc((size_t)st.n_threads, sizeof(float *));
    int ok = st.slab && st.scales && st.tmp;
    for (int k = 0; ok && k < st.n_threads; k++)
        ok = (st.slab[k] = malloc(slab)) && (st.scales[k] = malloc(sizeof(float) * n_scales)) &&
             (st.tmp[k] = malloc(sizeof(float) * (size_t)(max_cols * max_unit_rows)));
    if (!ok) { fprintf(stderr, "moe mkckpt: out of memory for the write buffers\n"); goto done; }
    st.total = total;
    st.quiet = quiet;
    st.t0 = st.last = cli_now();
    char meta[256];
    snprintf(meta, sizeof meta, "{\"format\":\"pt\",\"generator\":\"moe mkckpt\",\"shape\":\"%s\",\"seed\":\"%ld\",\"dtype\":\"%s\"}",
             shape ? shape : "config", seed, ckpt_dtype_name(w.dtype));
    for (int f = 0; f < w.n_files; f++)
        if (write_file(&w, &st, out, f, meta, &err)) { fprintf(stderr, "%smoe mkckpt: %s\n", quiet ? "" : "\n", err.msg); goto done; }
    if (w.n_files > 1 && write_index(&w, out, total, &err)) { fprintf(stderr, "moe mkckpt: %s\n", err.msg); goto done; }
    double secs = cli_now() - st.t0;
    double params = 0;
    for (int i = 0; i < w.plan.n; i++) params += (double)w.plan.t[i].rows * (double)w.plan.t[i].cols;
    if (!quiet)
        fprintf(stderr, "%smoe mkckpt: wrote %s: %s %s seed %ld, %d tensors, %.0f params, %d file%s, %.3f GB in %.2f s "
                        "= %.0f MB/s (%d threads)\n",
                st.last > st.t0 ? "\r" : "", out, what, ckpt_dtype_name(w.dtype), seed, w.n_e, params, w.n_files,
                w.n_files > 1 ? "s" : "", total / 1e9, secs, total / 1e6 / secs, st.n_threads);
    rc = 0;
done:
    for (int k = 0; k < st.n_threads; k++) {
        if (st.tmp) free(st.tmp[k]);
        if (st.slab) free(st.slab[k]);
        if (st.scales) free(st.scales[k]);
    }
    free(st.tmp); free(st.slab); free(st.scales);
    threadpool_free(st.pool);
    free(w.e);
    ckpt_plan_free(&w.plan);
    free(cfg_text);
    return rc;
}
