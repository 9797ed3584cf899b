/* numa_place.c - NUMA topology, the placement plan, and acting on it (see numa_place.h).
 *
 * Legend
 *   k          a node index of the topology (0..n_nodes-1); os_node[k] is the kernel's
 *   page       the kernel's page size; mbind ranges are widened to whole pages
 *   prefault   reading one byte per page of a file-mapped range so that the page cache
 *              pages exist (allocated under the loading thread's interleave policy) and
 *              are mapped by us, which mbind(..., MPOL_MF_MOVE) needs to migrate them:
 *              the policy of a file mapping does not steer later page-cache allocations.
 */
#include "numa_place.h"

#include <errno.h>
#include <numa.h>
#include <numaif.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>

/* ------------------------------------------------------------------ modes */

const char *numa_mode_name(numa_mode m) {
    static const char *names[] = {"off", "interleave", "partition"};
    return m <= NUMA_PARTITION ? names[m] : "?";
}

int numa_mode_parse(const char *s) {
    for (int i = 0; i <= NUMA_PARTITION; i++)
        if (!strcmp(s, numa_mode_name((numa_mode)i))) return i;
    return -1;
}

/* ------------------------------------------------------------------ topology */

static void topology_one_node(numa_topology *t) {
    memset(t, 0, sizeof *t);
    t->n_nodes = 1;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        for (int c = 0; c < CPU_SETSIZE && t->n_cpus[0] < NUMA_MAX_CPUS; c++)
            if (CPU_ISSET(c, &set)) t->cpus[t->n_cpus[0]++] = c;
    }
    struct sysinfo si;
    if (sysinfo(&si) == 0) {
        t->mem_total[0] = (size_t)si.totalram * si.mem_unit;
        t->mem_free[0] = (size_t)si.freeram * si.mem_unit;
    }
}

int numa_topology_read(numa_topology *t, moe_error *err) {
    const char *sim = getenv("MOE_NUMA_SIMULATE");   /* N: pretend N nodes (tests, demos) */
    if (sim && *sim) {
        char *end;
        long n = strtol(sim, &end, 10);
        if (*end || n < 1 || n > NUMA_MAX_NODES)
            return moe_error_set(err, "MOE_NUMA_SIMULATE=%s: want a node count in [1, %d]", sim, NUMA_MAX_NODES);
        numa_topology real;
        topology_one_node(&real);
        int cpus[NUMA_MAX_NODES], per = real.n_cpus[0] / (int)n > 0 ? real.n_cpus[0] / (int)n : 1;
        for (int k = 0; k < n; k++) cpus[k] = per;
        numa_topology_simulate(t, (int)n, cpus, real.mem_total[0] / (size_t)n);
        for (int i = 0; i < per * n && real.n_cpus[0] > 0; i++) t->cpus[i] = real.cpus[i % real.n_cpus[0]];   /* real ids */
        return MOE_OK;
    }
    if (numa_available() < 0) {
        topology_one_node(t);
        return MOE_OK;
    }
    memset(t, 0, sizeof *t);
    struct bitmask *cpus = numa_allocate_cpumask();
    if (!cpus) return moe_error_set(err, "numa: out of memory");
    int max = numa_max_node(), ncpu = numa_num_configured_cpus();
    for (int node = 0; node <= max && t->n_nodes < NUMA_MAX_NODES; node++) {
        long long free_b = 0;
        long long total = numa_node_size64(node, &free_b);
        if (total <= 0) continue;                 /* no such node (or no memory) */
        int k = t->n_nodes++, first = k ? t->cpu_first[k - 1] + t->n_cpus[k - 1] : 0;
        t->os_node[k] = node;
        t->mem_total[k] = (size_t)total;
        t->mem_free[k] = (size_t)free_b;
        t->cpu_first[k] = first;
        numa_bitmask_clearall(cpus);
        if (numa_node_to_cpus(node, cpus) == 0)
            for (int c = 0; c < ncpu && first + t->n_cpus[k] < NUMA_MAX_CPUS; c++)
                if (numa_bitmask_isbitset(cpus, (unsigned)c)) t->cpus[first + t->n_cpus[k]++] = c;
    }
    numa_bitmask_free(cpus);
    if (t->n_nodes == 0) topology_one_node(t);
    return MOE_OK;
}

void numa_topology_simulate(numa_topology *t, int n_nodes, const int *cpus_per_node, size_t mem_per_node) {
    memset(t, 0, sizeof *t);
    if (n_nodes < 1) n_nodes = 1;
    if (n_nodes > NUMA_MAX_NODES) n_nodes = NUMA_MAX_NODES;
    t->n_nodes = n_nodes;
    t->simulated = 1;
    int c = 0;
    for (int k = 0; k < n_nodes; k++) {
        t->os_node[k] = 0;
        t->cpu_first[k] = c;
        for (int i = 0; i < cpus_per_node[k] && c < NUMA_MAX_CPUS; i++, c++) t->cpus[c] = c;
        t->n_cpus[k] = c - t->cpu_first[k];
        t->mem_total[k] = t->mem_free[k] = mem_per_node;
    }
}

/* ------------------------------------------------------------------ plan (pure) */

void numa_split_threads(const numa_topology *t, int n_threads, int *threads_on) {
    int total = 0, with_cpus = 0, given = 0;
    for (int k = 0; k < t->n_nodes; k++) { total += t->n_cpus[k]; with_cpus += t->n_cpus[k] > 0; threads_on[k] = 0; }
    if (total == 0) { threads_on[0] = n_threads; return; }
    long long rem[NUMA_MAX_NODES];
    for (int k = 0; k < t->n_nodes; k++) {   /* floor of the proportional share */
        long long q = (long long)n_threads * t->n_cpus[k];
        threads_on[k] = (int)(q / total);
        rem[k] = q % total;
        given += threads_on[k];
    }
    /* the floors leave fewer threads than nodes with a fraction: one more to each of the
     * largest remainders (lower node first on ties) */
    while (given < n_threads) {
        int best = -1;
        for (int k = 0; k < t->n_nodes; k++)
            if (t->n_cpus[k] > 0 && rem[k] >= 0 && (best < 0 || rem[k] > rem[best])) best = k;
        if (best < 0) best = 0;
        else rem[best] = -1;
        threads_on[best]++;
        given++;
    }
    if (n_threads >= with_cpus)                 /* every node with CPUs gets a thread */
        for (int k = 0; k < t->n_nodes; k++) {
            if (t->n_cpus[k] == 0 || threads_on[k] > 0) continue;
            int most = 0;
            for (int j = 1; j < t->n_nodes; j++) if (threads_on[j] > threads_on[most]) most = j;
            threads_on[most]--;
            threads_on[k]++;
        }
}

int numa_thread_node(const numa_plan *p, int thread, int n_threads) {
    int on[NUMA_MAX_NODES];
    const int *use = p->threads_on;
    if (n_threads != p->n_threads) {            /* another pool size (moe bench -t 1,2,...) */
        numa_split_threads(&p->topo, n_threads, on);
        use = on;
    }
    for (int k = 0, end = 0; k < p->topo.n_nodes; k++) {
        end += use[k];
        if (thread < end) return k;
    }
    return 0;
}

int numa_plan_make(numa_plan *p, const numa_topology *t, numa_mode mode, int n_layers, int n_moe_layers, int n_experts,
                   int n_group, size_t expert_bytes, int n_threads, moe_error *err) {
    memset(p, 0, sizeof *p);
    p->mode = mode;
    p->topo = *t;
    p->n_threads = n_threads < 1 ? 1 : n_threads;
    p->n_layers = n_layers;
    p->n_experts = n_experts;
    p->expert_bytes = expert_bytes;
    p->active = mode != NUMA_OFF && t->n_nodes > 1;
    numa_split_threads(t, p->n_threads, p->threads_on);
    if (!p->active || mode != NUMA_PARTITION || n_layers < 1 || n_experts < 1) return MOE_OK;
    /* the nodes that run threads, in order: block j of the experts goes to the j-th */
    int nodes[NUMA_MAX_NODES], A = 0;
    for (int k = 0; k < t->n_nodes; k++) if (p->threads_on[k] > 0) nodes[A++] = k;
    p->expert_node = malloc(sizeof(int) * (size_t)n_layers * (size_t)n_experts);
    if (!p->expert_node) return moe_error_set(err, "numa: out of memory for the expert plan");
    /* contiguous balanced blocks: [E*j/A, E*(j+1)/A). When A divides n_group these are
     * whole groups (E is a multiple of n_group), so a token's kept groups touch at most
     * topk_group nodes. Every layer gets the same blocks. */
    p->group_aligned = n_group > 1 && n_group % A == 0;
    for (int j = 0; j < A; j++) {
        int e0 = (int)((long long)n_experts * j / A), e1 = (int)((long long)n_experts * (j + 1) / A);
        for (int l = 0; l < n_layers; l++)
            for (int e = e0; e < e1; e++) p->expert_node[(size_t)l * n_experts + e] = nodes[j];
        p->bytes_on[nodes[j]] = (size_t)n_moe_layers * (size_t)(e1 - e0) * expert_bytes;
    }
    return MOE_OK;
}

void numa_plan_free(numa_plan *p) {
    for (int i = 0; i < p->n_bufs; i++)
        if (p->bufs[i]) munmap(p->bufs[i], p->buf_bytes[i]);
    free(p->bufs);
    free(p->buf_bytes);
    free(p->expert_node);
    memset(p, 0, sizeof *p);
}

/* ------------------------------------------------------------------ memory policy */

/* nodemask (unsigned long words) of the plan's OS nodes, or of os node `only` (>= 0). */
#define MASK_WORDS NUMA_MASK_WORDS
static unsigned long node_mask(const numa_topology *t, int only, unsigned long mask[MASK_WORDS]) {
    memset(mask, 0, sizeof(unsigned long) * MASK_WORDS);
    unsigned long maxnode = 0;
    for (int k = 0; k < t->n_nodes; k++) {
        int os = only >= 0 ? only : t->os_node[k];
        if (os < 0 || os >= MASK_WORDS * 64) continue;
        mask[os / 64] |= 1ul << (os % 64);
        if ((unsigned long)os + 1 > maxnode) maxnode = (unsigned long)os + 1;
    }
    return maxnode + 1;                 /* mbind/set_mempolicy count one past the highest */
}

void numa_load_begin(const numa_topology *t, numa_mode mode, numa_policy *saved) {
    memset(saved, 0, sizeof *saved);
    if (mode == NUMA_OFF || t->n_nodes < 2) return;
    if (get_mempolicy(&saved->mode, saved->mask, MASK_WORDS * 64, NULL, 0) != 0) return;
    saved->saved = 1;
    unsigned long mask[MASK_WORDS];
    unsigned long maxnode = node_mask(t, -1, mask);
    (void)set_mempolicy(MPOL_INTERLEAVE, mask, maxnode);   /* best effort: placement, not correctness */
}

void numa_load_end(const numa_policy *saved) {
    if (!saved->saved) return;
    if (saved->mode == MPOL_DEFAULT) (void)set_mempolicy(MPOL_DEFAULT, NULL, 0);
    else (void)set_mempolicy(saved->mode, saved->mask, MASK_WORDS * 64);
}

/* mbind over [ptr, ptr+bytes) widened to whole pages; after a prefault when `touch`. */
static void place_range(numa_plan *p, const void *ptr, size_t bytes, int policy, int only_node, int touch) {
    if (!ptr || !bytes) return;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)ptr / page * page, b = ((uintptr_t)ptr + bytes + page - 1) / page * page;
    if (touch) {
        unsigned sum = 0;
        for (uintptr_t q = (uintptr_t)ptr; q < (uintptr_t)ptr + bytes; q = (q / page + 1) * page)
            sum += *(volatile const unsigned char *)q;
        (void)sum;
    }
    unsigned long mask[MASK_WORDS];
    unsigned long maxnode = node_mask(&p->topo, only_node, mask);
    if (mbind((void *)a, b - a, policy, mask, maxnode, MPOL_MF_MOVE) != 0) {
        p->mbind_failed++;
        p->mbind_errno = errno;
    }
}

/* ------------------------------------------------------------------ placement */

typedef struct { const void *ptr; int index; } owned_ref;

static int ref_cmp(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)((const owned_ref *)a)->ptr, y = (uintptr_t)((const owned_ref *)b)->ptr;
    return x < y ? -1 : x > y;
}

/* Frees buffer `ptr` (nb bytes) if the weights own it (refs: w->owned sorted by address); 0 if
 * not owned. A matrix inside an owned chunk (WEIGHTS_CHUNK, weights.h) gives back the whole
 * pages it covers (MADV_DONTNEED); the chunk itself is freed with the weights. */
static int free_owned(moe_weights *w, const owned_ref *refs, const void *ptr, size_t nb) {
    size_t lo = 0, hi = (size_t)w->n_owned;   /* first ref above ptr */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if ((uintptr_t)refs[mid].ptr <= (uintptr_t)ptr) lo = mid + 1; else hi = mid;
    }
    if (lo == 0) return 0;
    const owned_ref *r = &refs[lo - 1];
    uintptr_t start = (uintptr_t)r->ptr, at = (uintptr_t)ptr;
    if (at == start && w->owned[r->index]) {
        free(w->owned[r->index]);
        w->owned[r->index] = NULL;
        return 1;
    }
    if (!w->owned[r->index] || at + nb > start + WEIGHTS_CHUNK) return 0;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = (at + page - 1) / page * page, b = (at + nb) / page * page;
    if (a < b) (void)madvise((void *)a, b - a, MADV_DONTNEED);
    return 1;
}

static size_t pad64(size_t n) { return (n + 63) / 64 * 64; }

/* The non-expert matrices of the weights (and, with experts != 0, the routed experts). */
static void interleave_weights(numa_plan *p, const moe_weights *w, int experts) {
    place_range(p, w->embed.data, mat_storage_bytes(&w->embed), MPOL_INTERLEAVE, -1, 1);
    p->bytes_interleaved += mat_storage_bytes(&w->embed);
    if (w->lm_head.data != w->embed.data) {   /* tied: the same table */
        place_range(p, w->lm_head.data, mat_storage_bytes(&w->lm_head), MPOL_INTERLEAVE, -1, 1);
        p->bytes_interleaved += mat_storage_bytes(&w->lm_head);
    }
    for (int l = 0; l < w->n_layers; l++) {
        const layer_weights *lw = &w->layers[l];
        const mat *m[] = {&lw->q_a, &lw->q_b, &lw->q, &lw->kv_a, &lw->kv_b, &lw->o, &lw->dense.gate, &lw->dense.up,
                          &lw->dense.down, &lw->router, &lw->shared.gate, &lw->shared.up, &lw->shared.down,
                          &lw->eh_proj, &lw->mtp_embed, &lw->mtp_head};
        for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
            if (!m[i]->data || m[i]->data == w->embed.data || m[i]->data == w->lm_head.data) continue;
            place_range(p, m[i]->data, mat_storage_bytes(m[i]), MPOL_INTERLEAVE, -1, 1);
            p->bytes_interleaved += mat_storage_bytes(m[i]);
        }
        for (int e = 0; experts && lw->is_moe && e < p->n_experts; e++) {
            const mat *x[] = {&lw->experts[e].gate, &lw->experts[e].up, &lw->experts[e].down};
            for (int i = 0; i < 3; i++) {
                place_range(p, x[i]->data, mat_storage_bytes(x[i]), MPOL_INTERLEAVE, -1, 1);
                p->bytes_interleaved += mat_storage_bytes(x[i]);
            }
        }
    }
}

/* Partition: each layer's experts of node k go into one buffer bound to node k. */
static int copy_experts(numa_plan *p, moe_weights *w, moe_error *err) {
    owned_ref *sorted = malloc(sizeof *sorted * (size_t)(w->n_owned > 0 ? w->n_owned : 1));
    int cap = w->n_layers * p->topo.n_nodes;
    p->bufs = calloc((size_t)cap, sizeof(void *));
    p->buf_bytes = calloc((size_t)cap, sizeof(size_t));
    if (!sorted || !p->bufs || !p->buf_bytes) { free(sorted); return moe_error_set(err, "numa: out of memory"); }
    for (int i = 0; i < w->n_owned; i++) sorted[i] = (owned_ref){ w->owned[i], i };
    qsort(sorted, (size_t)w->n_owned, sizeof *sorted, ref_cmp);
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (int l = 0; l < w->n_layers && l < p->n_layers; l++) {
        layer_weights *lw = &w->layers[l];
        if (!lw->is_moe) continue;
        for (int k = 0; k < p->topo.n_nodes; k++) {
            size_t bytes = 0;
            for (int e = 0; e < p->n_experts; e++)
                if (numa_expert_node(p, l, e) == k)
                    bytes += pad64(mat_storage_bytes(&lw->experts[e].gate)) + pad64(mat_storage_bytes(&lw->experts[e].up)) +
                             pad64(mat_storage_bytes(&lw->experts[e].down));
            if (!bytes) continue;
            bytes = (bytes + page - 1) / page * page;
            /* bind before the first touch: the copy's page faults then land on node k */
            void *buf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (buf == MAP_FAILED) {
                free(sorted);
                return moe_error_set(err, "numa: cannot allocate %.1f MiB for layer %d's experts on node %d",
                                     bytes / 1048576.0, l, p->topo.os_node[k]);
            }
            (void)madvise(buf, bytes, MADV_HUGEPAGE);   /* as the loader's chunks (weights.c) */
            p->bufs[p->n_bufs] = buf;
            p->buf_bytes[p->n_bufs++] = bytes;
            place_range(p, buf, bytes, MPOL_BIND, p->topo.os_node[k], 0);
            unsigned char *dst = buf;
            for (int e = 0; e < p->n_experts; e++) {
                if (numa_expert_node(p, l, e) != k) continue;
                mat *x[] = {&lw->experts[e].gate, &lw->experts[e].up, &lw->experts[e].down};
                for (int i = 0; i < 3; i++) {
                    size_t nb = mat_storage_bytes(x[i]);
                    memcpy(dst, x[i]->data, nb);
                    if (free_owned(w, sorted, x[i]->data, nb)) p->n_released++;
                    else {   /* a view of the file mapping */
                        p->bytes_from_map += nb;
                        w->bytes_mapped -= nb;
                        w->bytes_converted += nb;
                    }
                    x[i]->data = dst;
                    dst += pad64(nb);
                    p->bytes_copied += nb;
                }
            }
        }
    }
    free(sorted);
    return MOE_OK;
}

int numa_place_weights(numa_plan *p, moe_weights *w, moe_error *err) {
    if (!p->active) return MOE_OK;
    if (p->mode == NUMA_PARTITION && copy_experts(p, w, err)) return MOE_FAIL;
    numa_policy saved;
    numa_load_begin(&p->topo, p->mode, &saved);   /* pages touched for the first time: interleaved */
    interleave_weights(p, w, p->mode == NUMA_INTERLEAVE);
    numa_load_end(&saved);
    return MOE_OK;
}

/* ------------------------------------------------------------------ threads */

void numa_bind_thread(void *ctx, int thread, int n_threads) {
    numa_plan *p = ctx;
    int k = numa_thread_node(p, thread, n_threads);
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < p->topo.n_cpus[k]; i++)
        if (p->topo.cpus[p->topo.cpu_first[k] + i] < CPU_SETSIZE) CPU_SET(p->topo.cpus[p->topo.cpu_first[k] + i], &set);
    if (CPU_COUNT(&set) == 0 || pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0)
        __atomic_fetch_add(&p->bind_failed, 1, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ describe */

#define GIB(b) ((double)(b) / (1024.0 * 1024.0 * 1024.0))

/* "12.3 MiB" below a GiB, else "1.23 GiB" */
static const char *size_str(size_t b, char buf[32]) {
    if (b < ((size_t)1 << 30)) snprintf(buf, 32, "%.1f MiB", (double)b / 1048576.0);
    else snprintf(buf, 32, "%.2f GiB", GIB(b));
    return buf;
}

void numa_plan_describe(const numa_plan *p, char *buf, size_t cap) {
    const numa_topology *t = &p->topo;
    size_t n = 0;
#define PUT(...) do { if (n < cap) n += (size_t)snprintf(buf + n, cap - n, __VA_ARGS__); } while (0)
    if (t->n_nodes < 2) {
        PUT("numa: 1 node (node %d: %.1f GiB), --numa %s is a no-op", t->os_node[0], GIB(t->mem_total[0]),
            numa_mode_name(p->mode));
        return;
    }
    PUT("numa: %d %snodes (", t->n_nodes, t->simulated ? "simulated " : "");
    for (int k = 0; k < t->n_nodes; k++)
        PUT("%snode %d: %.1f GiB, %.1f free, %d CPUs", k ? "; " : "", t->simulated ? k : t->os_node[k],
            GIB(t->mem_total[k]), GIB(t->mem_free[k]), t->n_cpus[k]);
    PUT(") | --numa %s", numa_mode_name(p->mode));
    if (!p->active) return;
    PUT(": threads");
    for (int k = 0; k < t->n_nodes; k++) PUT("%s%d", k ? "+" : " ", p->threads_on[k]);
    char a[32], b[32];
    if (p->mode == NUMA_PARTITION) {
        PUT(", routed experts per node (%s blocks)", p->group_aligned ? "group-aligned" : "contiguous");
        for (int k = 0; k < t->n_nodes; k++) PUT("%s%s", k ? " + " : " ", size_str(p->bytes_on[k], a));
        PUT(", copied %s onto the nodes (%s of it from the file mapping, whose pages are now unused)",
            size_str(p->bytes_copied, a), size_str(p->bytes_from_map, b));
        for (int k = 0; k < t->n_nodes; k++)
            if (p->bytes_on[k] > t->mem_free[k])
                PUT(" WARNING: node %d has only %.1f GiB free", k, GIB(t->mem_free[k]));
    }
    PUT(", %s interleaved", size_str(p->bytes_interleaved, a));
    if (t->simulated) PUT(" (simulated: all memory on node 0)");
    if (p->mbind_failed) PUT(", mbind refused %d ranges (%s)", p->mbind_failed, strerror(p->mbind_errno));
    if (p->bind_failed) PUT(", %d threads could not be pinned", p->bind_failed);
#undef PUT
}
