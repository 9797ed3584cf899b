/* kv.h - the latent KV cache of every sequence slot.
 *
 * Notation: L main layers, Lm = L + MTP modules, S positions per slot, R kv_lora_rank,
 * dr qk_rope_head_dim. MLA caches, per layer and position, only the normalised latent
 * c_kv [R] and the rotated shared key k_pe [dr]: R + dr floats, whatever the head count.
 *
 * Values are f32 (exact, the default) or bf16 (--kv-dtype bf16: half the bytes per position,
 * each value rounded to nearest even when it is written; readers widen it back exactly).
 *
 * A slot is one sequence (a generation, a chat, a server user). Its main layers hold
 * positions [0, len[slot]); its MTP layers [0, mtp_len[slot]). A forward pass that writes a
 * sequence from position p0 on drops whatever the slot held from p0 (model.h).
 */
#ifndef MOE_KV_H
#define MOE_KV_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

struct moe_model;

typedef enum { KV_F32 = 0, KV_BF16 = 1 } kv_dtype;

/* "f32" / "bf16" -> kv_dtype; -1 for anything else. */
int kv_dtype_parse(const char *s);
const char *kv_dtype_name(kv_dtype d);

typedef struct moe_kv {
    int n_slots;        /* slots (sequences) */
    int n_layers;       /* Lm: main layers then MTP modules */
    int n_main;         /* L: the first L layers are the main model's */
    int S;              /* positions per slot */
    int width;          /* R + dr values per position */
    kv_dtype dtype;     /* how a value is stored (the model's opt.kv_dtype) */
    size_t value_bytes; /* 4 (f32) or 2 (bf16) */
    void *rows;         /* [n_slots][Lm][S][width] of dtype: c_kv [R] then k_pe [dr] */
    int *len;           /* [n_slots] positions the main layers hold */
    int *mtp_len;       /* [n_slots] positions the MTP layers hold */
    size_t bytes;       /* of rows */
} moe_kv;

/* n_slots slots of S positions each (S = 0: the model's context, model_context_len), values
 * of m->opt.kv_dtype. Fails, saying how much it needs, when that is more than the memory
 * available. */
int kv_init(moe_kv *kv, const struct moe_model *m, int n_slots, int S, moe_error *err);
void kv_free(moe_kv *kv);

/* The cache row of (slot, layer, position): c_kv [R] then k_pe [dr], as stored. */
static inline void *kv_row_ptr(const moe_kv *kv, int slot, int layer, int pos) {
    return (char *)kv->rows + (((size_t)slot * kv->n_layers + layer) * kv->S + pos) * kv->width * kv->value_bytes;
}
/* The same for a cache of that type (the caller checked kv->dtype). */
static inline float *kv_row(const moe_kv *kv, int slot, int layer, int pos) { return kv_row_ptr(kv, slot, layer, pos); }
static inline uint16_t *kv_row_bf16(const moe_kv *kv, int slot, int layer, int pos) {
    return kv_row_ptr(kv, slot, layer, pos);
}
/* Writes one position's row [width] (rounded to bf16 for a bf16 cache). */
void kv_store_row(moe_kv *kv, int slot, int layer, int pos, const float *row);
/* Rows [pos0, pos0 + n) of (slot, layer) widened to f32 into out [n][width]. */
void kv_load_rows(const moe_kv *kv, int slot, int layer, int pos0, int n, float *out);

void kv_clear(moe_kv *kv, int slot);                       /* len = mtp_len = 0 */
void kv_keep(moe_kv *kv, int slot, int n);                 /* keep positions [0, n) */
/* Makes slot dst hold src's first n positions (main and MTP layers as far as src has them). */
void kv_copy_prefix(moe_kv *kv, int dst, int src, int n);
/* Bytes of cache per position of one slot (all layers incl. MTP), at its dtype. */
size_t kv_bytes_per_token(const moe_kv *kv);

#endif
