/* batch.h - what one forward pass runs: tokens of any sequences at any positions.
 *
 * Token i belongs to sequence (KV slot) seq[i] at position pos[i]; want[i] asks for its
 * logits. Per sequence, its tokens must stand in the batch at consecutive ascending
 * positions p0, p0+1, ..., with p0 <= what the slot holds (model.h model_forward).
 * A prefill chunk of one sequence and single decode tokens of others mix freely.
 */
#ifndef MOE_BATCH_H
#define MOE_BATCH_H

#include "error.h"

typedef struct {
    int n;                 /* tokens in the batch */
    int cap;               /* capacity */
    int *token;            /* [cap] token ids */
    int *pos;              /* [cap] absolute positions in their sequence */
    int *seq;              /* [cap] KV slot of the sequence */
    unsigned char *want;   /* [cap] 1: logits wanted for this token */
} moe_batch;

int batch_init(moe_batch *b, int cap, moe_error *err);
void batch_free(moe_batch *b);
static inline void batch_clear(moe_batch *b) { b->n = 0; }
/* Appends a token; returns its index, or -1 when the batch is full. */
int batch_add(moe_batch *b, int token, int pos, int seq, int want);
/* Appends tokens[0..n) of one sequence at positions pos.., wanting the logits of all of them
 * (all_logits) or of the last only; returns 0, or -1 when they do not fit. */
int batch_add_seq(moe_batch *b, const int *tokens, int n, int pos, int seq, int all_logits);

#endif
