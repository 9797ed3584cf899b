/* layout.h - the tensors of a DeepSeek-V3-family checkpoint, by role, and one table of
 * names per checkpoint layout.
 *
 * Notation as in config.h: V vocab, H hidden, nh heads, dn/dr/dv head dims, dq = dn + dr,
 * rq q_lora_rank, R kv_lora_rank, I dense width, Im expert width, Ns shared multiplier,
 * E experts, L main layers (MTP modules are layers L..).
 *
 * A role says what a tensor is (its shape follows from the config, layout_shape) and what
 * kind of weight it is (which decides its compute format, weights_target). A layout says
 * what the role is called in a file: a printf format taking the layer, then the expert.
 * Adding a checkpoint layout is one more table in layout.c; the loader (weights.c) and
 * `moe mkckpt` (tools/moe/ckpt_plan.c) both take names from here.
 */
#ifndef MOE_LAYOUT_H
#define MOE_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef enum {
    /* the model */
    T_EMBED,            /* [V, H]          token embedding */
    T_FINAL_NORM,       /* [H] */
    T_LM_HEAD,          /* [V, H] */
    /* per layer: attention */
    T_INPUT_NORM,       /* [H] */
    T_Q_A,              /* [rq, H]         (rq > 0) */
    T_Q_A_NORM,         /* [rq] */
    T_Q_B,              /* [nh*dq, rq] */
    T_Q,                /* [nh*dq, H]      (rq == 0) */
    T_KV_A,             /* [R + dr, H] */
    T_KV_A_NORM,        /* [R] */
    T_KV_B,             /* [nh*(dn+dv), R] rows head-major [dn K | dv V] */
    T_O,                /* [H, nh*dv] */
    T_POST_NORM,        /* [H] */
    /* per layer: feed-forward */
    T_DENSE_GATE,       /* [I, H] */
    T_DENSE_UP,         /* [I, H] */
    T_DENSE_DOWN,       /* [H, I] */
    T_ROUTER,           /* [E, H] */
    T_ROUTER_BIAS,      /* [E]             e_score_correction_bias */
    T_EXPERT_GATE,      /* [Im, H]         per expert */
    T_EXPERT_UP,        /* [Im, H] */
    T_EXPERT_DOWN,      /* [H, Im] */
    T_SHARED_GATE,      /* [Im*Ns, H] */
    T_SHARED_UP,        /* [Im*Ns, H] */
    T_SHARED_DOWN,      /* [H, Im*Ns] */
    /* per MTP module */
    T_MTP_EMBED,        /* [V, H]          (optional copy of T_EMBED) */
    T_MTP_ENORM,        /* [H] */
    T_MTP_HNORM,        /* [H] */
    T_MTP_EH_PROJ,      /* [H, 2H] */
    T_MTP_HEAD_NORM,    /* [H] */
    T_MTP_HEAD,         /* [V, H]          (optional copy of T_LM_HEAD) */
    /* llama.cpp's split of T_KV_B (GGUF): */
    T_K_B,              /* [nh, R, dn]     W_UK transposed per head */
    T_V_B,              /* [nh, dv, R]     W_UV per head */
    T_N_ROLES
} tensor_role;

/* What kind of weight a role is: decides its compute format (weights_target). */
typedef enum {
    KIND_PROJECTION,    /* a matrix multiplied by activations every token */
    KIND_HEAD,          /* an output head (lm_head, the MTP head): a projection too, read whole */
    KIND_TABLE,         /* one row read per token (embeddings), or small and decisive (the router) */
    KIND_VECTOR,        /* norms and biases: always f32 */
} tensor_kind;

typedef struct {
    const char *name;                  /* "Hugging Face safetensors" */
    const char *names[T_N_ROLES];      /* printf formats: (layer[, expert]); NULL = not in this layout */
    int experts_stacked;               /* the expert roles name one [E, rows, cols] tensor per layer */
    int kv_b_split;                    /* T_KV_B is stored as T_K_B + T_V_B (or, older files, as T_KV_B) */
} ckpt_layout;

extern const ckpt_layout LAYOUT_HF;
extern const ckpt_layout LAYOUT_GGUF;   /* llama.cpp's deepseek2 names */

tensor_kind layout_kind(tensor_role r);
/* The role's shape for cfg: rows x cols, or cols = 0 for a vector of `rows`. */
void layout_shape(const moe_config *cfg, tensor_role r, int64_t *rows, int64_t *cols);
/* The role's name in layout L for layer (and expert) into buf; NULL when L has no such tensor. */
const char *layout_name(const ckpt_layout *L, tensor_role r, int layer, int expert, char *buf, size_t n);

#endif
