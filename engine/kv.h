/* kv.h - the latent KV cache of every sequence slot.
 *
 * Notation: L main layers, Lm = L + MTP modules, S positions per slot, R kv_lora_rank,
 * dr qk_rope_head_dim. MLA caches, per layer and position, only the normalised latent
 * c_kv [R] and the rotated shared key k_pe [dr]: R + dr floats, whatever the head count.
 *
 * A slot is one sequence (a generation, a chat, a server user). Its main layers hold
 * positions [0, len[slot]); its MTP layers [0, mtp_len[slot]). A forward pass that writes a
 * sequence from position p0 on drops whatever the slot held from p0 (model.h).
 */
#ifndef MOE_KV_H
#define MOE_KV_H

#include <stddef.h>

#include "error.h"

struct moe_model;

typedef struct moe_kv {
    int n_slots;        /* slots (sequences) */
    int n_layers;       /* Lm: main layers then MTP modules */
    int n_main;         /* L: the first L layers are the main model's */
    int S;              /* positions per slot */
    int width;          /* R + dr floats per position */
    float *rows;        /* [n_slots][Lm][S][width]: c_kv [R] then k_pe [dr] */
    int *len;           /* [n_slots] positions the main layers hold */
    int *mtp_len;       /* [n_slots] positions the MTP layers hold */
    size_t bytes;       /* of rows */
} moe_kv;

/* n_slots slots of S positions each (S = 0: the model's context, model_context_len). Fails,
 * saying how much it needs, when that is more than the memory available. */
int kv_init(moe_kv *kv, const struct moe_model *m, int n_slots, int S, moe_error *err);
void kv_free(moe_kv *kv);

/* The cache row of (slot, layer, position): c_kv [R] then k_pe [dr]. */
static inline float *kv_row(const moe_kv *kv, int slot, int layer, int pos) {
    return kv->rows + (((size_t)slot * kv->n_layers + layer) * kv->S + pos) * kv->width;
}

void kv_clear(moe_kv *kv, int slot);                       /* len = mtp_len = 0 */
void kv_keep(moe_kv *kv, int slot, int n);                 /* keep positions [0, n) */
/* Makes slot dst hold src's first n positions (main and MTP layers as far as src has them). */
void kv_copy_prefix(moe_kv *kv, int dst, int src, int n);
/* Bytes of cache per position of one slot (all layers incl. MTP). */
size_t kv_bytes_per_token(const moe_kv *kv);

#endif
