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

/* shares that get slots: never a share of one slot when the expert has two or more (a
 * single token runs the matvec kernel, whose bits differ from the matmul kernel's rows) */
static int active_shares(int n_e, int h) {
    if (n_e < 2) return 1;
    return h < n_e / 2 ? h : n_e / 2;
}

void ep_share_range(int n_e, int h, int rot, int j, int *lo, int *hi) {
    int a = active_shares(n_e, h), k = ((j - rot) % h + h) % h;
    if (k >= a) { *lo = *hi = n_e; return; }
    *lo = (int)((long long)n_e * k / a);
    *hi = (int)((long long)n_e * (k + 1) / a);
}

int ep_holder_of_slot(int n_e, int h, int rot, int i) {
    /* the share k with n_e*k/a <= i < n_e*(k+1)/a: start from the estimate, then step */
    int a = active_shares(n_e, h);
    int k = n_e ? (int)(((long long)i * a) / n_e) : 0;
    if (k >= a) k = a - 1;
    while (k > 0 && (long long)n_e * k / a > i) k--;
    while (k + 1 < a && (long long)n_e * (k + 1) / a <= i) k++;
    return (int)(((long long)k + rot) % h);
}

int ep_holders(const eplb_plan *p, int l, int e, int *ranks) {
    const int P = p->n_slots;
    int h = 0;
    for (int s = 0; s < P; s++) {
        size_t at = (size_t)l * P + s;
        if (p->slot_expert[at] != e) continue;
        int r = p->slot_rank[at], k = h;
        for (int q = 0; q < h; q++) if (ranks[q] == r) { k = -1; break; }
        if (k < 0) continue;
        while (k > 0 && ranks[k - 1] > r) { ranks[k] = ranks[k - 1]; k--; }   /* ascending */
        ranks[k] = r;
        h++;
    }
    return h;
}

int ep_slot_rank(const eplb_plan *p, int l, int e, int n_e, int rot, int i) {
    int ranks[EPLB_MAX_RANKS], h = ep_holders(p, l, e, ranks);
    return h ? ranks[ep_holder_of_slot(n_e, h, rot, i)] : -1;
}
