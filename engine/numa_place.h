/* numa_place.h - NUMA placement of the weights and the threads (--numa interleave|partition|off).
 * (Not "numa.h": with -Iengine that name would hide libnuma's <numa.h>.)
 *
 * Legend
 *   topology   the machine's nodes: CPUs and memory of each (libnuma), or a simulated
 *              one built by hand (tests: 2 or 4 nodes on a one-node machine, whose
 *              memory all comes from real node 0 and whose CPUs are real CPU ids).
 *   plan       a pure function of (topology, mode, shape, threads): which node holds
 *              each routed expert of each layer, how many pool threads run on each
 *              node, and the expert bytes per node. No system calls: testable anywhere.
 *   place      acting on a plan (libnuma / mbind): interleave pages over the nodes, copy
 *              each expert to its node, pin each pool thread to its node's CPUs.
 *
 * Modes
 *   off         nothing is done (the default).
 *   interleave  every weight page is spread round-robin over the nodes (the loading
 *               thread's policy while converting, mbind(MPOL_INTERLEAVE, MPOL_MF_MOVE) on
 *               the file mapping after touching its pages); threads are pinned per node.
 *   partition   layer by layer, the routed experts are cut into contiguous balanced
 *               blocks, one per node that has threads (aligned to the router's expert
 *               groups whenever the number of groups is a multiple of the nodes), and
 *               each block is COPIED into memory on its node (the file mapping's pages
 *               are then unused: the page cache keeps them until the kernel needs the
 *               memory); everything else (attention, shared expert, dense layers,
 *               embeddings, heads) is interleaved as above. The MoE dispatch (moe.c) lets
 *               a node's threads run that node's experts first, then help elsewhere.
 *
 * On a machine with one node every mode is a no-op (and numa_plan_describe says so).
 * Results do not depend on the mode: the MoE reduction order is fixed (moe.c).
 */
#ifndef MOE_NUMA_PLACE_H
#define MOE_NUMA_PLACE_H

#include <stddef.h>

#include "error.h"
#include "weights.h"

#define NUMA_MAX_NODES 64
#define NUMA_MAX_CPUS 4096

typedef enum { NUMA_OFF = 0, NUMA_INTERLEAVE, NUMA_PARTITION } numa_mode;

typedef struct {
    int n_nodes;                        /* nodes, numbered 0..n_nodes-1 here */
    int os_node[NUMA_MAX_NODES];        /* the OS node its memory comes from (simulated: 0) */
    int n_cpus[NUMA_MAX_NODES];         /* CPUs of node k: cpus[cpu_first[k] ..] */
    int cpu_first[NUMA_MAX_NODES];
    int cpus[NUMA_MAX_CPUS];
    size_t mem_total[NUMA_MAX_NODES];   /* bytes */
    size_t mem_free[NUMA_MAX_NODES];
    int simulated;
} numa_topology;

typedef struct {
    numa_mode mode;                     /* as asked */
    int active;                         /* 0: a no-op (mode off, or one node) */
    numa_topology topo;
    int n_threads;                      /* pool threads the plan was made for */
    int threads_on[NUMA_MAX_NODES];     /* pool threads per node (threads 0.. go to node 0 first) */
    int n_layers, n_experts;            /* expert_node is [n_layers][n_experts] */
    int *expert_node;                   /* partition: node of each routed expert; NULL otherwise */
    int group_aligned;                  /* partition: node blocks are whole router groups */
    size_t expert_bytes;                /* bytes of one routed expert (gate + up + down) */
    size_t bytes_on[NUMA_MAX_NODES];    /* partition: routed-expert bytes planned per node */
    /* filled by numa_place_weights and the thread hook */
    size_t bytes_copied;                /* expert bytes copied onto their nodes */
    size_t bytes_from_map;              /*   of which were zero-copy views of the file */
    int n_released;                     /* converted originals given back after their copy */
    size_t bytes_interleaved;           /* bytes given the interleave policy */
    int mbind_failed, mbind_errno;      /* ranges the kernel refused to place */
    int bind_failed;                    /* threads that could not be pinned */
    void **bufs;                        /* node buffers (mmap), one per (layer, node) */
    size_t *buf_bytes;
    int n_bufs;
} numa_plan;

const char *numa_mode_name(numa_mode m);
int numa_mode_parse(const char *s);   /* "off" | "interleave" | "partition", else -1 */

/* The machine as libnuma sees it (one node with every allowed CPU when libnuma is unavailable).
 * The environment variable MOE_NUMA_SIMULATE=N replaces it with N simulated nodes that
 * share this machine's memory and CPUs (numa_topology_simulate): for tests and demos. */
int numa_topology_read(numa_topology *t, moe_error *err);
/* A hand-made topology: n_nodes nodes with cpus_per_node[k] CPUs each (numbered 0, 1, ...
 * in node order) and mem_per_node bytes each, all memory on real node 0. */
void numa_topology_simulate(numa_topology *t, int n_nodes, const int *cpus_per_node, size_t mem_per_node);

/* Pool threads per node: proportional to the node's CPUs (largest remainders), at least
 * one per node with CPUs when there are enough threads; nodes without CPUs get none. */
void numa_split_threads(const numa_topology *t, int n_threads, int *threads_on);
/* Node of pool thread `thread` (threadpool_self) in a pool of n_threads: threads are laid
 * out node by node in the proportions of numa_split_threads. */
int numa_thread_node(const numa_plan *p, int thread, int n_threads);

/* The plan (pure). Layers 0..n_layers-1 (as in moe_weights, MTP included), n_moe_layers
 * of which have n_experts routed experts of expert_bytes each; n_group router groups (1 if
 * none). Active when mode != off and the topology has 2+ nodes. */
int numa_plan_make(numa_plan *p, const numa_topology *t, numa_mode mode, int n_layers, int n_moe_layers, int n_experts,
                   int n_group, size_t expert_bytes, int n_threads, moe_error *err);
void numa_plan_free(numa_plan *p);     /* frees the node buffers too: after the weights are done with */

/* Node holding expert e of layer `layer` (partition), else -1. */
static inline int numa_expert_node(const numa_plan *p, int layer, int e) {
    return p->expert_node ? p->expert_node[(size_t)layer * p->n_experts + e] : -1;
}

/* Loading thread's memory policy while weights are converted: interleaved over the
 * topology's nodes (begin), then back to what it was (end: e.g. numactl's). No-ops unless
 * mode != off on 2+ nodes. */
#define NUMA_MASK_WORDS 4                /* node masks: OS node ids < 256 */
typedef struct {
    int saved, mode;
    unsigned long mask[NUMA_MASK_WORDS];
} numa_policy;
void numa_load_begin(const numa_topology *t, numa_mode mode, numa_policy *saved);
void numa_load_end(const numa_policy *saved);

/* Acts on an active plan: partition copies every routed expert onto its node (freeing
 * converted originals) and points the weights there; both modes interleave the rest.
 * Failures of the kernel to move pages are counted (mbind_failed), not fatal. */
int numa_place_weights(numa_plan *p, moe_weights *w, moe_error *err);

/* threadpool_create_hooked hook (ctx = the plan): pins the thread to its node's CPUs. */
void numa_bind_thread(void *ctx, int thread, int n_threads);

/* One line for the load banner: the nodes with their memory, and what was done. */
void numa_plan_describe(const numa_plan *p, char *buf, size_t cap);

#endif
