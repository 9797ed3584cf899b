/* ep.c - expert-parallel helpers: the cross-rank hashes and the replica split (see ep.h). */
#include "ep.h"

#include <string.h>

uint64_t ep_hash_checkpoint(const char *config_text, size_t config_len, const st_set *tensors, const char *extra) {
    uint64_t h = ep_hash(EP_HASH_INIT, "moe-ep-1", 8);
    h = ep_hash(h, &config_len, sizeof config_len);
    if (config_text) h = ep_hash(h, config_text, config_len);
    int n = tensors ? tensors->n_tensors : 0;
    h = ep_hash(h, &n, sizeof n);
    for (int i = 0; i < n; i++) {
        const st_tensor *t = &tensors->tensors[i];
        int32_t dt = (int32_t)t->dtype, nd = t->ndim;
        uint64_t nb = t->nbytes;
        h = ep_hash(h, t->name, strlen(t->name) + 1);
        h = ep_hash(h, &dt, sizeof dt);
        h = ep_hash(h, &nd, sizeof nd);
        for (int d = 0; d < t->ndim; d++) h = ep_hash(h, &t->shape[d], sizeof t->shape[d]);
        h = ep_hash(h, &nb, sizeof nb);
    }
    if (extra) h = ep_hash(h, extra, strlen(extra) + 1);
    return h;
}

uint64_t ep_hash_route(uint64_t h, int layer, const int *ids, const float *weights, int n_slots) {
    h = ep_hash(h, &layer, sizeof layer);
    h = ep_hash(h, ids, sizeof(int) * (size_t)n_slots);
    return ep_hash(h, weights, sizeof(float) * (size_t)n_slots);
}

/* copies that get slots: never a share of one slot when the expert has two or more (a
 * single token runs the matvec kernel, whose bits differ from the matmul kernel's rows) */
static int active_copies(int n_e, int c) {
    if (n_e < 2) return 1;
    return c < n_e / 2 ? c : n_e / 2;
}

void ep_copy_range(int n_e, int c, int j, int *lo, int *hi) {
    int a = active_copies(n_e, c);
    if (j >= a) { *lo = *hi = n_e; return; }
    *lo = (int)((long long)n_e * j / a);
    *hi = (int)((long long)n_e * (j + 1) / a);
}

int ep_copy_of_slot(int n_e, int c, int i) {
    /* the j with n_e*j/a <= i < n_e*(j+1)/a: start from the estimate, then step */
    c = active_copies(n_e, c);
    int j = n_e ? (int)(((long long)i * c) / n_e) : 0;
    if (j >= c) j = c - 1;
    while (j > 0 && (long long)n_e * j / c > i) j--;
    while (j + 1 < c && (long long)n_e * (j + 1) / c <= i) j++;
    return j;
}

int ep_slot_rank(const eplb_plan *p, int l, int e, int n_e, int i) {
    const int E = p->n_experts, P = p->n_slots;
    int c = p->copies[(size_t)l * E + e], j = c > 1 ? ep_copy_of_slot(n_e, c, i) : 0;
    for (int s = 0; s < P; s++) {
        size_t at = (size_t)l * P + s;
        if (p->slot_expert[at] == e && p->slot_replica[at] == j) return p->slot_rank[at];
    }
    return -1;
}
