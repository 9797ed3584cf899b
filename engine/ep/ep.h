/* ep.h - expert parallelism: one model over N processes (ranks, one per machine), each holding
 * every non-expert weight and its own share of the routed experts (issue 16; docs/ep.md has
 * the arithmetic for DeepSeek-V3). The exchange layer is ep_comm.h, the placement eplb.h.
 *
 * Legend
 *   N          ranks;  r this rank
 *   n          tokens in the pass (the batch);  K experts per token;  H hidden
 *   slot       one (token, choice) pair: n*K per MoE layer, laid out grouped by expert as
 *              engine/moe.c does (slot s of expert e is expert_start[e] + i, the i-th token
 *              routed to e in batch order)
 *   owner      the rank that computes a slot: the rank holding the expert (or, for a
 *              replicated expert, the holder whose share the slot falls in: ep_holder_of_slot)
 *   out rows   slot_out[n*K][H]: an expert's UNWEIGHTED output for a slot
 *
 * Design of the MoE layer under EP (wired into engine/moe.c through moe_ctx.ep, an ep_hook:
 * an expert ownership mask per layer and an exchange callback called between step 3 and step
 * 4 of moe_forward; engine/ep/ep_moe.c implements it, tests/ep_logits_check.c checks it):
 *
 *   0. Rank 0 owns the requests. Each forward pass starts with ep_bcast_batch (token, pos,
 *      seq, want: 13 bytes a token, two messages), so every rank runs the same batch.
 *   1. Every rank runs everything that is not a routed expert, on every token: embeddings,
 *      attention with its own full KV cache, the dense layers, the router, the shared expert,
 *      the final norm. So every rank computes the same router logits and the same choices:
 *      same binary, same kernels (kernels are picked at run time per CPU: the ranks must pick
 *      the same ones, which the start-up hash includes), same inputs (the layer input is
 *      bit-identical on every rank by induction: the previous layer's output is reduced from
 *      the same rows in the same order), and no dependence on the thread count (moe.c and the
 *      kernels reduce in a fixed order). This is checked, not assumed: at start-up
 *      ep_check_same over ep_hash_checkpoint (config.json bytes + the tensor table + the
 *      kernel name + the routing options); in debug mode (MOE_EP_CHECK=1) after every MoE
 *      layer ep_check_same over ep_hash_route (the n*K expert ids and weights' bits), one
 *      extra 8-byte allgather a layer, which names the first layer where ranks diverged.
 *   2. Slots are laid out as in one process (grouped by expert, token order inside).
 *   3. Each rank runs only the items it owns: the experts it holds (with a plan: the slots of
 *      each copy it holds), over their gathered tokens, writing their out rows; the others'
 *      rows are left for the exchange. The shared expert runs on every rank (it is one more
 *      expert a token: replicating it costs its weights once per rank, no bytes on the wire).
 *   4. Exchange: ep_allgatherv_rows of the out rows, rank by rank. With the default
 *      contiguous blocks a rank's slots are one contiguous range (its experts are), so the
 *      allgatherv runs in place on slot_out; with a plan the rows go through a rank-major
 *      staging buffer and a row index (slot -> staged row), both sized once.
 *   5. Every rank runs the reduction of one process, unchanged: per token, its K slots in
 *      ascending slot order, y += w * out, then the shared expert. Same rows, same order, same
 *      additions: bit-identical to one process, on every rank.
 *   Replicas (an EPLB plan with R > 0): the holders of expert e are the distinct ranks holding
 *   a copy of it (h of them, ascending; two copies on one rank count once: they are the same
 *   weights). Its n_e slots (in slot order) are cut into a = min(h, n_e / 2) contiguous shares
 *   (1 when n_e < 2), share k = [n_e*k/a, n_e*(k+1)/a), and share k goes to holder (k + rot)
 *   mod h, rot = pos of the token in e's first slot + e (ep_rotation). Every rank computes
 *   the same split from the shared routing and positions, so every rank knows who computes
 *   each slot and how many rows each rank sends (allgatherv needs the counts: no extra
 *   message), and exactly one rank computes each slot. The rotation spreads the load of a
 *   replicated expert over decode steps too (one token a step: the holder changes with the
 *   position). Bit-identity with one process then also needs an expert's output for a token
 *   not to depend on the tokens it ran with. Measured on this engine's kernels (2026-12-02,
 *   AVX-512; test_ep checks it on every run): a row of matmul_rows is the same bits for any
 *   batch of 2 tokens or more, but one token runs matvec_rows, whose bf16 and q8 rows differ
 *   from matmul's (f32 agrees). Hence a <= n_e / 2: every share has two tokens or more
 *   unless the expert had one. (Without replicas every expert runs on exactly its
 *   one-process tokens.)
 *   Messages per MoE layer: one allgatherv (N-1 steps of a ring, or log2 N of recursive
 *   doubling); bytes a rank receives per token per layer: K*H*4*(N-1)/N on average.
 *   The MTP block is one more MoE layer and follows the same steps; the LM head runs on
 *   rank 0 only (it samples and broadcasts the next batch), or on every rank when each
 *   needs logits.
 *
 * This header provides the hashes and the replica split (tests/test_ep.c); ep_moe.h the hook.
 */
#ifndef MOE_EP_H
#define MOE_EP_H

#include <stddef.h>
#include <stdint.h>

#include "eplb.h"
#include "ep_comm.h"
#include "safetensors.h"

/* config.json's bytes, then per tensor in table order: name, dtype, shape, byte size; then
 * `extra` (kernel name, dtype, routing options: what changes the arithmetic). */
uint64_t ep_hash_checkpoint(const char *config_text, size_t config_len, const st_set *tensors, const char *extra);
/* The routing of one MoE layer: ids[n*K] and the bits of weights[n*K]. */
uint64_t ep_hash_route(uint64_t h, int layer, const int *ids, const float *weights, int n_slots);

/* Holder j (0..h-1) of an expert with h holders and n_e slots computes slots [*lo, *hi) of
 * them (in slot order): share k = (j - rot) mod h of a = min(h, n_e / 2) even shares (1 when
 * n_e < 2); empty when k >= a. So no holder runs one token of an expert that had two or more
 * (see the header comment), and the holders' shares tile [0, n_e). */
void ep_share_range(int n_e, int h, int rot, int j, int *lo, int *hi);
/* The holder (0..h-1) that computes the i-th slot (0..n_e-1): inverts ep_share_range. */
int ep_holder_of_slot(int n_e, int h, int rot, int i);
/* The rotation of expert e's split: pos of the token in its first slot, plus e (>= 0). */
static inline int ep_rotation(int first_pos, int e) { return (first_pos < 0 ? 0 : first_pos) + e; }

/* Distinct ranks holding a copy of expert e in layer index l (the plan's layer order),
 * ascending, into ranks[] (room for p->n_ranks); returns how many (>= 1 in a valid plan). */
int ep_holders(const eplb_plan *p, int l, int e, int *ranks);
/* Rank computing the i-th of n_e slots of expert e in layer index l with rotation rot. */
int ep_slot_rank(const eplb_plan *p, int l, int e, int n_e, int rot, int i);

#endif
