/* test_badinput.c - malformed checkpoints and configs end in one clear error
 * line naming the file and the problem, never a crash (this suite also runs
 * under ASan + UBSan, which turns any out-of-bounds read or leak into a failure).
 *
 * Each case builds a broken input in a temporary directory from the golden
 * checkpoint tests/data/golden/v2lite-f32 (or writes a safetensors file byte by byte),
 * loads it, and checks the error text.
 */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "chat.h"
#include "config.h"
#include "session.h"
#include "rope.h"
#include "safetensors.h"
#include "tokenizer.h"

#define BASE "tests/data/golden/v2lite-f32"
#define SHARDED "tests/data/golden/v2lite-f16-shard"

/* ------------------------------------------------------------------ helpers */

static char tmpdir[256];

static int setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/moe-badinput-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void path_in(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", tmpdir, name); }

static void write_bytes(const char *name, const void *data, size_t len) {
    char p[512];
    path_in(p, sizeof p, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static void link_file(const char *src_dir, const char *name) {
    char src[512], dst[512], abs_src[1024];
    snprintf(src, sizeof src, "%s/%s", src_dir, name);
    assert_non_null(realpath(src, abs_src));
    path_in(dst, sizeof dst, name);
    unlink(dst);
    assert_int_equal(symlink(abs_src, dst), 0);
}

/* Writes tmpdir/config.json = the base config with `patch` (a JSON object) merged in;
 * a key whose value is the string "<delete>" is removed. */
static void write_config(const char *patch) {
    json_error_t je;
    json_t *cfg = json_load_file(BASE "/config.json", 0, &je);
    assert_non_null(cfg);
    json_t *p = json_loads(patch, 0, &je);
    assert_non_null(p);
    const char *k;
    json_t *v;
    json_object_foreach(p, k, v) {
        if (json_is_string(v) && !strcmp(json_string_value(v), "<delete>")) json_object_del(cfg, k);
        else json_object_set(cfg, k, v);
    }
    char path[512];
    path_in(path, sizeof path, "config.json");
    assert_int_equal(json_dump_file(cfg, path, 0), 0);
    json_decref(cfg);
    json_decref(p);
}

/* Loads tmpdir as a model; expects failure whose message contains every given substring. */
static void expect_load_error(const char *want1, const char *want2) {
    moe_session m;
    moe_error err = {{0}};
    model_options opt = { .max_seq = 16 };
    int rc = session_open(&m, tmpdir, &opt, 1, &err);
    if (rc == 0) { session_close(&m); fail_msg("loaded, but expected an error containing \"%s\"", want1); }
    if (!strstr(err.msg, want1) || (want2 && !strstr(err.msg, want2)))
        fail_msg("error \"%s\" lacks \"%s\"/\"%s\"", err.msg, want1, want2 ? want2 : "");
    assert_null(strchr(err.msg, '\n'));     /* one line */
}

static void expect_config_error(const char *patch, const char *want) {
    write_config(patch);
    link_file(BASE, "model.safetensors");
    expect_load_error("config.json", want);
}

/* ------------------------------------------------------------------ config.json */

static void test_missing_config(void **state) {
    (void)state;
    link_file(BASE, "model.safetensors");
    expect_load_error("config.json", "cannot open");
}

static void test_config_not_json(void **state) {
    (void)state;
    write_bytes("config.json", "{\"hidden_size\": 64,,}", 21);
    link_file(BASE, "model.safetensors");
    expect_load_error("config.json", "invalid JSON at line 1");
}

static void test_config_missing_field(void **state) { (void)state; expect_config_error("{\"hidden_size\": \"<delete>\"}", "missing required field \"hidden_size\""); }
static void test_config_mistyped_field(void **state) { (void)state; expect_config_error("{\"hidden_size\": \"64\"}", "\"hidden_size\" must be an integer"); }
static void test_config_zero_dim(void **state) { (void)state; expect_config_error("{\"num_attention_heads\": 0}", "num_attention_heads"); }
static void test_config_negative_dim(void **state) { (void)state; expect_config_error("{\"kv_lora_rank\": -5}", "kv_lora_rank"); }
static void test_config_groups_not_dividing(void **state) { (void)state; expect_config_error("{\"n_group\": 5, \"topk_method\": \"noaux_tc\"}", "not divisible by n_group"); }
static void test_config_topk_group_too_large(void **state) { (void)state; expect_config_error("{\"n_group\": 4, \"topk_group\": 6, \"topk_method\": \"group_limited_greedy\"}", "topk_group = 6 is larger than n_group = 4"); }
static void test_config_topk_too_large(void **state) { (void)state; expect_config_error("{\"num_experts_per_tok\": 65}", "num_experts_per_tok = 65"); }
static void test_config_odd_rope(void **state) { (void)state; expect_config_error("{\"qk_rope_head_dim\": 7}", "must be even"); }
static void test_config_unknown_scoring(void **state) { (void)state; expect_config_error("{\"scoring_func\": \"relu\"}", "scoring_func \"relu\""); }
static void test_config_unknown_rope_scaling(void **state) { (void)state; expect_config_error("{\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}}", "rope_scaling type \"linear\""); }
/* fuzz_config (regress/config/yarn-beta-fast-zero.json): beta_fast 0 divided inside a log,
 * and the infinite correction dim was cast to int (UBSan: inf outside the range of int). */
static void test_config_yarn_beta_zero(void **state) { (void)state; expect_config_error("{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 40, \"beta_fast\": 0}}", "beta_fast and beta_slow must be > 0"); }
/* the same cast with finite betas: a theta barely above 1 makes the correction dims huge */
static void test_config_yarn_theta_near_one(void **state) {
    (void)state;
    moe_config c;
    moe_error err = {{0}};
    const char *j = "{\"vocab_size\": 16, \"hidden_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 1,"
                    " \"kv_lora_rank\": 4, \"qk_nope_head_dim\": 4, \"qk_rope_head_dim\": 8, \"v_head_dim\": 4,"
                    " \"rope_theta\": 1.0000001, \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4, \"beta_fast\": 1e-300}}";
    assert_int_equal(config_parse(&c, j, strlen(j), "config.json", &err), 0);
    rope_params r;
    assert_int_equal(rope_init(&r, &c, &err), 0);
    assert_true(r.yarn_low >= 0 && r.yarn_low <= 7 && r.yarn_high >= 0 && r.yarn_high <= 7.01);
}
static void test_config_huge_dim(void **state) { (void)state; expect_config_error("{\"vocab_size\": 4000000000}", "out of range"); }

/* ------------------------------------------------------------------ checkpoint vs config */

static void test_shape_disagrees_names_tensor(void **state) {
    (void)state;
    write_config("{\"moe_intermediate_size\": 48}");
    link_file(BASE, "model.safetensors");
    expect_load_error("model.safetensors", "has shape [32, 64] but the config implies [48, 64]");
}

static void test_missing_tensor(void **state) {
    (void)state;
    write_config("{\"num_hidden_layers\": 3}");
    link_file(BASE, "model.safetensors");
    expect_load_error("missing tensor", "model.layers.2.");
}

static void test_missing_weights_file(void **state) {
    (void)state;
    write_config("{}");
    expect_load_error("no model.safetensors", NULL);
}

static void test_missing_shard(void **state) {
    (void)state;
    link_file(SHARDED, "config.json");
    link_file(SHARDED, "model.safetensors.index.json");
    link_file(SHARDED, "model-00001-of-00003.safetensors");
    link_file(SHARDED, "model-00003-of-00003.safetensors");
    expect_load_error("model.safetensors.index.json", "model-00002-of-00003.safetensors\" named in the index is missing");
}

static void test_index_names_wrong_shard(void **state) {
    (void)state;
    link_file(SHARDED, "config.json");
    for (int i = 1; i <= 3; i++) {
        char n[64];
        snprintf(n, sizeof n, "model-%05d-of-00003.safetensors", i);
        link_file(SHARDED, n);
    }
    const char *idx = "{\"weight_map\": {\"model.norm.weight\": \"model-00001-of-00003.safetensors\","
                      " \"model.embed_tokens.weight\": \"model-00003-of-00003.safetensors\"}}";
    write_bytes("model.safetensors.index.json", idx, strlen(idx));
    moe_session m;
    moe_error err = {{0}};
    model_options opt = { .max_seq = 4 };
    if (session_open(&m, tmpdir, &opt, 1, &err) == 0) { session_close(&m); fail_msg("loaded a wrong index"); }
    assert_non_null(strstr(err.msg, "is not in shard"));
}

/* ------------------------------------------------------------------ safetensors files */

/* A safetensors file: 8-byte length, header, data. */
static void write_st(const char *name, const char *header, uint64_t claimed_len, size_t data_len) {
    size_t hl = strlen(header);
    size_t total = 8 + hl + data_len;
    unsigned char *buf = calloc(1, total);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(claimed_len >> (8 * i));
    memcpy(buf + 8, header, hl);
    write_bytes(name, buf, total);
    free(buf);
}

static void expect_st_error(const char *want) {
    char p[512];
    path_in(p, sizeof p, "x.safetensors");
    st_set s;
    moe_error err = {{0}};
    if (st_open_file(&s, p, &err) == 0) { st_close(&s); fail_msg("opened, but expected \"%s\"", want); }
    if (!strstr(err.msg, want) || !strstr(err.msg, "x.safetensors")) fail_msg("error \"%s\" lacks \"%s\"", err.msg, want);
}

static const char *good_header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";

static void test_st_valid(void **state) {   /* the control: a well-formed file opens */
    (void)state;
    write_st("x.safetensors", good_header, strlen(good_header), 16);
    char p[512];
    path_in(p, sizeof p, "x.safetensors");
    st_set s;
    moe_error err = {{0}};
    assert_int_equal(st_open_file(&s, p, &err), 0);
    const st_tensor *t = st_find(&s, "a");
    assert_non_null(t);
    assert_int_equal(t->numel, 4);
    assert_null(st_find(&s, "b"));
    st_close(&s);
}

static void test_st_too_short(void **state) { (void)state; write_bytes("x.safetensors", "abc", 3); expect_st_error("too short"); }
static void test_st_header_beyond_file(void **state) { (void)state; write_st("x.safetensors", good_header, 1000, 16); expect_st_error("beyond the end"); }
static void test_st_header_huge(void **state) { (void)state; write_st("x.safetensors", good_header, 1ull << 40, 16); expect_st_error("exceeds the 100 MB limit"); }
static void test_st_invalid_json(void **state) {
    (void)state;
    const char *h = "{\"a\":{\"dtype\":\"F32\",";
    write_st("x.safetensors", h, strlen(h), 16);
    expect_st_error("invalid header JSON");
}
static void test_st_not_object(void **state) { (void)state; write_st("x.safetensors", "[1,2]", 5, 0); expect_st_error("not a JSON object"); }
static void test_st_offsets_outside(void **state) {
    (void)state;
    const char *h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
    write_st("x.safetensors", h, strlen(h), 8);   /* only 8 data bytes */
    expect_st_error("outside the 8-byte data buffer");
}
static void test_st_overlap(void **state) {
    (void)state;
    const char *h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}";
    write_st("x.safetensors", h, strlen(h), 12);
    expect_st_error("overlap");
}
/* Found reading the code for issue 8: only neighbours were compared, so an empty tensor sorted
 * between two overlapping ones hid the overlap. */
static void test_st_overlap_hidden_by_empty(void **state) {
    (void)state;
    const char *h = "{\"a\":{\"dtype\":\"U8\",\"shape\":[100],\"data_offsets\":[0,100]},"
                    "\"e\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[10,10]},"
                    "\"c\":{\"dtype\":\"U8\",\"shape\":[10],\"data_offsets\":[50,60]}}";
    write_st("x.safetensors", h, strlen(h), 100);
    expect_st_error("tensors \"a\" and \"c\" overlap");
}
static void test_st_unknown_dtype(void **state) {
    (void)state;
    const char *h = "{\"a\":{\"dtype\":\"F7\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    write_st("x.safetensors", h, strlen(h), 8);
    expect_st_error("unknown dtype \"F7\"");
}
static void test_st_size_mismatch(void **state) {
    (void)state;
    const char *h = "{\"a\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,8]}}";
    write_st("x.safetensors", h, strlen(h), 8);
    expect_st_error("need 6");
}
static void test_st_bad_shape(void **state) {
    (void)state;
    const char *h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,8]}}";
    write_st("x.safetensors", h, strlen(h), 8);
    expect_st_error("invalid shape");
}
static void test_st_shape_overflow(void **state) {
    (void)state;
    const char *h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776,1099511627776],\"data_offsets\":[0,8]}}";
    write_st("x.safetensors", h, strlen(h), 8);
    expect_st_error("overflows");
}
static void test_st_duplicate_name(void **state) {
    (void)state;
    const char *h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
    write_st("x.safetensors", h, strlen(h), 8);
    expect_st_error("invalid header JSON");   /* jansson rejects duplicate keys */
}

/* A checkpoint whose safetensors is truncated mid-data (a partial download). */
static void test_truncated_checkpoint(void **state) {
    (void)state;
    write_config("{}");
    FILE *in = fopen(BASE "/model.safetensors", "rb");
    assert_non_null(in);
    fseek(in, 0, SEEK_END);
    long size = ftell(in);
    rewind(in);
    char *buf = malloc((size_t)size);
    assert_int_equal(fread(buf, 1, (size_t)size, in), (size_t)size);
    fclose(in);
    write_bytes("model.safetensors", buf, (size_t)size / 2);
    free(buf);
    expect_load_error("model.safetensors", "outside the");
}

/* ------------------------------------------------------------------ tokens */

static void test_token_out_of_vocab(void **state) {
    (void)state;
    moe_session m;
    moe_error err = {{0}};
    model_options opt = { .max_seq = 8 };
    assert_int_equal(session_open(&m, BASE, &opt, 1, &err), 0);
    int toks[3] = {5, 512, 7};
    assert_int_not_equal(model_forward_seq(&m.m, &m.c, &m.kv, 0, toks, 3, 0, NULL, 0, NULL, &err), 0);
    assert_non_null(strstr(err.msg, "token id 512"));
    int neg = -1;
    assert_int_not_equal(model_forward_seq(&m.m, &m.c, &m.kv, 0, &neg, 1, 0, NULL, 0, NULL, &err), 0);
    int ok[2] = {1, 2};
    assert_int_not_equal(model_forward_seq(&m.m, &m.c, &m.kv, 0, ok, 2, 7, NULL, 0, NULL, &err), 0);   /* 7..8 beyond context 8 */
    assert_non_null(strstr(err.msg, "context"));
    assert_int_equal(model_forward_seq(&m.m, &m.c, &m.kv, 0, ok, 2, 0, NULL, 0, NULL, &err), 0);       /* the control */
    session_close(&m);
}

/* ------------------------------------------------------------------ resource limits (issue 8) */

/* A header listing more than 2^20 tensors is refused before any tensor is looked at. */
static void test_st_too_many_tensors(void **state) {
    (void)state;
    size_t n = (1u << 20) + 1, cap = n * 12 + 16, len = 0;
    char *h = malloc(cap);
    assert_non_null(h);
    h[len++] = '{';
    for (size_t i = 0; i < n; i++) len += (size_t)snprintf(h + len, cap - len, "%s\"%zx\":0", i ? "," : "", i);
    h[len++] = '}';
    h[len] = 0;
    write_st("x.safetensors", h, len, 0);
    free(h);
    expect_st_error("more than the limit of 1048576");
}

/* Names from the file are quoted in errors: control characters must not break the line. */
static void test_st_newline_in_name(void **state) {
    (void)state;
    const char *h = "{\"a\\nb\\u001b[31m\":{\"dtype\":\"F7\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    write_st("x.safetensors", h, strlen(h), 8);
    expect_st_error("a?b?[31m\" has unknown dtype");
}

/* fuzz regression tests/fuzz/regress/st_index/newline-in-shard-name.json, via the real file API */
static void test_index_newline_in_shard_name(void **state) {
    (void)state;
    link_file(SHARDED, "config.json");
    const char *idx = "{\"weight_map\": {\"`\": \"mode?-00002-of-00002.safet\\nsors\"}}";
    write_bytes("model.safetensors.index.json", idx, strlen(idx));
    expect_load_error("model.safetensors.index.json", "safet?sors\" named in the index is missing");
}

/* A context whose KV cache exceeds the available memory fails before allocating. */
static void test_kv_cache_too_big(void **state) {
    (void)state;
    moe_session m;
    moe_error err = {{0}};
    model_options opt = { .max_seq = 1 << 30 };
    if (session_open(&m, BASE, &opt, 1, &err) == 0) { session_close(&m); fail_msg("a 2^30-token KV cache loaded"); }
    if (!strstr(err.msg, "KV cache for 1073741824 tokens needs") || !strstr(err.msg, "GiB are available (lower --ctx)"))
        fail_msg("error \"%s\"", err.msg);
    /* the same with the available memory pinned low (MOE_MEM_AVAILABLE, bytes) */
    setenv("MOE_MEM_AVAILABLE", "1000", 1);
    opt.max_seq = 64;
    int rc = session_open(&m, BASE, &opt, 1, &err);
    unsetenv("MOE_MEM_AVAILABLE");
    if (rc == 0) { session_close(&m); fail_msg("loaded with 1000 bytes available"); }
    assert_non_null(strstr(err.msg, "KV cache for 64 tokens needs"));
    opt.max_seq = 64;   /* the control */
    assert_int_equal(session_open(&m, BASE, &opt, 1, &err), 0);
    session_close(&m);
}

/* A tokenizer.json vocab id at or above 2^24 is refused (the per-id tables are sized by the
 * largest id: 2^30 - 1, accepted before, asked for about 9 GB). Added-token ids are assigned
 * as the library does (count-based), so the file cannot inflate them. */
static void test_tokenizer_huge_id(void **state) {
    (void)state;
    static const char *cases[][2] = {
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":2147483647},\"merges\":[]},"
         "\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}", "vocab entry 'a' has id 2147483647, outside [0, 16777216)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tokenizer *t = NULL;
        moe_error err = {{0}};
        int rc = tokenizer_load_buffer(&t, cases[i][0], strlen(cases[i][0]), "tokenizer.json", NULL, 0, NULL, &err);
        if (rc == 0) { tokenizer_free(t); fail_msg("loaded case %zu", i); }
        if (!strstr(err.msg, cases[i][1]) || !strstr(err.msg, "tokenizer.json")) fail_msg("error \"%s\"", err.msg);
    }
}

/* fuzz_tokenizer_json (regress/tokenizer_json/nul-in-structure-hang.json): a NUL byte between
 * JSON values inside "model" made the fast vocab/merges scanner loop forever. */
static void test_tokenizer_nul_hang(void **state) {
    (void)state;
    static const char j[] = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[],\"x\":[1, \0]},"
                            "\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}";
    tokenizer *t = NULL;
    moe_error err = {{0}};
    int rc = tokenizer_load_buffer(&t, j, sizeof j - 1, "tokenizer.json", NULL, 0, NULL, &err);
    if (rc == 0) { tokenizer_free(t); fail_msg("loaded a file with a NUL byte"); }
    if (!strstr(err.msg, "tokenizer.json")) fail_msg("error \"%s\"", err.msg);
}

/* fuzz_tokenizer_json (regress/tokenizer_json/empty-vocab-key-null-arena-ubsan.json): an
 * empty token "" as the first vocab entry was copied into the not yet allocated string
 * arena (NULL + 0: undefined behaviour, UBSan aborts under make test's sanitizer build). */
static void test_tokenizer_empty_key_first(void **state) {
    (void)state;
    static const char j[] = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"\":0,\"a\":1},\"merges\":[]},"
                            "\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}";
    tokenizer *t = NULL;
    moe_error err = {{0}};
    int rc = tokenizer_load_buffer(&t, j, sizeof j - 1, "tokenizer.json", NULL, 0, NULL, &err);
    if (rc == 0) tokenizer_free(t);
    else if (!strstr(err.msg, "tokenizer.json")) fail_msg("error \"%s\"", err.msg);
}

/* ------------------------------------------------------------------ hostile chat templates */

/* A chat template is code from the internet: nesting, loops, growth and integer overflow
 * are bounded, each with one line naming the config file (engine/text/chat.c, CHAT_MAX_*). */
static char *repeat(const char *head, const char *unit, int n, const char *tail) {
    size_t lh = strlen(head), lu = strlen(unit), lt = strlen(tail);
    char *s = malloc(lh + lu * (size_t)n + lt + 1), *p = s;
    memcpy(p, head, lh); p += lh;
    for (int i = 0; i < n; i++) { memcpy(p, unit, lu); p += lu; }
    memcpy(p, tail, lt + 1);
    return s;
}

#define DOUBLE40 "[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]"

static void test_chat_hostile_templates(void **state) {
    (void)state;
    char *gen[] = {
        repeat("{{ ", "(", 100000, "1 }}"),                  /* parser recursion */
        repeat("{{ 1", "+1", 100000, " }}"),                 /* a left-deep chain: eval recursion */
        repeat("{{ ", "not ", 100000, "1 }}"),
        repeat("{% if false %}", "{% elif false %}", 20000, "{% endif %}"),   /* elif chain: exec recursion */
        repeat("", "{% if true %}", 20000, ""),              /* block nesting */
    };
    const struct { const char *tmpl, *want; } cases[] = {
        {gen[0], "expression nested too deep"},
        {gen[1], "expression nested too deep"},
        {gen[2], "expression nested too deep"},
        {gen[3], "nested too deep"},
        {gen[4], "nested too deep"},
        {"{{ 99999999999999999999 }}", "integer literal too large"},
        {"{{ 9223372036854775807 + 1 }}", "integer overflow in '+'"},
        {"{{ (-9223372036854775807 - 1) * -1 }}", "integer overflow in '*'"},
        {"{{ -(-9223372036854775807 - 1) }}", "integer overflow in '-'"},
        {"{% set ns = namespace(x='ab') %}{% for i in " DOUBLE40 " %}{% set ns.x = ns.x + ns.x %}{% endfor %}", "text longer than 16 MB"},
        {"{% set ns = namespace(x='ab') %}{% for i in " DOUBLE40 " %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}", "text longer than 16 MB"},
        {"{% set ns = namespace(l=[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]) %}{% for i in [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1] %}{% set ns.l = ns.l + ns.l %}{% endfor %}", "list longer than 1000000 items"},
        {"{% set ns = namespace(l=[1,2,3,4,5,6,7,8,9,10]) %}{% for i in [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1] %}"
         "{% set ns.l = ns.l + ns.l %}{% endfor %}{% for a in ns.l %}{% for b in ns.l %}{% endfor %}{% endfor %}", "runs more than 1000000 steps"},
        {"{% set ns = namespace(s='x') %}{% for i in " DOUBLE40 " %}{{ ns.s }}{% set ns.s = ns.s + ns.s %}{% endfor %}", "longer than 16 MB"},
        {"{% set ns = namespace() %}{% set ns.me = ns %}", "contains ns"},
        {"{% set ns = namespace() %}{% set ns.me = [{'a': [ns]}] %}", "contains ns"},
        {"{% set ns = namespace(a=1) %}{% for i in " DOUBLE40 " %}{% set ns.a = [ns.a] %}{% endfor %}", "nested too deep"},
        {"{% set x = 1 %}{% for i in " DOUBLE40 " %}{% set x = [x] %}{% endfor %}", "nested too deep"},
        {"{{ 'ab\xff' }}", "string literal is not valid UTF-8"},   /* found by fuzz_chat: failed with an empty message */
    };
    chat_message msgs[1] = {{"user", "hi"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = NULL;
        moe_error err = {{0}};
        int rc = chat_render(cases[i].tmpl, "tokenizer_config.json", msgs, 1, 1, "<s>", "</s>", &out, &err);
        if (rc == 0) { free(out); fail_msg("case %zu rendered", i); }
        if (!strstr(err.msg, cases[i].want) || !strstr(err.msg, "tokenizer_config.json") || strchr(err.msg, '\n'))
            fail_msg("case %zu: error \"%s\" lacks \"%s\"", i, err.msg, cases[i].want);
    }
    for (size_t i = 0; i < sizeof gen / sizeof gen[0]; i++) free(gen[i]);
    /* the controls: ordinary arithmetic and a modest loop still work */
    char *out = NULL;
    moe_error err = {{0}};
    assert_int_equal(chat_render("{{ 9223372036854775807 }} {{ 7 % -3 }} {{ -7 % 3 }} {{ (-9223372036854775807 - 1) % -1 }}",
                                 "c", msgs, 1, 0, NULL, NULL, &out, &err), 0);
    assert_string_equal(out, "9223372036854775807 -2 2 0");
    free(out);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_missing_config), T(test_config_not_json), T(test_config_missing_field), T(test_config_mistyped_field),
        T(test_config_zero_dim), T(test_config_negative_dim), T(test_config_groups_not_dividing),
        T(test_config_topk_group_too_large), T(test_config_topk_too_large), T(test_config_odd_rope),
        T(test_config_unknown_scoring), T(test_config_unknown_rope_scaling), T(test_config_huge_dim),
        T(test_config_yarn_beta_zero), T(test_config_yarn_theta_near_one),
        T(test_shape_disagrees_names_tensor), T(test_missing_tensor),
        T(test_missing_weights_file), T(test_missing_shard), T(test_index_names_wrong_shard),
        T(test_st_valid), T(test_st_too_short), T(test_st_header_beyond_file), T(test_st_header_huge),
        T(test_st_invalid_json), T(test_st_not_object), T(test_st_offsets_outside), T(test_st_overlap), T(test_st_overlap_hidden_by_empty),
        T(test_st_unknown_dtype), T(test_st_size_mismatch), T(test_st_bad_shape), T(test_st_shape_overflow),
        T(test_st_duplicate_name), T(test_truncated_checkpoint), T(test_token_out_of_vocab),
        T(test_st_too_many_tensors), T(test_st_newline_in_name), T(test_index_newline_in_shard_name),
        T(test_kv_cache_too_big), T(test_tokenizer_huge_id), T(test_tokenizer_nul_hang), T(test_tokenizer_empty_key_first),
        T(test_chat_hostile_templates),
    };
    return cmocka_run_group_tests_name("bad input", tests, NULL, NULL);
}
