/* test_gguf.c - the GGUF reader and writer (engine/io/gguf.c), deepseek2 metadata <->
 * moe_config and the tokenizer from GGUF metadata (engine/io/gguf_config.c).
 *
 * Legend:
 *   bb          a byte builder: malformed files are written byte by byte here (the
 *               writer refuses to make them)
 *   fixture     tests/data/gguf/<ckpt>.meta.gguf: the header and key/values llama.cpp's
 *               gguf-py writes for tests/data/golden/<ckpt> (tools/bench/to_gguf.py
 *               --metadata-only, llama.cpp 80fb11a; no tensors)
 * Run from the repository root (as `make test` does).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "gguf.h"
#include "gguf_config.h"
#include "tokenizer.h"

#define PATH "t.gguf"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ====================================================================== byte builder */

typedef struct { uint8_t *b; size_t n, cap; } bb;

static void bb_put(bb *x, const void *p, size_t n) {
    if (x->n + n > x->cap) {
        x->cap = (x->n + n) * 2 + 64;
        x->b = realloc(x->b, x->cap);
        assert_non_null(x->b);
    }
    memcpy(x->b + x->n, p, n);
    x->n += n;
}
static void bb_u8(bb *x, uint8_t v) { bb_put(x, &v, 1); }
static void bb_u32(bb *x, uint32_t v) { bb_put(x, &v, 4); }
static void bb_u64(bb *x, uint64_t v) { bb_put(x, &v, 8); }
static void bb_str(bb *x, const char *s) { bb_u64(x, strlen(s)); bb_put(x, s, strlen(s)); }
static void bb_head(bb *x, uint32_t version, uint64_t nt, uint64_t nkv) {
    bb_put(x, "GGUF", 4);
    bb_u32(x, version);
    bb_u64(x, nt);
    bb_u64(x, nkv);
}
static void bb_kv_u32(bb *x, const char *k, uint32_t v) { bb_str(x, k); bb_u32(x, GGUF_VAL_U32); bb_u32(x, v); }
/* a tensor info: name, n_dims, ne..., type, offset */
static void bb_tinfo(bb *x, const char *name, uint32_t nd, const uint64_t *ne, uint32_t type, uint64_t off) {
    bb_str(x, name);
    bb_u32(x, nd);
    for (uint32_t i = 0; i < nd; i++) bb_u64(x, ne[i]);
    bb_u32(x, type);
    bb_u64(x, off);
}
static void bb_pad(bb *x, size_t a) { while (x->n % a) bb_u8(x, 0); }
static void bb_zeros(bb *x, size_t n) { for (size_t i = 0; i < n; i++) bb_u8(x, 0); }

/* The buffer must fail to parse with one line naming the file and containing `want`. */
static void expect_fail_buf(const void *buf, size_t n, const char *want) {
    gguf_file g;
    moe_error err = {{0}};
    uint8_t *copy = malloc(n ? n : 1);   /* exact size: ASan sees reads past the end */
    memcpy(copy, buf, n);
    int rc = gguf_parse_buffer(&g, copy, n, PATH, &err);
    if (rc == MOE_OK || !strstr(err.msg, want) || strncmp(err.msg, PATH ": ", strlen(PATH) + 2) || strchr(err.msg, '\n'))
        fprintf(stderr, "want an error with \"%s\", got rc %d: %s\n", want, rc, err.msg);
    if (rc == MOE_OK) gguf_close(&g);
    free(copy);
    assert_int_equal(rc, MOE_FAIL);
    assert_non_null(strstr(err.msg, want));
    assert_int_equal(strncmp(err.msg, PATH ": ", strlen(PATH) + 2), 0);
    assert_null(strchr(err.msg, '\n'));
}

static void expect_fail(bb *x, const char *want) {
    expect_fail_buf(x->b, x->n, want);
    free(x->b);
    memset(x, 0, sizeof *x);
}

/* ====================================================================== the type table */

static void test_type_table(void **state) {
    static const struct { uint32_t id; const char *name; int block; size_t bytes; int supported; } want[] = {
        {0, "F32", 1, 4, 1},    {1, "F16", 1, 2, 1},      {2, "Q4_0", 32, 18, 1}, {3, "Q4_1", 32, 20, 0},
        {6, "Q5_0", 32, 22, 0}, {7, "Q5_1", 32, 24, 0},   {8, "Q8_0", 32, 34, 1}, {9, "Q8_1", 32, 40, 0},
        {10, "Q2_K", 256, 84, 0}, {11, "Q3_K", 256, 110, 0}, {12, "Q4_K", 256, 144, 1}, {13, "Q5_K", 256, 176, 1},
        {14, "Q6_K", 256, 210, 1}, {15, "Q8_K", 256, 292, 0}, {30, "BF16", 1, 2, 1}, {28, "F64", 1, 8, 0},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        assert_string_equal(gguf_type_name(want[i].id), want[i].name);
        assert_int_equal(gguf_type_block(want[i].id), want[i].block);
        assert_int_equal(gguf_type_block_bytes(want[i].id), want[i].bytes);
        assert_int_equal(gguf_type_supported(want[i].id), want[i].supported);
    }
    static const uint32_t gone[] = {4, 5, 31, 32, 33, 36, 37, 38, 43, 1000, UINT32_MAX};
    for (size_t i = 0; i < sizeof gone / sizeof gone[0]; i++) {
        assert_int_equal(gguf_type_block(gone[i]), 0);
        assert_string_equal(gguf_type_name(gone[i]), "?");
    }
}

/* ====================================================================== round trip */

/* Encoded [[ "ab", "" ], [ ], [ "x" ]] (array of arrays of strings) and [[1, 2], [3]] (of i32). */
static void nested_strings(bb *x) {
    bb_u32(x, GGUF_VAL_ARRAY); bb_u64(x, 3);
    bb_u32(x, GGUF_VAL_STRING); bb_u64(x, 2); bb_str(x, "ab"); bb_str(x, "");
    bb_u32(x, GGUF_VAL_STRING); bb_u64(x, 0);
    bb_u32(x, GGUF_VAL_STRING); bb_u64(x, 1); bb_str(x, "x");
}
static void nested_ints(bb *x) {
    bb_u32(x, GGUF_VAL_ARRAY); bb_u64(x, 2);
    bb_u32(x, GGUF_VAL_I32); bb_u64(x, 2); bb_u32(x, 1); bb_u32(x, 2);
    bb_u32(x, GGUF_VAL_I32); bb_u64(x, 1); bb_u32(x, 3);
}

static void fill(void *p, size_t n, unsigned seed) {
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)(seed * 131 + i * 7 + (i >> 8));
}

static void check_roundtrip(uint32_t alignment, int via_file) {
    gguf_writer w;
    gguf_writer_init(&w);
    if (alignment != GGUF_DEFAULT_ALIGNMENT) assert_int_equal(gguf_w_alignment(&w, alignment), MOE_OK);
    uint8_t u8 = 200; int8_t i8 = -5; uint16_t u16 = 60000; int16_t i16 = -30000;
    assert_int_equal(gguf_w_raw(&w, "a.u8", GGUF_VAL_U8, &u8, 1), MOE_OK);
    assert_int_equal(gguf_w_raw(&w, "a.i8", GGUF_VAL_I8, &i8, 1), MOE_OK);
    assert_int_equal(gguf_w_raw(&w, "a.u16", GGUF_VAL_U16, &u16, 2), MOE_OK);
    assert_int_equal(gguf_w_raw(&w, "a.i16", GGUF_VAL_I16, &i16, 2), MOE_OK);
    assert_int_equal(gguf_w_u32(&w, "a.u32", 4000000000u), MOE_OK);
    assert_int_equal(gguf_w_i32(&w, "a.i32", -2000000000), MOE_OK);
    assert_int_equal(gguf_w_u64(&w, "a.u64", 1ull << 50), MOE_OK);
    uint64_t huge = UINT64_MAX;
    assert_int_equal(gguf_w_raw(&w, "a.u64max", GGUF_VAL_U64, &huge, 8), MOE_OK);
    int64_t i64 = -(1ll << 40);
    assert_int_equal(gguf_w_raw(&w, "a.i64", GGUF_VAL_I64, &i64, 8), MOE_OK);
    assert_int_equal(gguf_w_f32(&w, "a.f32", 0.1f), MOE_OK);
    assert_int_equal(gguf_w_f64(&w, "a.f64", 0.1), MOE_OK);
    assert_int_equal(gguf_w_bool(&w, "a.bool", 1), MOE_OK);
    assert_int_equal(gguf_w_str(&w, "a.str", "héllo"), MOE_OK);
    assert_int_equal(gguf_w_strn(&w, "a.empty", "", 0), MOE_OK);
    int32_t ints[5] = {1, -2, 3, -4, 5};
    float fl[3] = {1.5f, -2.25f, 1e30f};
    uint8_t bools[4] = {0, 1, 1, 0};
    assert_int_equal(gguf_w_arr(&w, "b.i32", GGUF_VAL_I32, ints, 5), MOE_OK);
    assert_int_equal(gguf_w_arr(&w, "b.f32", GGUF_VAL_F32, fl, 3), MOE_OK);
    assert_int_equal(gguf_w_arr(&w, "b.bool", GGUF_VAL_BOOL, bools, 4), MOE_OK);
    assert_int_equal(gguf_w_arr(&w, "b.none", GGUF_VAL_U64, NULL, 0), MOE_OK);
    const char *strs[4] = {"Ġthe", "", "a b", "<｜User｜>"};
    assert_int_equal(gguf_w_arr_str(&w, "b.str", strs, NULL, 4), MOE_OK);
    bb ns = {0}, ni = {0};
    nested_strings(&ns);
    nested_ints(&ni);
    assert_int_equal(gguf_w_raw(&w, "c.nested_str", GGUF_VAL_ARRAY, ns.b, ns.n), MOE_OK);
    assert_int_equal(gguf_w_raw(&w, "c.nested_int", GGUF_VAL_ARRAY, ni.b, ni.n), MOE_OK);
    free(ns.b);
    free(ni.b);
    /* tensors of the supported types; sizes chosen so padding is needed between them */
    static const struct { const char *name; uint32_t type; int nd; int64_t ne[4]; } ts[] = {
        {"f32", GGML_TYPE_F32, 1, {3}},         {"f16", GGML_TYPE_F16, 2, {5, 3}},
        {"bf16", GGML_TYPE_BF16, 3, {2, 3, 4}}, {"q8_0", GGML_TYPE_Q8_0, 2, {64, 3}},
        {"q4_0", GGML_TYPE_Q4_0, 1, {32}},      {"q4_k", GGML_TYPE_Q4_K, 4, {256, 2, 1, 2}},
        {"q5_k", GGML_TYPE_Q5_K, 2, {512, 1}},  {"q6_k", GGML_TYPE_Q6_K, 3, {256, 1, 3}},
        {"empty", GGML_TYPE_F32, 2, {0, 7}},
        {NULL, GGML_TYPE_F32, 1, {1}},   /* a name of 63 bytes, the longest allowed */
    };
    char long_name[64];
    memset(long_name, 'n', 63);
    long_name[63] = 0;
    enum { NT = sizeof ts / sizeof ts[0] };
    uint8_t *data[NT];
    size_t bytes[NT];
    for (int i = 0; i < NT; i++) {
        uint64_t n = 1;
        for (int d = 0; d < ts[i].nd; d++) n *= (uint64_t)ts[i].ne[d];
        bytes[i] = n / (uint64_t)gguf_type_block(ts[i].type) * gguf_type_block_bytes(ts[i].type);
        data[i] = malloc(bytes[i] + 1);
        fill(data[i], bytes[i], (unsigned)i);
        assert_int_equal(gguf_w_tensor(&w, ts[i].name ? ts[i].name : long_name, ts[i].nd, ts[i].ne, ts[i].type, data[i]),
                         MOE_OK);
    }
    moe_error err = {{0}};
    gguf_file g;
    uint8_t *buf = NULL;
    size_t len = 0;
    char path[64] = "";
    if (via_file) {
        snprintf(path, sizeof path, "/tmp/moe_gguf_rt_%d.gguf", (int)getpid());
        assert_int_equal(gguf_write_file(&w, path, &err), MOE_OK);
        assert_int_equal(gguf_open(&g, path, &err), MOE_OK);
    } else {
        assert_int_equal(gguf_write_buffer(&w, &buf, &len, &err), MOE_OK);
        int rc = gguf_parse_buffer(&g, buf, len, PATH, &err);
        if (rc) fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(rc, MOE_OK);
    }
    gguf_writer_free(&w);
    assert_int_equal(g.version, 3);
    assert_int_equal(g.alignment, alignment);
    assert_int_equal(g.data_offset % alignment, 0);
    assert_int_equal(g.n_kv, 21 + (alignment != GGUF_DEFAULT_ALIGNMENT));
    /* scalars */
    int64_t iv;
    uint32_t u;
    float f;
    double d;
    int b;
    const char *s;
    size_t sl;
    assert_int_equal(gguf_get_i64(&g, "a.u8", 1, 0, &iv, &err), MOE_OK); assert_int_equal(iv, 200);
    assert_int_equal(gguf_get_i64(&g, "a.i8", 1, 0, &iv, &err), MOE_OK); assert_int_equal(iv, -5);
    assert_int_equal(gguf_get_i64(&g, "a.u16", 1, 0, &iv, &err), MOE_OK); assert_int_equal(iv, 60000);
    assert_int_equal(gguf_get_i64(&g, "a.i16", 1, 0, &iv, &err), MOE_OK); assert_int_equal(iv, -30000);
    assert_int_equal(gguf_get_u32(&g, "a.u32", 1, 0, &u, &err), MOE_OK); assert_int_equal(u, 4000000000u);
    assert_int_equal(gguf_get_i64(&g, "a.i32", 1, 0, &iv, &err), MOE_OK); assert_int_equal(iv, -2000000000);
    assert_int_equal(gguf_get_i64(&g, "a.u64", 1, 0, &iv, &err), MOE_OK); assert_int_equal(iv, 1ll << 50);
    assert_int_equal(gguf_get_i64(&g, "a.i64", 1, 0, &iv, &err), MOE_OK); assert_int_equal(iv, -(1ll << 40));
    assert_int_equal(gguf_get_f32(&g, "a.f32", 1, 0, &f, &err), MOE_OK); assert_true(f == 0.1f);
    assert_int_equal(gguf_get_f64(&g, "a.f64", 1, 0, &d, &err), MOE_OK); assert_true(d == 0.1);
    assert_int_equal(gguf_get_bool(&g, "a.bool", 1, 0, &b, &err), MOE_OK); assert_int_equal(b, 1);
    assert_int_equal(gguf_get_str(&g, "a.str", 1, &s, &sl, &err), MOE_OK);
    assert_int_equal(sl, strlen("héllo"));
    assert_memory_equal(s, "héllo", sl);
    assert_int_equal(gguf_get_str(&g, "a.empty", 1, &s, &sl, &err), MOE_OK);
    assert_int_equal(sl, 0);
    /* arrays */
    const gguf_value *a;
    assert_int_equal(gguf_get_arr(&g, "b.i32", 1, GGUF_VAL_I32, &a, &err), MOE_OK);
    assert_int_equal(a->n, 5);
    for (int i = 0; i < 5; i++) {
        gguf_value e = gguf_arr_at(a, (uint64_t)i);
        assert_int_equal(gguf_val_int(&e, &iv), MOE_OK);
        assert_int_equal(iv, ints[i]);
    }
    assert_int_equal(gguf_get_arr(&g, "b.f32", 1, GGUF_VAL_F32, &a, &err), MOE_OK);
    for (int i = 0; i < 3; i++) {
        gguf_value e = gguf_arr_at(a, (uint64_t)i);
        assert_int_equal(gguf_val_float(&e, &d), MOE_OK);
        assert_true((float)d == fl[i]);
    }
    assert_int_equal(gguf_get_arr(&g, "b.bool", 1, GGUF_VAL_BOOL, &a, &err), MOE_OK);
    assert_memory_equal(a->p, bools, 4);
    assert_int_equal(gguf_get_arr(&g, "b.none", 1, GGUF_VAL_U64, &a, &err), MOE_OK);
    assert_int_equal(a->n, 0);
    assert_int_equal(gguf_get_arr(&g, "b.str", 1, GGUF_VAL_STRING, &a, &err), MOE_OK);
    assert_int_equal(a->n, 4);
    assert_non_null(a->idx);
    for (int i = 3; i >= 0; i--) {
        gguf_value e = gguf_arr_at(a, (uint64_t)i);
        assert_int_equal(e.type, GGUF_VAL_STRING);
        assert_int_equal(e.n_bytes, strlen(strs[i]));
        assert_memory_equal(e.p, strs[i], e.n_bytes);
    }
    assert_int_equal(gguf_get_arr(&g, "c.nested_str", 1, GGUF_VAL_ARRAY, &a, &err), MOE_OK);
    assert_int_equal(a->n, 3);
    gguf_value a0 = gguf_arr_at(a, 0), a1 = gguf_arr_at(a, 1), a2 = gguf_arr_at(a, 2);
    assert_int_equal(a0.elem, GGUF_VAL_STRING); assert_int_equal(a0.n, 2);
    assert_int_equal(a1.n, 0); assert_int_equal(a2.n, 1);
    gguf_value x = gguf_arr_at(&a0, 1), y = gguf_arr_at(&a0, 0), z = gguf_arr_at(&a2, 0);
    assert_int_equal(x.n_bytes, 0);
    assert_int_equal(y.n_bytes, 2); assert_memory_equal(y.p, "ab", 2);
    assert_int_equal(z.n_bytes, 1); assert_memory_equal(z.p, "x", 1);
    assert_int_equal(gguf_get_arr(&g, "c.nested_int", 1, GGUF_VAL_ARRAY, &a, &err), MOE_OK);
    gguf_value n1 = gguf_arr_at(a, 1), n0 = gguf_arr_at(a, 0);
    gguf_value n01 = gguf_arr_at(&n0, 1), n10 = gguf_arr_at(&n1, 0);
    assert_int_equal(gguf_val_int(&n01, &iv), MOE_OK); assert_int_equal(iv, 2);
    assert_int_equal(gguf_val_int(&n10, &iv), MOE_OK); assert_int_equal(iv, 3);
    /* tensors */
    assert_int_equal(g.n_tensors, NT);
    for (int i = 0; i < NT; i++) {
        const gguf_tensor *t = gguf_find_tensor(&g, ts[i].name ? ts[i].name : long_name);
        assert_non_null(t);
        assert_int_equal(t->type, ts[i].type);
        assert_int_equal(t->n_dims, ts[i].nd);
        for (int k = 0; k < 4; k++) assert_int_equal(t->ne[k], k < ts[i].nd ? ts[i].ne[k] : 1);
        assert_int_equal(t->n_bytes, bytes[i]);
        assert_int_equal(t->offset % alignment, 0);
        assert_int_equal(((uintptr_t)t->data - (uintptr_t)g.buf) % alignment, 0);
        if (bytes[i]) assert_memory_equal(t->data, data[i], bytes[i]);
        free(data[i]);
    }
    assert_null(gguf_find_tensor(&g, "nope"));
    assert_null(gguf_find_kv(&g, "nope"));
    gguf_close(&g);
    free(buf);
    if (via_file) unlink(path);
}

static void test_roundtrip_buffer(void **state) { check_roundtrip(32, 0); }
static void test_roundtrip_file_align64(void **state) { check_roundtrip(64, 1); }
static void test_roundtrip_align1(void **state) { check_roundtrip(1, 0); }

/* A file with no keys and no tensors is valid; so is one with keys only (no padding). */
static void test_minimal_files(void **state) {
    bb x = {0};
    gguf_file g;
    moe_error err = {{0}};
    bb_head(&x, 3, 0, 0);
    assert_int_equal(gguf_parse_buffer(&g, x.b, x.n, PATH, &err), MOE_OK);
    assert_int_equal(g.n_kv + g.n_tensors, 0);
    gguf_close(&g);
    free(x.b);
    x = (bb){0};
    bb_head(&x, 2, 0, 1);   /* version 2 too */
    bb_kv_u32(&x, "k", 7);
    assert_int_equal(gguf_parse_buffer(&g, x.b, x.n, PATH, &err), MOE_OK);
    assert_int_equal(g.version, 2);
    uint32_t v;
    assert_int_equal(gguf_get_u32(&g, "k", 1, 0, &v, &err), MOE_OK);
    assert_int_equal(v, 7);
    gguf_close(&g);
    free(x.b);
    /* an empty array of strings as the only array (fuzz: the offset-table pool stayed NULL
     * and NULL + 0 was UBSan's "applying zero offset to null pointer") */
    x = (bb){0};
    bb_head(&x, 3, 0, 1);
    bb_str(&x, "none");
    bb_u32(&x, GGUF_VAL_ARRAY); bb_u32(&x, GGUF_VAL_STRING); bb_u64(&x, 0);
    assert_int_equal(gguf_parse_buffer(&g, x.b, x.n, PATH, &err), MOE_OK);
    const gguf_value *a;
    assert_int_equal(gguf_get_arr(&g, "none", 1, GGUF_VAL_STRING, &a, &err), MOE_OK);
    assert_int_equal(a->n, 0);
    assert_null(a->idx);
    gguf_close(&g);
    free(x.b);
}

/* ====================================================================== getters */

static void expect_msg(int rc, const moe_error *err, const char *want) {
    if (rc == MOE_OK || !strstr(err->msg, want)) fprintf(stderr, "want \"%s\", got rc %d: %s\n", want, rc, err->msg);
    assert_int_equal(rc, MOE_FAIL);
    assert_non_null(strstr(err->msg, want));
}

static void test_getters_types(void **state) {
    gguf_writer w;
    gguf_writer_init(&w);
    int32_t neg = -1;
    assert_int_equal(gguf_w_str(&w, "s", "text"), MOE_OK);
    assert_int_equal(gguf_w_raw(&w, "neg", GGUF_VAL_I32, &neg, 4), MOE_OK);
    assert_int_equal(gguf_w_u64(&w, "big", 1ull << 40), MOE_OK);
    assert_int_equal(gguf_w_f32(&w, "f", 2.5f), MOE_OK);
    assert_int_equal(gguf_w_bool(&w, "b", 0), MOE_OK);
    const char *strs[1] = {"x"};
    assert_int_equal(gguf_w_arr_str(&w, "arr", strs, NULL, 1), MOE_OK);
    assert_int_equal(gguf_w_u32(&w, "u", 5), MOE_OK);
    uint8_t *buf;
    size_t len;
    moe_error err = {{0}};
    assert_int_equal(gguf_write_buffer(&w, &buf, &len, &err), MOE_OK);
    gguf_writer_free(&w);
    gguf_file g;
    assert_int_equal(gguf_parse_buffer(&g, buf, len, PATH, &err), MOE_OK);
    uint32_t u;
    int64_t iv;
    float f;
    int b;
    const char *s;
    size_t sl;
    const gguf_value *a;
    char sb[3];
    expect_msg(gguf_get_u32(&g, "s", 1, 0, &u, &err), &err, "t.gguf: key \"s\" has type string, not an integer");
    expect_msg(gguf_get_u32(&g, "neg", 1, 0, &u, &err), &err, "key \"neg\" = -1 is out of range");
    expect_msg(gguf_get_u32(&g, "big", 1, 0, &u, &err), &err, "key \"big\" = 1099511627776 is out of range");
    expect_msg(gguf_get_u32(&g, "f", 1, 0, &u, &err), &err, "key \"f\" has type f32, not an integer");
    expect_msg(gguf_get_f32(&g, "u", 1, 0, &f, &err), &err, "key \"u\" has type u32, not a float");
    expect_msg(gguf_get_bool(&g, "u", 1, 0, &b, &err), &err, "key \"u\" has type u32, not bool");
    expect_msg(gguf_get_str(&g, "arr", 1, &s, &sl, &err), &err, "key \"arr\" is an array of string, not string");
    expect_msg(gguf_get_arr(&g, "u", 1, GGUF_VAL_COUNT, &a, &err), &err, "key \"u\" has type u32, not an array");
    expect_msg(gguf_get_arr(&g, "arr", 1, GGUF_VAL_I32, &a, &err), &err,
               "key \"arr\" is an array of string, not an array of i32");
    expect_msg(gguf_get_u32(&g, "missing", 1, 0, &u, &err), &err, "t.gguf: missing required key \"missing\"");
    expect_msg(gguf_get_strbuf(&g, "s", 1, "", sb, sizeof sb, &err), &err, "key \"s\" is longer than 2 bytes");
    /* optional and missing: the default */
    assert_int_equal(gguf_get_u32(&g, "missing", 0, 9, &u, &err), MOE_OK);
    assert_int_equal(u, 9);
    assert_int_equal(gguf_get_i64(&g, "neg", 1, 0, &iv, &err), MOE_OK);
    assert_int_equal(iv, -1);
    assert_int_equal(gguf_get_f32(&g, "f", 1, 0, &f, &err), MOE_OK);
    assert_true(f == 2.5f);
    assert_int_equal(gguf_get_arr(&g, "missing", 0, GGUF_VAL_STRING, &a, &err), MOE_OK);
    assert_null(a);
    gguf_close(&g);
    free(buf);
}

static void test_writer_refuses(void **state) {
    gguf_writer w;
    moe_error err = {{0}};
    uint8_t *buf;
    size_t len;
    int64_t ne[2] = {33, 2};
    float data[66] = {0};
    gguf_writer_init(&w);
    assert_int_equal(gguf_w_u32(&w, "k", 1), MOE_OK);
    assert_int_equal(gguf_w_u32(&w, "k", 2), MOE_FAIL);
    assert_int_equal(gguf_write_buffer(&w, &buf, &len, &err), MOE_FAIL);
    assert_non_null(strstr(err.msg, "GGUF key \"k\" added twice"));
    gguf_writer_free(&w);
    gguf_writer_init(&w);
    assert_int_equal(gguf_w_tensor(&w, "q", 2, ne, GGML_TYPE_Q8_0, data), MOE_FAIL);   /* 33 is not a block row */
    assert_int_equal(gguf_write_file(&w, "/tmp/never.gguf", &err), MOE_FAIL);
    assert_non_null(strstr(err.msg, "/tmp/never.gguf: GGUF tensor \"q\": rows are not a whole number of blocks"));
    assert_int_equal(access("/tmp/never.gguf", F_OK), -1);
    gguf_writer_free(&w);
    gguf_writer_init(&w);
    assert_int_equal(gguf_w_tensor(&w, "t", 1, ne, 4, data), MOE_FAIL);
    gguf_writer_free(&w);
    gguf_writer_init(&w);
    assert_int_equal(gguf_w_tensor(&w, "t", 5, ne, GGML_TYPE_F32, data), MOE_FAIL);
    gguf_writer_free(&w);
    gguf_writer_init(&w);
    assert_int_equal(gguf_w_alignment(&w, 48), MOE_FAIL);
    gguf_writer_free(&w);
}

/* ====================================================================== malformed files */

static void test_bad_header(void **state) {
    bb x = {0};
    expect_fail_buf("", 0, "file is 0 bytes, too short for a GGUF header");
    expect_fail_buf("GGU", 3, "too short");
    expect_fail_buf("GGML\3\0\0\0", 8, "not a GGUF file (magic \"GGML\"");
    bb_head(&x, 1, 0, 0); expect_fail(&x, "GGUF version 1 is not supported");
    bb_head(&x, 4, 0, 0); expect_fail(&x, "GGUF version 4 is not supported");
    bb_head(&x, 0x03000000, 0, 0); expect_fail(&x, "a big-endian file?");
    bb_put(&x, "GGUF", 4); bb_u32(&x, 3); bb_u32(&x, 0); expect_fail(&x, "file ends inside the header");
    bb_head(&x, 3, (1 << 20) + 1, 0); expect_fail(&x, "header lists 1048577 tensors, more than the limit of 1048576");
    bb_head(&x, 3, 0, (1 << 20) + 1); expect_fail(&x, "header lists 1048577 keys, more than the limit of 1048576");
    bb_head(&x, 3, 0, UINT64_MAX); expect_fail(&x, "keys, more than the limit");
    bb_head(&x, 3, 3, 1000); bb_kv_u32(&x, "a", 1); expect_fail(&x, "header lists 1000 keys and 3 tensors, more than the");
}

static void test_bad_keys(void **state) {
    bb x = {0};
    bb_head(&x, 3, 0, 1); bb_u64(&x, 0); bb_zeros(&x, 8); expect_fail(&x, "key 0 is empty");
    bb_head(&x, 3, 0, 1); bb_u64(&x, 1ull << 40); bb_zeros(&x, 8); expect_fail(&x, "key 0 is 1099511627776 bytes long, more than the limit of 255");
    bb_head(&x, 3, 0, 1); bb_u64(&x, 3); bb_put(&x, "a\0b", 3); bb_u32(&x, GGUF_VAL_U8); bb_u8(&x, 1);
    expect_fail(&x, "key 0 \"a\" holds a NUL byte");
    bb_head(&x, 3, 0, 2); bb_kv_u32(&x, "k", 1); bb_u64(&x, 50); bb_put(&x, "short", 5);
    expect_fail(&x, "file ends inside key 1");
    bb_head(&x, 3, 0, 2); bb_kv_u32(&x, "dup", 1); bb_kv_u32(&x, "dup", 2); expect_fail(&x, "key \"dup\" appears twice");
    bb_head(&x, 3, 0, 1); bb_str(&x, "t"); bb_u32(&x, 13); bb_zeros(&x, 16); expect_fail(&x, "key \"t\" has unknown value type 13");
    bb_head(&x, 3, 0, 1); bb_str(&x, "t"); bb_u32(&x, GGUF_VAL_U64); bb_u32(&x, 0);
    expect_fail(&x, "file ends inside the value of key \"t\"");
    bb_head(&x, 3, 0, 1); bb_str(&x, "b"); bb_u32(&x, GGUF_VAL_BOOL); bb_u8(&x, 2); expect_fail(&x, "key \"b\": bool value 2 is not 0 or 1");
    /* strings */
    bb_head(&x, 3, 0, 1); bb_str(&x, "s"); bb_u32(&x, GGUF_VAL_STRING); bb_u64(&x, (1u << 20) + 1);
    expect_fail(&x, "the value of key \"s\" is a string of 1048577 bytes, more than the limit of 1048576");
    bb_head(&x, 3, 0, 1); bb_str(&x, "s"); bb_u32(&x, GGUF_VAL_STRING); bb_u64(&x, 100); bb_put(&x, "abc", 3);
    expect_fail(&x, "file ends inside the value of key \"s\"");
    /* arrays */
    bb_head(&x, 3, 0, 1); bb_str(&x, "a"); bb_u32(&x, GGUF_VAL_ARRAY); bb_u32(&x, 77); bb_u64(&x, 0);
    expect_fail(&x, "key \"a\" is an array of unknown value type 77");
    bb_head(&x, 3, 0, 1); bb_str(&x, "a"); bb_u32(&x, GGUF_VAL_ARRAY); bb_u32(&x, GGUF_VAL_U8); bb_u64(&x, 1u << 30);
    expect_fail(&x, "key \"a\" has an array of 1073741824 elements: the file's arrays exceed the limit of 16777216");
    bb_head(&x, 3, 0, 1); bb_str(&x, "a"); bb_u32(&x, GGUF_VAL_ARRAY); bb_u32(&x, GGUF_VAL_U32); bb_u64(&x, 1000);
    bb_zeros(&x, 12); expect_fail(&x, "file ends inside the array of key \"a\"");
    bb_head(&x, 3, 0, 1); bb_str(&x, "a"); bb_u32(&x, GGUF_VAL_ARRAY); bb_u32(&x, GGUF_VAL_BOOL); bb_u64(&x, 3);
    bb_u8(&x, 1); bb_u8(&x, 0); bb_u8(&x, 9); expect_fail(&x, "bool element 2 is 9, not 0 or 1");
    bb_head(&x, 3, 0, 1); bb_str(&x, "a"); bb_u32(&x, GGUF_VAL_ARRAY); bb_u32(&x, GGUF_VAL_STRING); bb_u64(&x, 2);
    bb_str(&x, "ok"); bb_u64(&x, 5); expect_fail(&x, "file ends inside the value of key \"a\"");
    /* nesting: 4 levels are fine, 5 are not */
    for (int depth = 4; depth <= 5; depth++) {
        bb_head(&x, 3, 0, 1);
        bb_str(&x, "deep");
        bb_u32(&x, GGUF_VAL_ARRAY);
        for (int i = 1; i < depth; i++) { bb_u32(&x, GGUF_VAL_ARRAY); bb_u64(&x, 1); }
        bb_u32(&x, GGUF_VAL_U8); bb_u64(&x, 1); bb_u8(&x, 42);
        if (depth == 5) { expect_fail(&x, "key \"deep\" nests arrays more than 4 deep"); continue; }
        gguf_file g;
        moe_error err = {{0}};
        assert_int_equal(gguf_parse_buffer(&g, x.b, x.n, PATH, &err), MOE_OK);
        gguf_value v = gguf_find_kv(&g, "deep")->v;
        for (int i = 1; i < depth; i++) v = gguf_arr_at(&v, 0);
        assert_int_equal(v.elem, GGUF_VAL_U8);
        assert_int_equal(v.p[0], 42);
        gguf_close(&g);
        free(x.b);
        x = (bb){0};
    }
    /* arrays of arrays count every element against the limit */
    bb_head(&x, 3, 0, 1); bb_str(&x, "a"); bb_u32(&x, GGUF_VAL_ARRAY); bb_u32(&x, GGUF_VAL_ARRAY); bb_u64(&x, 2);
    bb_u32(&x, GGUF_VAL_U8); bb_u64(&x, 1u << 23); bb_zeros(&x, 1u << 23);
    bb_u32(&x, GGUF_VAL_U8); bb_u64(&x, 1u << 23);
    expect_fail(&x, "the file's arrays exceed the limit");
    /* general.alignment */
    bb_head(&x, 3, 0, 1); bb_str(&x, "general.alignment"); bb_u32(&x, GGUF_VAL_STRING); bb_str(&x, "32");
    expect_fail(&x, "key \"general.alignment\" has type string, not u32");
    bb_head(&x, 3, 0, 1); bb_kv_u32(&x, "general.alignment", 48); expect_fail(&x, "general.alignment = 48 is not a power of two");
    bb_head(&x, 3, 0, 1); bb_kv_u32(&x, "general.alignment", 0); expect_fail(&x, "general.alignment = 0 is not a power of two");
}

/* One tensor info (and data) after the header: n_tensors tensors, one key. */
static void tensor_file(bb *x, const char *name, uint32_t nd, const uint64_t *ne, uint32_t type, uint64_t off,
                        size_t data) {
    bb_head(x, 3, 1, 1);
    bb_kv_u32(x, "k", 1);
    bb_tinfo(x, name, nd, ne, type, off);
    bb_pad(x, 32);
    bb_zeros(x, data);
}

static void test_bad_tensors(void **state) {
    bb x = {0};
    uint64_t ne4[5] = {32, 2, 2, 2, 2};
    tensor_file(&x, "t", 5, ne4, GGML_TYPE_F32, 0, 1024); expect_fail(&x, "tensor \"t\" has 5 dimensions (at most 4)");
    tensor_file(&x, "t", 4, ne4, 4, 0, 1024); expect_fail(&x, "tensor \"t\" has unknown ggml type id 4");
    tensor_file(&x, "t", 4, ne4, 99, 0, 1024); expect_fail(&x, "tensor \"t\" has unknown ggml type id 99");
    uint64_t negative[1] = {1ull << 63};
    tensor_file(&x, "t", 1, negative, GGML_TYPE_F32, 0, 16); expect_fail(&x, "tensor \"t\" dimension 0 is");
    uint64_t big[4] = {1ull << 40, 1ull << 40, 1, 1};
    tensor_file(&x, "t", 2, big, GGML_TYPE_F32, 0, 16); expect_fail(&x, "tensor \"t\" element count overflows");
    uint64_t big3[3] = {1ull << 20, 1ull << 20, 1ull << 20};   /* 2^60 elements: representable, not in the file */
    tensor_file(&x, "t", 3, big3, GGML_TYPE_F32, 0, 16);
    expect_fail(&x, "tensor \"t\" data [0, 4611686018427387904) lies outside the 16-byte data section");
    uint64_t odd[2] = {33, 2};
    tensor_file(&x, "t", 2, odd, GGML_TYPE_Q8_0, 0, 1024);
    expect_fail(&x, "tensor \"t\": rows of 33 elements are not a whole number of Q8_0 blocks of 32");
    uint64_t k[2] = {100, 1};
    tensor_file(&x, "t", 2, k, GGML_TYPE_Q4_K, 0, 1024); expect_fail(&x, "not a whole number of Q4_K blocks of 256");
    uint64_t ok[1] = {8};
    tensor_file(&x, "t", 1, ok, GGML_TYPE_F32, 8, 64); expect_fail(&x, "tensor \"t\" offset 8 is not a multiple of the alignment 32");
    tensor_file(&x, "t", 1, ok, GGML_TYPE_F32, 32, 40);
    expect_fail(&x, "tensor \"t\" data [32, 64) lies outside the 40-byte data section (truncated?)");
    tensor_file(&x, "t", 1, ok, GGML_TYPE_F32, 1ull << 63, 40); expect_fail(&x, "lies outside");
    tensor_file(&x, "t", 1, ok, GGML_TYPE_F32, UINT64_MAX - 31, 40); expect_fail(&x, "lies outside");
    /* names */
    tensor_file(&x, "", 1, ok, GGML_TYPE_F32, 0, 32); expect_fail(&x, "tensor name 0 is empty");
    char name64[65];
    memset(name64, 'n', 64);
    name64[64] = 0;
    tensor_file(&x, name64, 1, ok, GGML_TYPE_F32, 0, 32);
    expect_fail(&x, "tensor name 0 is 64 bytes long, more than the limit of 63");
    /* two tensors: duplicates, overlap */
    bb_head(&x, 3, 2, 0);
    bb_tinfo(&x, "a", 1, ok, GGML_TYPE_F32, 0);
    bb_tinfo(&x, "a", 1, ok, GGML_TYPE_F32, 32);
    bb_pad(&x, 32); bb_zeros(&x, 64);
    expect_fail(&x, "tensor \"a\" appears twice");
    uint64_t sixteen[1] = {16};
    bb_head(&x, 3, 3, 0);
    bb_tinfo(&x, "a", 1, sixteen, GGML_TYPE_F32, 0);    /* [0, 64) */
    bb_tinfo(&x, "e", 2, (uint64_t[]){0, 3}, GGML_TYPE_F32, 32);   /* empty: holds no bytes */
    bb_tinfo(&x, "b", 1, ok, GGML_TYPE_F32, 32);         /* [32, 64): inside a */
    bb_pad(&x, 32); bb_zeros(&x, 128);
    expect_fail(&x, "tensors \"a\" and \"b\" overlap in the data section");
    /* tensor infos cut short, padding missing */
    bb_head(&x, 3, 1, 0); bb_str(&x, "t"); bb_u32(&x, 2); bb_u64(&x, 8);
    bb_zeros(&x, 16);   /* enough bytes for the count check, not for the info */
    expect_fail(&x, "file ends inside the info of tensor \"t\"");
    bb_head(&x, 3, 1, 0); bb_tinfo(&x, "t", 1, (uint64_t[]){0}, GGML_TYPE_F32, 0);
    expect_fail(&x, "file ends inside the padding before the tensor data");
}

/* Every prefix of a valid file (keys, arrays, tensors) fails with one line; none crashes. */
static void test_truncated_everywhere(void **state) {
    gguf_writer w;
    gguf_writer_init(&w);
    const char *strs[3] = {"a", "bc", ""};
    float d[64];
    fill(d, sizeof d, 3);
    int64_t ne[2] = {32, 2};
    assert_int_equal(gguf_w_str(&w, "general.architecture", "deepseek2"), MOE_OK);
    assert_int_equal(gguf_w_arr_str(&w, "tokens", strs, NULL, 3), MOE_OK);
    assert_int_equal(gguf_w_u32(&w, "n", 3), MOE_OK);
    assert_int_equal(gguf_w_tensor(&w, "w", 2, ne, GGML_TYPE_F32, d), MOE_OK);
    assert_int_equal(gguf_w_tensor(&w, "q", 2, ne, GGML_TYPE_Q8_0, d), MOE_OK);
    uint8_t *buf;
    size_t len;
    moe_error err = {{0}};
    assert_int_equal(gguf_write_buffer(&w, &buf, &len, &err), MOE_OK);
    gguf_writer_free(&w);
    gguf_file full;
    assert_int_equal(gguf_parse_buffer(&full, buf, len, PATH, &err), MOE_OK);
    const gguf_tensor *q = gguf_find_tensor(&full, "q");
    size_t end = (size_t)((const uint8_t *)q->data - buf) + q->n_bytes;   /* only the padding follows */
    gguf_close(&full);
    assert_true(end < len);
    for (size_t n = 0; n < end; n++) {
        gguf_file g;
        uint8_t *copy = malloc(n ? n : 1);
        memcpy(copy, buf, n);
        int rc = gguf_parse_buffer(&g, copy, n, PATH, &err);
        if (rc == MOE_OK) fprintf(stderr, "prefix of %zu of %zu bytes parsed\n", n, len);
        assert_int_equal(rc, MOE_FAIL);
        assert_int_equal(strncmp(err.msg, PATH ": ", strlen(PATH) + 2), 0);
        assert_null(strchr(err.msg, '\n'));
        assert_true(strstr(err.msg, "truncated") || strstr(err.msg, "too short") || strstr(err.msg, "more than the"));
        free(copy);
    }
    gguf_file g;
    assert_int_equal(gguf_parse_buffer(&g, buf, len, PATH, &err), MOE_OK);
    gguf_close(&g);
    free(buf);
}

static void test_open_errors(void **state) {
    gguf_file g;
    moe_error err = {{0}};
    assert_int_equal(gguf_open(&g, "/nonexistent/x.gguf", &err), MOE_FAIL);
    assert_non_null(strstr(err.msg, "/nonexistent/x.gguf: cannot open: No such file or directory"));
    assert_int_equal(gguf_open(&g, "tests", &err), MOE_FAIL);
    assert_non_null(strstr(err.msg, "tests: not a regular file"));
    assert_int_equal(gguf_open(&g, "tests/data/golden/tiny-bf16/config.json", &err), MOE_FAIL);
    assert_non_null(strstr(err.msg, "config.json: not a GGUF file"));
}

/* ====================================================================== config */

static const char *const fixtures[] = {"tiny-bf16", "tiny-yarn-fp8", "v2lite-f32", "mix-f32"};

/* gguf_config of the fixture equals config_load of the checkpoint, except what GGUF
 * does not hold (gguf_config.h): MTP layers (the converter drops them), model_type,
 * tie_word_embeddings (no tensors in a fixture), the FP8 block size; and, for mix-f32
 * only, moe_layer_freq 2, rope_interleave false and mscale != mscale_all_dim, which
 * llama.cpp cannot express (it gets the values llama.cpp would run with). */
static void test_config_fixtures(void **state) {
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) {
        char dir[256], path[256];
        snprintf(dir, sizeof dir, "tests/data/golden/%s", fixtures[i]);
        snprintf(path, sizeof path, "tests/data/gguf/%s.meta.gguf", fixtures[i]);
        moe_config want, got;
        moe_error err = {{0}};
        gguf_file g;
        assert_int_equal(config_load(&want, dir, &err), MOE_OK);
        int rc = gguf_open(&g, path, &err);
        if (rc) fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(rc, MOE_OK);
        rc = gguf_config(&g, &got, &err);
        if (rc) fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(rc, MOE_OK);
        gguf_close(&g);
        assert_int_equal(got.num_nextn_predict_layers, 0);
        assert_int_equal(got.tie_word_embeddings, 0);
        assert_int_equal(got.moe_layer_freq, 1);
        assert_int_equal(got.rope_interleave, 1);
        assert_true(got.yarn_mscale == got.yarn_mscale_all_dim);
        want.num_nextn_predict_layers = 0;
        want.tie_word_embeddings = 0;
        if (!strcmp(fixtures[i], "mix-f32")) {
            assert_int_equal(want.moe_layer_freq, 2);
            assert_int_equal(want.rope_interleave, 0);
            assert_true(want.yarn_mscale == 0.5);
            want.moe_layer_freq = 1;
            want.rope_interleave = 1;
            want.yarn_mscale = want.yarn_mscale_all_dim;
        }
        memcpy(got.model_type, want.model_type, sizeof got.model_type);
        if (strcmp(fixtures[i], "mix-f32")) assert_string_equal(got.model_type, want.model_type);
        got.fp8_block_rows = want.fp8_block_rows;
        got.fp8_block_cols = want.fp8_block_cols;
#define SAME(f) do { if (got.f != want.f) fprintf(stderr, "%s: " #f " differs\n", fixtures[i]); assert_true(got.f == want.f); } while (0)
        SAME(vocab_size); SAME(hidden_size); SAME(intermediate_size); SAME(moe_intermediate_size);
        SAME(num_hidden_layers); SAME(num_attention_heads); SAME(q_lora_rank); SAME(kv_lora_rank);
        SAME(qk_nope_head_dim); SAME(qk_rope_head_dim); SAME(v_head_dim); SAME(n_routed_experts);
        SAME(num_experts_per_tok); SAME(n_shared_experts); SAME(n_group); SAME(topk_group);
        SAME(routed_scaling_factor); SAME(scoring_func); SAME(topk_method); SAME(norm_topk_prob);
        SAME(first_k_dense_replace); SAME(rms_norm_eps); SAME(rope_theta); SAME(max_position_embeddings);
        SAME(rope_yarn); SAME(yarn_factor); SAME(yarn_original_max_pos); SAME(yarn_beta_fast);
        SAME(yarn_beta_slow); SAME(yarn_mscale); SAME(yarn_mscale_all_dim); SAME(bos_token_id); SAME(eos_token_id);
#undef SAME
        /* and every byte of the struct, now that the exceptions are aligned */
        assert_memory_equal(&got, &want, sizeof got);
    }
}

/* gguf_put_config writes the very keys, types and values llama.cpp's converter wrote. */
static void test_put_config_matches_converter(void **state) {
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) {
        char dir[256], path[256];
        snprintf(dir, sizeof dir, "tests/data/golden/%s", fixtures[i]);
        snprintf(path, sizeof path, "tests/data/gguf/%s.meta.gguf", fixtures[i]);
        moe_config c;
        moe_error err = {{0}};
        gguf_file ref, mine;
        gguf_writer w;
        uint8_t *buf;
        size_t len;
        assert_int_equal(config_load(&c, dir, &err), MOE_OK);
        gguf_writer_init(&w);
        assert_int_equal(gguf_put_config(&w, &c), MOE_OK);
        assert_int_equal(gguf_write_buffer(&w, &buf, &len, &err), MOE_OK);
        gguf_writer_free(&w);
        assert_int_equal(gguf_parse_buffer(&mine, buf, len, "mine", &err), MOE_OK);
        assert_int_equal(gguf_open(&ref, path, &err), MOE_OK);
        int compared = 0;
        for (int k = 0; k < ref.n_kv; k++) {
            const gguf_kv *r = &ref.kv[k];
            if (!strcmp(r->key, "general.file_type") ||
                (!strncmp(r->key, "tokenizer.", 10) && !strstr(r->key, "_token_id")))
                continue;
            const gguf_kv *m = gguf_find_kv(&mine, r->key);
            if (!m || m->v.type != r->v.type || m->v.n_bytes != r->v.n_bytes || memcmp(m->v.p, r->v.p, r->v.n_bytes))
                fprintf(stderr, "%s: key %s differs (%s)\n", fixtures[i], r->key, m ? "value" : "missing");
            assert_non_null(m);
            assert_int_equal(m->v.type, r->v.type);
            assert_int_equal(m->v.n_bytes, r->v.n_bytes);
            assert_memory_equal(m->v.p, r->v.p, r->v.n_bytes);
            compared++;
        }
        assert_int_equal(compared, mine.n_kv);   /* and no key of mine that the converter lacks */
        assert_true(compared >= 28);
        gguf_close(&ref);
        gguf_close(&mine);
        free(buf);
    }
}

/* A deepseek2 header with everything required, then `extra` (key, type, value bytes). */
static void config_error(void (*edit)(gguf_writer *), const char *want) {
    moe_config c;
    moe_error err = {{0}};
    gguf_writer w;
    gguf_file g;
    uint8_t *buf;
    size_t len;
    assert_int_equal(config_load(&c, "tests/data/golden/tiny-bf16", &err), MOE_OK);
    gguf_writer_init(&w);
    edit(&w);
    assert_int_equal(gguf_put_config(&w, &c), MOE_OK);
    assert_int_equal(gguf_write_buffer(&w, &buf, &len, &err), MOE_OK);
    gguf_writer_free(&w);
    assert_int_equal(gguf_parse_buffer(&g, buf, len, PATH, &err), MOE_OK);
    int rc = gguf_config(&g, &c, &err);
    expect_msg(rc, &err, want);
    assert_int_equal(strncmp(err.msg, PATH ": ", strlen(PATH) + 2), 0);
    gguf_close(&g);
    free(buf);
}

static void edit_nextn(gguf_writer *w) { gguf_w_u32(w, "deepseek2.nextn_predict_layers", 2); }
static void edit_rope_type(gguf_writer *w) { gguf_w_str(w, "deepseek2.rope.scaling.type", "linear"); }

/* A small deepseek2 header written key by key; `what` leaves out or spoils one part. */
static void hand_header(gguf_writer *w, const char *what) {
    if (strcmp(what, "no-arch")) gguf_w_str(w, "general.architecture", strcmp(what, "arch") ? "deepseek2" : "llama");
    if (strcmp(what, "str-blocks")) gguf_w_u32(w, "deepseek2.block_count", 2);
    else gguf_w_str(w, "deepseek2.block_count", "2");
    gguf_w_u32(w, "deepseek2.context_length", 4096);
    if (strcmp(what, "no-embd")) gguf_w_u32(w, "deepseek2.embedding_length", 64);
    if (!strcmp(what, "array-ff")) {
        uint32_t ff[2] = {128, 128};
        gguf_w_arr(w, "deepseek2.feed_forward_length", GGUF_VAL_U32, ff, 2);
    }
    gguf_w_u32(w, "deepseek2.attention.head_count", strcmp(what, "zero-heads") ? 4 : 0);
    gguf_w_u32(w, "deepseek2.attention.kv_lora_rank", 32);
    gguf_w_u32(w, "deepseek2.rope.dimension_count", 8);
    gguf_w_u32(w, "deepseek2.attention.key_length_mla", 24);
    gguf_w_u32(w, "deepseek2.attention.value_length_mla", 16);
    gguf_w_u32(w, "deepseek2.expert_count", 8);
    gguf_w_u32(w, "deepseek2.expert_used_count", strcmp(what, "topk") ? 2 : 9);
    gguf_w_u32(w, "deepseek2.expert_feed_forward_length", 32);
    gguf_w_f32(w, "deepseek2.attention.layer_norm_rms_epsilon", 1e-6f);
    if (!strcmp(what, "gating")) gguf_w_u32(w, "deepseek2.expert_gating_func", 3);
    if (strcmp(what, "no-vocab") && strncmp(what, "embd", 4)) gguf_w_u32(w, "deepseek2.vocab_size", 100);
    static float emb[64 * 7];
    int64_t ne[2] = {64, 7};
    if (!strncmp(what, "embd", 4)) gguf_w_tensor(w, "token_embd.weight", 2, ne, GGML_TYPE_F32, emb);
    if (!strcmp(what, "embd+output")) gguf_w_tensor(w, "output.weight", 2, ne, GGML_TYPE_F32, emb);
}

static int hand_config(const char *what, moe_config *c, moe_error *err) {
    gguf_writer w;
    uint8_t *buf;
    size_t len;
    gguf_file g;
    gguf_writer_init(&w);
    hand_header(&w, what);
    assert_int_equal(gguf_write_buffer(&w, &buf, &len, err), MOE_OK);
    gguf_writer_free(&w);
    assert_int_equal(gguf_parse_buffer(&g, buf, len, PATH, err), MOE_OK);
    int rc = gguf_config(&g, c, err);
    gguf_close(&g);
    free(buf);
    return rc;
}

static void test_config_errors(void **state) {
    config_error(edit_nextn, "deepseek2.nextn_predict_layers = 2 leaves no main layer of block_count = 2");
    /* rope scaling written before gguf_put_config: tiny-bf16 has none, so no duplicate */
    config_error(edit_rope_type, "deepseek2.rope.scaling.type \"linear\" is not supported (yarn, none)");
    static const struct { const char *what; const char *want; } cases[] = {
        {"no-arch", "missing required key \"general.architecture\""},
        {"arch", "general.architecture \"llama\" is not supported (only \"deepseek2\")"},
        {"no-embd", "missing required key \"deepseek2.embedding_length\""},
        {"str-blocks", "key \"deepseek2.block_count\" has type string, not an integer"},
        {"gating", "deepseek2.expert_gating_func = 3 is not supported (1 softmax, 2 sigmoid)"},
        {"array-ff", "key \"deepseek2.feed_forward_length\" is a per-layer array"},
        {"zero-heads", "key \"deepseek2.attention.head_count\" = 0 is out of range [1, 16777216]"},
        {"topk", "num_experts_per_tok = 9 must be in [1, n_routed_experts = 8]"},
        {"no-vocab", "no vocabulary size: none of deepseek2.vocab_size, tokenizer.ggml.tokens and token_embd.weight"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        moe_config c;
        moe_error err = {{0}};
        int rc = hand_config(cases[i].what, &c, &err);
        expect_msg(rc, &err, cases[i].want);
        assert_int_equal(strncmp(err.msg, PATH ": ", strlen(PATH) + 2), 0);
    }
}

/* The vocabulary size falls back to the token list, then to token_embd's ne[1]; a
 * file with token_embd and no output.weight has tied embeddings. */
static void test_config_vocab_and_tie(void **state) {
    moe_config c;
    moe_error err = {{0}};
    assert_int_equal(hand_config("ok", &c, &err), MOE_OK);
    assert_int_equal(c.vocab_size, 100);
    assert_int_equal(c.tie_word_embeddings, 0);
    assert_int_equal(c.num_hidden_layers, 2);
    assert_int_equal(c.qk_nope_head_dim, 16);
    assert_int_equal(c.n_group, 1);
    assert_int_equal(c.topk_method, TOPK_GREEDY);
    assert_int_equal(c.scoring_func, SCORE_SOFTMAX);
    assert_int_equal(c.bos_token_id, -1);
    assert_int_equal(hand_config("embd", &c, &err), MOE_OK);
    assert_int_equal(c.vocab_size, 7);
    assert_int_equal(c.tie_word_embeddings, 1);
    assert_int_equal(hand_config("embd+output", &c, &err), MOE_OK);
    assert_int_equal(c.tie_word_embeddings, 0);
}

/* ====================================================================== tokenizer */

/* Exports tokenizer.json (+ tokenizer_config.json) of dir as GGUF tokenizer metadata:
 * tokens by id (model.vocab, then added_tokens), their types (added special ->
 * control, other added -> user-defined, the rest normal), merges as "a b". */
static void export_tokenizer(gguf_writer *w, const char *dir, int *n_out) {
    char p[512];
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    json_error_t je;
    json_t *root = json_load_file(p, JSON_ALLOW_NUL, &je);
    assert_non_null(root);
    json_t *vocab = json_object_get(json_object_get(root, "model"), "vocab");
    json_t *merges = json_object_get(json_object_get(root, "model"), "merges");
    json_t *added = json_object_get(root, "added_tokens");
    int n = 0;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) if ((int)json_integer_value(v) + 1 > n) n = (int)json_integer_value(v) + 1;
    for (size_t i = 0; i < json_array_size(added); i++) {
        int id = (int)json_integer_value(json_object_get(json_array_get(added, i), "id"));
        if (id + 1 > n) n = id + 1;
    }
    const char **tok = calloc((size_t)n, sizeof *tok);
    size_t *tl = calloc((size_t)n, sizeof *tl);
    int32_t *ty = calloc((size_t)n, sizeof *ty);
    json_object_foreach(vocab, key, v) {
        int id = (int)json_integer_value(v);
        tok[id] = key;
        tl[id] = strlen(key);
        ty[id] = TOKENIZER_TOKEN_NORMAL;
    }
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i);
        int id = (int)json_integer_value(json_object_get(a, "id"));
        tok[id] = json_string_value(json_object_get(a, "content"));
        tl[id] = json_string_length(json_object_get(a, "content"));
        ty[id] = json_is_true(json_object_get(a, "special")) ? TOKENIZER_TOKEN_CONTROL : TOKENIZER_TOKEN_USER_DEFINED;
    }
    for (int i = 0; i < n; i++)
        if (!tok[i]) { tok[i] = "[PAD]"; tl[i] = 5; ty[i] = TOKENIZER_TOKEN_UNUSED; }
    size_t nm = json_array_size(merges);
    char **ms = calloc(nm + 1, sizeof *ms);
    for (size_t i = 0; i < nm; i++) {
        json_t *m = json_array_get(merges, i);
        if (json_is_string(m)) ms[i] = strdup(json_string_value(m));
        else {
            const char *a = json_string_value(json_array_get(m, 0)), *b = json_string_value(json_array_get(m, 1));
            ms[i] = malloc(strlen(a) + strlen(b) + 2);
            sprintf(ms[i], "%s %s", a, b);
        }
    }
    assert_int_equal(gguf_w_str(w, "tokenizer.ggml.model", "gpt2"), MOE_OK);
    assert_int_equal(gguf_w_str(w, "tokenizer.ggml.pre", "deepseek-v3"), MOE_OK);
    assert_int_equal(gguf_w_arr_str(w, "tokenizer.ggml.tokens", tok, tl, (uint64_t)n), MOE_OK);
    assert_int_equal(gguf_w_arr(w, "tokenizer.ggml.token_type", GGUF_VAL_I32, ty, (uint64_t)n), MOE_OK);
    assert_int_equal(gguf_w_arr_str(w, "tokenizer.ggml.merges", (const char *const *)ms, NULL, nm), MOE_OK);
    json_decref(root);
    /* bos/eos and the template from tokenizer_config.json, through the json tokenizer */
    tokenizer *t;
    moe_error err = {{0}};
    assert_int_equal(tokenizer_load(&t, dir, &err), MOE_OK);
    assert_int_equal(gguf_w_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)tokenizer_bos_id(t)), MOE_OK);
    assert_int_equal(gguf_w_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)tokenizer_eos_id(t)), MOE_OK);
    assert_int_equal(gguf_w_bool(w, "tokenizer.ggml.add_bos_token", tokenizer_add_bos(t)), MOE_OK);
    if (tokenizer_chat_template(t))
        assert_int_equal(gguf_w_str(w, "tokenizer.chat_template", tokenizer_chat_template(t)), MOE_OK);
    tokenizer_free(t);
    free(tok);
    free(tl);
    free(ty);
    for (size_t i = 0; i < nm; i++) free(ms[i]);
    free(ms);
    *n_out = n;
}

/* The tokenizer built from GGUF metadata encodes every golden line like the
 * tokenizer.json path (and the official library's ids). */
static void check_gguf_tokenizer(const char *dir, const char *golden) {
    gguf_writer w;
    int n;
    gguf_writer_init(&w);
    export_tokenizer(&w, dir, &n);
    uint8_t *buf;
    size_t len;
    moe_error err = {{0}};
    assert_int_equal(gguf_write_buffer(&w, &buf, &len, &err), MOE_OK);
    gguf_writer_free(&w);
    gguf_file g;
    double t0 = now_s();
    assert_int_equal(gguf_parse_buffer(&g, buf, len, "tok.gguf", &err), MOE_OK);
    tokenizer *tg, *tj;
    int rc = gguf_tokenizer(&g, &tg, &err);
    double t1 = now_s();
    if (rc) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, MOE_OK);
    gguf_close(&g);
    free(buf);   /* the tokenizer keeps copies */
    double t2 = now_s();
    assert_int_equal(tokenizer_load(&tj, dir, &err), MOE_OK);
    print_message("%s: from %zu bytes of GGUF metadata in %.0f ms, from tokenizer.json in %.0f ms\n", dir, len,
                  (t1 - t0) * 1e3, (now_s() - t2) * 1e3);
    assert_int_equal(tokenizer_vocab_size(tg), tokenizer_vocab_size(tj));
    assert_int_equal(tokenizer_bos_id(tg), tokenizer_bos_id(tj));
    assert_int_equal(tokenizer_eos_id(tg), tokenizer_eos_id(tj));
    assert_string_equal(tokenizer_bos_str(tg), tokenizer_bos_str(tj));
    assert_string_equal(tokenizer_eos_str(tg), tokenizer_eos_str(tj));
    assert_int_equal(tokenizer_add_bos(tg), tokenizer_add_bos(tj));
    assert_string_equal(tokenizer_chat_template(tg), tokenizer_chat_template(tj));
    for (int id = 0; id < tokenizer_vocab_size(tj); id++) {
        size_t lg = 0, lj = 0;
        const char *bg = tokenizer_token_bytes(tg, id, &lg), *bj = tokenizer_token_bytes(tj, id, &lj);
        assert_true((bg == NULL) == (bj == NULL));
        if (bj) { assert_int_equal(lg, lj); assert_memory_equal(bg, bj, lj); }
        assert_int_equal(tokenizer_is_special(tg, id), tokenizer_is_special(tj, id));
    }
    FILE *f = fopen(golden, "r");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int lines = 0, bad = 0;
    while ((got = getline(&line, &cap, f)) > 0) {
        json_error_t je;
        json_t *o = json_loadb(line, (size_t)got, JSON_ALLOW_NUL, &je);
        assert_non_null(o);
        json_t *jt = json_object_get(o, "text"), *jids = json_object_get(o, "ids");
        int *a, *b, na, nb;
        assert_int_equal(tokenizer_encode(tg, json_string_value(jt), json_string_length(jt), &a, &na, &err), MOE_OK);
        assert_int_equal(tokenizer_encode(tj, json_string_value(jt), json_string_length(jt), &b, &nb, &err), MOE_OK);
        int same = na == nb && !memcmp(a, b, sizeof(int) * (size_t)na) && na == (int)json_array_size(jids);
        for (int i = 0; same && i < na; i++) same = a[i] == (int)json_integer_value(json_array_get(jids, i));
        if (!same && bad++ < 5) fprintf(stderr, "%s line %d differs\n", golden, lines + 1);
        free(a);
        free(b);
        json_decref(o);
        lines++;
    }
    free(line);
    fclose(f);
    print_message("%s via GGUF metadata (%d tokens): %d lines, %d differ\n", dir, n, lines, bad);
    assert_true(lines > 1000);
    assert_int_equal(bad, 0);
    tokenizer_free(tg);
    tokenizer_free(tj);
}

static void test_tokenizer_toy(void **state) {
    check_gguf_tokenizer("models/toy", "tests/data/tokenizer/toy/golden.jsonl");
}

static void test_tokenizer_v3(void **state) {
    check_gguf_tokenizer("tests/data/tokenizer/deepseek_v3", "tests/data/tokenizer/deepseek_v3/golden.jsonl");
}

static void tok_error(const char *what, const char *want) {
    gguf_writer w;
    gguf_writer_init(&w);
    const char *toks[4] = {"a", "b", "ab", "<s>"};
    int32_t types[4] = {1, 1, 1, 3}, bad_types[3] = {1, 1, 1};
    const char *merges[1] = {!strcmp(what, "merge") ? "a c" : "a b"};
    gguf_w_str(&w, "tokenizer.ggml.model", !strcmp(what, "model") ? "llama" : "gpt2");
    gguf_w_str(&w, "tokenizer.ggml.pre", !strcmp(what, "pre") ? "qwen2" : "deepseek-v3");
    if (strcmp(what, "no-tokens")) gguf_w_arr_str(&w, "tokenizer.ggml.tokens", toks, NULL, 4);
    if (!strcmp(what, "types")) gguf_w_arr(&w, "tokenizer.ggml.token_type", GGUF_VAL_I32, bad_types, 3);
    else gguf_w_arr(&w, "tokenizer.ggml.token_type", GGUF_VAL_I32, types, 4);
    gguf_w_arr_str(&w, "tokenizer.ggml.merges", merges, NULL, 1);
    gguf_w_u32(&w, "tokenizer.ggml.bos_token_id", !strcmp(what, "bos") ? 4 : 3);
    uint8_t *buf;
    size_t len;
    moe_error err = {{0}};
    gguf_file g;
    tokenizer *t = NULL;
    assert_int_equal(gguf_write_buffer(&w, &buf, &len, &err), MOE_OK);
    gguf_writer_free(&w);
    assert_int_equal(gguf_parse_buffer(&g, buf, len, PATH, &err), MOE_OK);
    int rc = gguf_tokenizer(&g, &t, &err);
    if (!strcmp(what, "ok")) {
        assert_int_equal(rc, MOE_OK);
        int *ids, n;
        assert_int_equal(tokenizer_encode(t, "ab<s>ba", 7, &ids, &n, &err), MOE_OK);
        assert_int_equal(n, 4);
        assert_int_equal(ids[0], 2); assert_int_equal(ids[1], 3); assert_int_equal(ids[2], 1); assert_int_equal(ids[3], 0);
        free(ids);
        assert_int_equal(tokenizer_bos_id(t), 3);
        assert_string_equal(tokenizer_bos_str(t), "<s>");
        assert_true(tokenizer_is_special(t, 3));
        tokenizer_free(t);
    } else {
        expect_msg(rc, &err, want);
        assert_int_equal(strncmp(err.msg, PATH ": ", strlen(PATH) + 2), 0);
    }
    gguf_close(&g);
    free(buf);
}

static void test_tokenizer_errors(void **state) {
    tok_error("ok", NULL);
    tok_error("model", "tokenizer.ggml.model \"llama\" is not supported (only \"gpt2\": byte-level BPE)");
    tok_error("pre", "pre-tokenizer \"qwen2\" is not supported (deepseek-v3, deepseek-llm, gpt-2)");
    tok_error("no-tokens", "missing required key \"tokenizer.ggml.tokens\"");
    tok_error("types", "tokenizer.ggml.token_type has 3 entries for 4 tokens");
    tok_error("merge", "merge 0 names token 'c' that is not in the vocab");
    tok_error("bos", "tokenizer.ggml.bos/eos_token_id outside the 4 tokens");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_table),
        cmocka_unit_test(test_roundtrip_buffer),
        cmocka_unit_test(test_roundtrip_file_align64),
        cmocka_unit_test(test_roundtrip_align1),
        cmocka_unit_test(test_minimal_files),
        cmocka_unit_test(test_getters_types),
        cmocka_unit_test(test_writer_refuses),
        cmocka_unit_test(test_bad_header),
        cmocka_unit_test(test_bad_keys),
        cmocka_unit_test(test_bad_tensors),
        cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_config_fixtures),
        cmocka_unit_test(test_put_config_matches_converter),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_config_vocab_and_tie),
        cmocka_unit_test(test_tokenizer_toy),
        cmocka_unit_test(test_tokenizer_v3),
        cmocka_unit_test(test_tokenizer_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
