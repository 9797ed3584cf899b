/* ckpt_plan.h - named model shapes and the tensor plan of a DeepSeek-V3-family
 * checkpoint: every Hugging Face tensor name, its shape and how mkckpt fills it,
 * in the order of tools/reference/mkckpt.py tensor_plan(). Also the memory
 * arithmetic of `moe mkckpt --plan` (parameters, bytes per format, bytes read
 * per decoded token, KV cache per token).
 *
 * Notation as in engine/config.h.
 */
#ifndef MOE_CKPT_PLAN_H
#define MOE_CKPT_PLAN_H

#include <stdint.h>

#include "config.h"
#include "layout.h"

/* ---------------------------------------------------------------- shapes */

/* config.json text of a named shape ("S", "M", "v2-lite", "v3"), or NULL. */
const char *ckpt_shape_json(const char *name);
/* "S, M, v2-lite, v3" */
const char *ckpt_shape_names(void);

/* ---------------------------------------------------------------- plan */

typedef enum {
    INIT_EMBED,     /* N(0, 1) */
    INIT_NORM,      /* 1 + 0.15 N(0, 1) */
    INIT_LINEAR,    /* N(0, 1) * gain / sqrt(fan_in); fan_in = cols */
    INIT_BIAS,      /* clip(0.1 N(0, 1), -0.25, 0.25), always stored F32 */
} ckpt_init;

/* How a tensor takes part in one decoded token (for the bytes-per-token sum). */
typedef enum {
    USE_ALWAYS,     /* every main layer's attention, router, dense MLP, shared expert, lm_head */
    USE_EXPERT,     /* one routed expert: K of E are read per token */
    USE_ROW,        /* embedding: one row per token */
    USE_MTP,        /* only by the MTP head (not read by plain decoding) */
    USE_VECTOR,     /* norms and biases (f32 in the engine; counted, tiny) */
} ckpt_use;

typedef struct {
    char name[96];
    tensor_role role;         /* what it is (engine/io/layout.h): its name, shape and kind come from there */
    int64_t rows, cols;       /* 1-D tensors: rows = 1, ndim = 1 */
    int ndim;
    ckpt_init init;
    float gain;
    uint64_t seed_key;        /* hash of the name whose values this is (copies share the source's) */
    int projection;           /* stored FP8 by --dtype fp8, q8 by the engine's --dtype q8 */
    ckpt_use use;
    int expert_layer;         /* USE_EXPERT: layer index, else -1 */
} ckpt_tensor;

typedef struct {
    ckpt_tensor *t;
    int n, cap;
} ckpt_plan;

/* Builds the plan for cfg (main layers, then model.norm / lm_head, then MTP layers). */
int ckpt_plan_build(ckpt_plan *p, const moe_config *cfg, moe_error *err);
void ckpt_plan_free(ckpt_plan *p);

/* FNV-1a 64 of a tensor name (the per-tensor seed, with the user seed mixed in). */
uint64_t ckpt_name_hash(const char *name);

/* ---------------------------------------------------------------- sizes */

typedef enum { CK_F32, CK_BF16, CK_F16, CK_FP8, CK_N_DTYPES } ckpt_dtype;
const char *ckpt_dtype_name(ckpt_dtype d);
int ckpt_dtype_parse(const char *s);    /* -1 if unknown */

/* Bytes of tensor t in the file for dtype d, and of its FP8 scale tensor (0 if none).
 * fp8 blocks br x bc. */
uint64_t ckpt_tensor_bytes(const ckpt_tensor *t, ckpt_dtype d, int br, int bc);
uint64_t ckpt_scale_bytes(const ckpt_tensor *t, ckpt_dtype d, int br, int bc);

#endif
