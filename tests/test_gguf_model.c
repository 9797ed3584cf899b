/* test_gguf_model.c - models through GGUF files (engine/io/gguf_export.c writes them as
 * llama.cpp's converter lays them out, engine/io/weights.c reads them).
 *
 *   - every golden checkpoint deepseek2 GGUF can describe (mix-f32 cannot, and is refused), exported as F32 GGUF runs bit-identically to the same
 *     checkpoint loaded from safetensors with --dtype f32: logits of every position and the
 *     routing of every MoE layer (prefill and decode);
 *   - exported as BF16, tiny-bf16 (stored BF16) agrees with its safetensors run to 1e-6;
 *   - the toy model's tokenizer comes back from the GGUF metadata and encodes alike;
 *   - a GGUF without tensors (metadata only) fails to load with one line naming the first
 *     missing tensor;
 *   - the keys llama.cpp needs beyond its converter's (q_lora_rank 0, tokenizer model "none").
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "gguf_export.h"
#include "session.h"
#include "tokenizer.h"

#define GOLDEN "tests/data/golden/"
#define T 12
#define MAX_ROUTE (8 * T * 8)

typedef struct { int ids[MAX_ROUTE]; int n; } route_log;

static void log_route(void *ctx, int layer, int seq, int pos, const route_decision *d) {
    (void)seq;
    route_log *r = ctx;
    if (layer >= 8) return;   /* main layers only: the GGUF has no MTP block */
    for (int j = 0; j < d->k && r->n < MAX_ROUTE; j++) r->ids[r->n++] = layer * 100000 + pos * 1000 + d->ids[j];
}

/* Logits [T, V] and routing of `path` on fixed tokens, prefill or decode. */
static float *run(const char *path, weights_dtype dt, int decode, route_log *rl, int *V) {
    moe_session e;
    moe_error err = {{0}};
    model_options opt = { .max_seq = T, .dtype = dt, .batch_max = decode ? 1 : 16 };
    if (session_open(&e, path, &opt, 1, &err)) fail_msg("%s: %s", path, err.msg);
    *V = e.m.cfg.vocab_size;
    int tok[T];
    for (int t = 0; t < T; t++) tok[t] = (t * 37 + 5) % *V;
    float *logits = malloc(sizeof(float) * (size_t)T * *V);
    memset(rl, 0, sizeof *rl);
    e.c.on_route = log_route;
    e.c.on_route_ctx = rl;
    assert_int_equal(model_forward_seq(&e.m, &e.c, &e.kv, 0, tok, T, 0, logits, 1, NULL, &err), 0);
    session_close(&e);
    return logits;
}

static void export(const char *dir, uint32_t type, const char *out) {
    moe_session e;
    moe_error err = {{0}};
    model_options opt = { .max_seq = 4, .dtype = WEIGHTS_F32, .n_threads = 1 };
    if (session_open(&e, dir, &opt, 1, &err)) fail_msg("%s: %s", dir, err.msg);
    char tj[512];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", dir);
    if (gguf_export_model(&e.m, access(tj, R_OK) == 0 ? dir : NULL, type, out, &err)) fail_msg("export %s: %s", dir, err.msg);
    session_close(&e);
}

static void test_f32_bit_identical(void **state) {
    (void)state;
    static const char *cases[] = {"tiny-bf16", "tiny-yarn-fp8", "v2lite-f32", "v2lite-f16-shard"};
    char out[] = "/tmp/moe-gguf-XXXXXX";
    int fd = mkstemp(out);
    assert_true(fd >= 0);
    close(fd);
    for (int c = 0; c < 4; c++) {
        char dir[256];
        snprintf(dir, sizeof dir, GOLDEN "%s", cases[c]);
        export(dir, GGML_TYPE_F32, out);
        for (int decode = 0; decode < 2; decode++) {
            route_log *ra = malloc(sizeof *ra), *rb = malloc(sizeof *rb);
            int V;
            float *a = run(out, WEIGHTS_AUTO, decode, ra, &V), *b = run(dir, WEIGHTS_F32, decode, rb, &V);
            if (memcmp(a, b, sizeof(float) * (size_t)T * V)) fail_msg("%s: GGUF logits differ (decode %d)", cases[c], decode);
            assert_true(ra->n > 0);
            assert_int_equal(ra->n, rb->n);
            assert_memory_equal(ra->ids, rb->ids, sizeof(int) * (size_t)ra->n);
            free(a); free(b); free(ra); free(rb);
        }
    }
    unlink(out);
}

/* mix-f32 (MoE every other layer, half-split RoPE) cannot be said in deepseek2 GGUF: refused. */
static void test_unrepresentable_refused(void **state) {
    (void)state;
    moe_session e;
    moe_error err = {{0}};
    model_options opt = { .max_seq = 4, .dtype = WEIGHTS_F32, .n_threads = 1 };
    assert_int_equal(session_open(&e, GOLDEN "mix-f32", &opt, 1, &err), 0);
    assert_int_not_equal(gguf_export_model(&e.m, NULL, GGML_TYPE_F32, "/tmp/moe-gguf-never", &err), 0);
    assert_non_null(strstr(err.msg, "has no deepseek2 GGUF equivalent"));
    assert_int_not_equal(access("/tmp/moe-gguf-never", F_OK), 0);
    session_close(&e);
}

/* Keys llama.cpp requires that its converter leaves out (it refuses the file without them):
 * deepseek2.attention.q_lora_rank (0 for a full-rank q, v2lite-f32) and, without
 * tokenizer.json, tokenizer.ggml.model "none"; tiny-bf16 keeps its q_lora_rank. */
static void test_llamacpp_required_keys(void **state) {
    (void)state;
    static const struct { const char *dir; uint32_t q_lora; } cases[] = {{"v2lite-f32", 0}, {"tiny-bf16", 32}};
    for (int i = 0; i < 2; i++) {
        char dir[256], out[256], model[32];
        snprintf(dir, sizeof dir, GOLDEN "%s", cases[i].dir);
        snprintf(out, sizeof out, "/tmp/moe-test-keys-%d-%s.gguf", (int)getpid(), cases[i].dir);
        export(dir, GGML_TYPE_F32, out);
        gguf_file g;
        moe_error err = {{0}};
        uint32_t q = 99;
        assert_int_equal(gguf_open(&g, out, &err), 0);
        assert_int_equal(gguf_get_u32(&g, "deepseek2.attention.q_lora_rank", 1, 0, &q, &err), 0);
        assert_int_equal(q, cases[i].q_lora);
        assert_int_equal(gguf_get_strbuf(&g, "tokenizer.ggml.model", 1, "", model, sizeof model, &err), 0);
        assert_string_equal(model, "none");
        assert_null(gguf_find_kv(&g, "tokenizer.ggml.tokens"));
        gguf_close(&g);
        unlink(out);
    }
}

static void test_bf16_close(void **state) {
    (void)state;
    char out[] = "/tmp/moe-gguf-XXXXXX";
    int fd = mkstemp(out);
    assert_true(fd >= 0);
    close(fd);
    export(GOLDEN "tiny-bf16", GGML_TYPE_BF16, out);
    route_log *ra = malloc(sizeof *ra), *rb = malloc(sizeof *rb);
    int V;
    float *a = run(out, WEIGHTS_AUTO, 0, ra, &V), *b = run(GOLDEN "tiny-bf16", WEIGHTS_AUTO, 0, rb, &V);
    double num = 0, den = 0;
    for (size_t i = 0; i < (size_t)T * V; i++) { num = fmax(num, fabs((double)a[i] - b[i])); den = fmax(den, fabs((double)b[i])); }
    print_message("tiny-bf16 as BF16 GGUF vs safetensors: %.2e relative\n", num / den);
    assert_true(num / den < 1e-6);
    free(a); free(b); free(ra); free(rb);
    unlink(out);
}

static void test_toy_tokenizer_roundtrip(void **state) {
    (void)state;
    char out[] = "/tmp/moe-gguf-XXXXXX";
    int fd = mkstemp(out);
    assert_true(fd >= 0);
    close(fd);
    export("models/toy", GGML_TYPE_BF16, out);
    tokenizer *a, *b;
    moe_error err = {{0}};
    assert_int_equal(model_tokenizer_load(&a, out, &err), 0);
    assert_int_equal(model_tokenizer_load(&b, "models/toy", &err), 0);
    const char *text = "Once upon a time, the king's 3 daughters walked 1024 miles. \xe2\x9c\x93 <|end|>";
    int *ia, *ib, na, nb;
    assert_int_equal(tokenizer_encode(a, text, strlen(text), &ia, &na, &err), 0);
    assert_int_equal(tokenizer_encode(b, text, strlen(text), &ib, &nb, &err), 0);
    assert_int_equal(na, nb);
    assert_memory_equal(ia, ib, sizeof(int) * (size_t)na);
    assert_int_equal(tokenizer_bos_id(a), tokenizer_bos_id(b));
    assert_int_equal(tokenizer_eos_id(a), tokenizer_eos_id(b));
    free(ia); free(ib);
    tokenizer_free(a); tokenizer_free(b);
    unlink(out);
}

static void test_missing_tensors(void **state) {
    (void)state;
    moe_session e;
    moe_error err = {{0}};
    model_options opt = { .max_seq = 4 };
    assert_int_not_equal(session_open(&e, "tests/data/gguf/tiny-bf16.meta.gguf", &opt, 1, &err), 0);
    if (!strstr(err.msg, "tiny-bf16.meta.gguf") || !strstr(err.msg, "missing tensor \"token_embd.weight\""))
        fail_msg("error \"%s\"", err.msg);
    assert_null(strchr(err.msg, '\n'));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f32_bit_identical),
        cmocka_unit_test(test_unrepresentable_refused),
        cmocka_unit_test(test_bf16_close),
        cmocka_unit_test(test_toy_tokenizer_roundtrip),
        cmocka_unit_test(test_missing_tensors),
        cmocka_unit_test(test_llamacpp_required_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
