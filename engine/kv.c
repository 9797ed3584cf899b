/* kv.c - sequence slots of the latent KV cache (see kv.h). */
#include "kv.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "model.h"

int kv_dtype_parse(const char *s) {
    if (!strcmp(s, "f32")) return KV_F32;
    if (!strcmp(s, "bf16")) return KV_BF16;
    return -1;
}

const char *kv_dtype_name(kv_dtype d) { return d == KV_BF16 ? "bf16" : "f32"; }

int kv_init(moe_kv *kv, const moe_model *m, int n_slots, int S, moe_error *err) {
    memset(kv, 0, sizeof *kv);
    if (n_slots < 1) return moe_error_set(err, "the KV cache needs at least one sequence slot (asked for %d)", n_slots);
    if (S <= 0) S = model_context_len(m);
    kv->n_slots = n_slots;
    kv->n_layers = m->w.n_layers;
    kv->n_main = m->cfg.num_hidden_layers;
    kv->S = S;
    kv->width = m->cfg.kv_lora_rank + m->cfg.qk_rope_head_dim;
    kv->dtype = m->opt.kv_dtype;
    kv->value_bytes = kv->dtype == KV_BF16 ? sizeof(uint16_t) : sizeof(float);
    size_t per_pos = (size_t)kv->n_layers * (size_t)kv->width * kv->value_bytes, bytes;
    size_t avail = model_mem_available();
    if (__builtin_mul_overflow(per_pos, (size_t)S, &bytes) || __builtin_mul_overflow(bytes, (size_t)n_slots, &bytes) ||
        bytes > avail)
    {
        char slots[48] = "";
        if (n_slots > 1) snprintf(slots, sizeof slots, "%d slots x ", n_slots);
        return moe_error_set(err, "KV cache for %s%d tokens needs %.1f GiB but only %.1f GiB are available (lower --ctx%s)",
                             slots, S, (double)per_pos * S * n_slots / (1u << 30), (double)avail / (1u << 30),
                             n_slots > 1 ? " or --parallel" : "");
    }
    kv->bytes = bytes;
    kv->rows = calloc(1, bytes);
    kv->len = calloc((size_t)n_slots, sizeof(int));
    kv->mtp_len = calloc((size_t)n_slots, sizeof(int));
    if (!kv->rows || !kv->len || !kv->mtp_len) {
        kv_free(kv);
        return moe_error_set(err, "out of memory for the KV cache: %zu MiB for %d slots x %d positions x %d layers x %d values",
                             bytes >> 20, n_slots, S, m->w.n_layers, m->cfg.kv_lora_rank + m->cfg.qk_rope_head_dim);
    }
    return MOE_OK;
}

void kv_free(moe_kv *kv) {
    free(kv->rows);
    free(kv->len);
    free(kv->mtp_len);
    memset(kv, 0, sizeof *kv);
}

void kv_clear(moe_kv *kv, int slot) { kv->len[slot] = kv->mtp_len[slot] = 0; }

void kv_keep(moe_kv *kv, int slot, int n) {
    if (kv->len[slot] > n) kv->len[slot] = n;
    if (kv->mtp_len[slot] > n) kv->mtp_len[slot] = n;
}

void kv_copy_prefix(moe_kv *kv, int dst, int src, int n) {
    if (n > kv->len[src]) n = kv->len[src];
    int n_mtp = n < kv->mtp_len[src] ? n : kv->mtp_len[src];
    if (dst == src) { kv_keep(kv, dst, n); return; }
    size_t row = (size_t)kv->width * kv->value_bytes;
    for (int l = 0; l < kv->n_layers; l++)   /* main layers: n positions; MTP layers: what src has */
        memcpy(kv_row(kv, dst, l, 0), kv_row(kv, src, l, 0), row * (size_t)(l < kv->n_main ? n : n_mtp));
    kv->len[dst] = n;
    kv->mtp_len[dst] = n_mtp;
}

size_t kv_bytes_per_token(const moe_kv *kv) { return (size_t)kv->n_layers * kv->width * kv->value_bytes; }

void kv_store_row(moe_kv *kv, int slot, int layer, int pos, const float *row) {
    if (kv->dtype == KV_BF16) quantize_row_bf16(row, kv_row_bf16(kv, slot, layer, pos), kv->width);
    else memcpy(kv_row(kv, slot, layer, pos), row, sizeof(float) * (size_t)kv->width);
}

void kv_load_rows(const moe_kv *kv, int slot, int layer, int pos0, int n, float *out) {
    size_t count = (size_t)n * (size_t)kv->width;
    if (kv->dtype == KV_F32) { memcpy(out, kv_row(kv, slot, layer, pos0), sizeof(float) * count); return; }
    const uint16_t *src = kv_row_bf16(kv, slot, layer, pos0);
    for (size_t i = 0; i < count; i++) out[i] = bf16_to_f32(src[i]);
}
