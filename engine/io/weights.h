/* weights.h - Hugging Face tensor names -> moe_weights, in the compute format.
 *
 * Notation as in config.h: V vocab, H hidden, nh heads, dn/dr/dv head dims,
 * dq = dn + dr, rq q_lora_rank, R kv_lora_rank, I dense width, Im expert width,
 * Ns shared-expert multiplier, E experts.
 *
 * Every tensor the config implies is checked for presence, dtype and shape
 * before the first token. Matrices stay memory-mapped when the stored format is
 * the compute format (F32, BF16); otherwise they are converted once at load
 * (F16 -> F32, FP8 block-scaled -> F32, or to --dtype bf16/q8; a converted tensor's mapped
 * pages are released at once, st_tensor_release). Norm weights and
 * the router bias are always f32.
 */
#ifndef MOE_WEIGHTS_H
#define MOE_WEIGHTS_H

#include <stddef.h>

#include "config.h"
#include "error.h"
#include "kernels.h"
#include "gguf.h"
#include "layout.h"
#include "safetensors.h"

typedef enum {
    WEIGHTS_AUTO = 0,  /* keep F32/BF16 as stored (zero-copy); F16 and FP8 -> F32 (exact) */
    WEIGHTS_F32,       /* everything f32 (BF16 is widened: 2x memory) */
    WEIGHTS_BF16,      /* everything bf16 (F32/FP8 rounded) */
    WEIGHTS_Q8,        /* projections and output heads int8 blocks of 32 (router, embeddings stay bf16/f32) */
    WEIGHTS_Q4,        /* projections Q4_K (ggml's 4-bit k-quant, 4.5 bits/weight); output heads and rows
                        * not a whole 256-block Q8 (or bf16); tables bf16 */
} weights_dtype;
#define WEIGHTS_N_DTYPES (WEIGHTS_Q4 + 1)

typedef struct {
    mat gate;       /* [width, H] */
    mat up;         /* [width, H] */
    mat down;       /* [H, width] */
} mlp_weights;

typedef struct {
    /* attention (MLA) */
    const float *input_norm;    /* [H] input_layernorm */
    mat q_a;                    /* [rq, H]        (rq > 0) q_a_proj */
    const float *q_a_norm;      /* [rq]           q_a_layernorm */
    mat q_b;                    /* [nh*dq, rq]    q_b_proj, rows head-major [dn nope | dr rope] */
    mat q;                      /* [nh*dq, H]     (rq == 0) q_proj */
    mat kv_a;                   /* [R + dr, H]    kv_a_proj_with_mqa */
    const float *kv_a_norm;     /* [R]            kv_a_layernorm */
    mat kv_b;                   /* [nh*(dn+dv), R] kv_b_proj, rows head-major [dn K | dv V] */
    mat k_b;                    /* [nh*R, dn]     GGUF attn_k_b as stored (row h*R + r: W_UK[h]^T row r), the
                                                  decode product q_abs = W_UK^T q_nope; data NULL: use kv_b */
    mat v_b;                    /* [nh*dv, R]     GGUF attn_v_b as stored (= kv_b's W_UV rows); data NULL: kv_b */
    mat o;                      /* [H, nh*dv]     o_proj */
    const float *post_norm;     /* [H] post_attention_layernorm */
    /* feed-forward: dense or MoE */
    int is_moe;
    mlp_weights dense;          /* width I (dense layers) */
    mat router;                 /* [E, H] mlp.gate.weight */
    const float *router_bias;   /* [E] e_score_correction_bias, or NULL */
    mlp_weights *experts;       /* [E], width Im */
    int has_shared;
    mlp_weights shared;         /* width Im * Ns */
    /* MTP module only (layer index >= L) */
    const float *enorm;         /* [H] */
    const float *hnorm;         /* [H] */
    mat eh_proj;                /* [H, 2H] over [enorm(embedding); hnorm(hidden)] */
    const float *head_norm;     /* [H] shared_head.norm */
    mat mtp_embed;              /* [V, H] embed_tokens copy (falls back to the main one) */
    mat mtp_head;               /* [V, H] shared_head.head (falls back to lm_head) */
} layer_weights;

/* Converted matrices of up to WEIGHTS_CHUNK / 4 bytes are carved from owned chunks of this
 * size (2 MiB aligned, MADV_HUGEPAGE; weights.c); larger ones are owned buffers of their own. */
#define WEIGHTS_CHUNK ((size_t)64 << 20)

typedef struct {
    mat embed;                  /* [V, H] model.embed_tokens */
    layer_weights *layers;      /* [n_layers]; MTP modules at index L.. */
    int n_layers;               /* L + num_nextn_predict_layers */
    const float *final_norm;    /* [H] model.norm */
    mat lm_head;                /* [V, H] (the embedding when tied) */
    /* bookkeeping */
    st_set files;               /* the mapped checkpoint (safetensors) */
    gguf_file gguf;             /* or the mapped GGUF file */
    int is_gguf;
    void **owned;  int n_owned, cap_owned;   /* buffers made at load: a converted matrix is one
                                                 of them, or lies inside one of WEIGHTS_CHUNK bytes */
    size_t bytes_mapped;        /* weight bytes used straight from the mapping */
    size_t bytes_converted;     /* weight bytes held in converted buffers (copies included) */
    size_t bytes_copied;        /* of those, matrices copied as stored into huge pages (not --mmap) */
    int n_converted;            /* matrices converted */
    int n_q8_panels;            /* of those, Q8 matrices packed in 16-row panels (MAT_Q8P) */
} moe_weights;

typedef struct {
    weights_dtype dtype;
    /* Called now and then during a long load (done/total tensors); may be NULL. */
    void (*progress)(void *ctx, int done, int total);
    void *progress_ctx;
    /* Expert parallelism: holds(ctx, layer, e) == 0 leaves routed expert e of that layer
     * empty (rows 0, data NULL: not one byte of it read or converted). NULL: every expert. */
    int (*holds)(void *ctx, int layer, int expert);
    void *holds_ctx;
    /* --draft-dtype: the MTP module's format (its block and its own copy of the head), when
     * not WEIGHTS_AUTO and not `dtype`: a draft need only be likely, verification stays exact */
    weights_dtype mtp_dtype;
    /* threads converting a matrix at load (rows split between them; the bytes do not depend
     * on it): N > 0 splits every matrix over N; 0 = one per online CPU, matrices >= 1 M values */
    int threads;
    /* 1: matrices stored in their compute format are read straight from the file mapping
     * (zero-copy, the page cache's 4 KiB pages); 0 (default): the per-token products'
     * matrices are copied into 2 MiB-aligned MADV_HUGEPAGE buffers and their mapped pages
     * released (the same bytes; tables such as the embedding stay mapped) */
    int mmap_in_place;
} weights_options;

/* path: a checkpoint directory (safetensors) or a .gguf file (weights_is_gguf). */
int weights_load(moe_weights *w, const moe_config *cfg, const char *path, const weights_options *opt, moe_error *err);
/* Whether path names a GGUF file (a file starting with "GGUF", or an unreadable path ending in .gguf). */
int weights_is_gguf(const char *path);
/* The type-table type a ggml tensor type is read as; -1 when moe has no kernels for it. */
int weights_ggml_mat_type(uint32_t ggml);
void weights_free(moe_weights *w);
const char *weights_dtype_name(weights_dtype d);
/* Parses "auto" | "f32" | "bf16" | "q8"; returns -1 if unknown. */
int weights_dtype_parse(const char *s);

/* The compute format of a weight of `kind` with `cols` columns stored as the type-table type
 * `stored` (-1: a format the kernels do not read, e.g. safetensors F16 or FP8), under
 * --dtype d: the one rule the loader and `moe mkckpt --plan` share. */
mat_dtype weights_target(weights_dtype d, tensor_kind kind, int stored, int64_t cols);

/* Row r of an embedding-like matrix as f32. */
void mat_row_f32(const mat *W, int r, float *out);

#endif
