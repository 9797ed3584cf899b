/* batch.c - building a forward pass's batch (see batch.h). */
#include "batch.h"

#include <stdlib.h>
#include <string.h>

int batch_init(moe_batch *b, int cap, moe_error *err) {
    memset(b, 0, sizeof *b);
    if (cap < 1) return moe_error_set(err, "a batch holds at least one token (asked for %d)", cap);
    b->cap = cap;
    b->token = malloc(sizeof(int) * (size_t)cap);
    b->pos = malloc(sizeof(int) * (size_t)cap);
    b->seq = malloc(sizeof(int) * (size_t)cap);
    b->want = malloc((size_t)cap);
    if (!b->token || !b->pos || !b->seq || !b->want) {
        batch_free(b);
        return moe_error_set(err, "out of memory for a batch of %d tokens", cap);
    }
    return MOE_OK;
}

void batch_free(moe_batch *b) {
    free(b->token);
    free(b->pos);
    free(b->seq);
    free(b->want);
    memset(b, 0, sizeof *b);
}

int batch_add(moe_batch *b, int token, int pos, int seq, int want) {
    if (b->n >= b->cap) return -1;
    int i = b->n++;
    b->token[i] = token;
    b->pos[i] = pos;
    b->seq[i] = seq;
    b->want[i] = (unsigned char)(want != 0);
    return i;
}

int batch_add_seq(moe_batch *b, const int *tokens, int n, int pos, int seq, int all_logits) {
    if (n > b->cap - b->n) return -1;
    for (int t = 0; t < n; t++) batch_add(b, tokens[t], pos + t, seq, all_logits || t == n - 1);
    return 0;
}
