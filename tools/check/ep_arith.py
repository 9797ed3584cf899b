#!/usr/bin/python3
"""ep_arith.py - the arithmetic of docs/ep.md: DeepSeek-V3 under expert parallelism (EP) on N
machines next to llama.cpp RPC's layer split, for batch-1 decode and for prefill.
Prints the markdown tables of docs/ep.md (`/usr/bin/python3 tools/check/ep_arith.py`;
standard library only; the Monte Carlo is seeded, so the output is reproducible).

Assumptions (stated again in docs/ep.md):
  * every weight stored at q4 = 4.5 bits (0.5625 bytes) per weight; norms and biases ignored;
  * decode is memory-bound: a rank's time for a token = bytes it reads / B_MEM (one machine's
    sustained read bandwidth, B_MEM = 200 GB/s: an 8-12 channel DDR5 server reading with all
    cores), plus the network time on the critical path (nothing overlapped);
  * a token's 8 routed experts: 4 of the 8 groups chosen uniformly, then 8 of those 128 experts
    uniformly (the real router is skewed; EPLB's plan exists to even that out over a batch);
    experts on ranks by contiguous blocks (a block = a group or half a group): the busiest rank
    of each layer sets the pace (every layer ends with an exchange every rank waits for);
  * the exchange per MoE layer is one allgatherv of the K unweighted expert outputs of each
    token in f32 (K*H*4 bytes), recursive doubling: log2(N) messages each way per rank, each
    rank receiving (N-1)/N of it; per message latency ALPHA (RoCE 3 us, kernel TCP 20 us);
    plus the batch broadcast at each step (log2 N messages, 13 bytes a token);
  * the MTP module is left out (it is optional); the LM head runs on rank 0 only.
"""
import math
import random

H, K, L, L_MOE, E, IM, G, GK = 7168, 8, 61, 58, 256, 2048, 8, 4
V, I_DENSE = 129280, 18432
Q_LORA, KV_LORA, NH, D_NOPE, D_ROPE, D_V = 1536, 512, 128, 128, 64, 128
BYTES_PER_W = 4.5 / 8
B_MEM = 200e9
GB = 1e9

expert_w = 3 * H * IM                                    # gate, up, down
attn_w = (H * Q_LORA + Q_LORA * NH * (D_NOPE + D_ROPE) + H * (KV_LORA + D_ROPE)
          + KV_LORA * NH * (D_NOPE + D_V) + NH * D_V * H)
dense_w = 3 * H * I_DENSE
router_w = H * E
head_w = V * H
embed_w = V * H

routed_all = L_MOE * E * expert_w
replicated = L * attn_w + (L - L_MOE) * dense_w + L_MOE * (expert_w + router_w) + embed_w + head_w
total = routed_all + replicated


def b(w):
    return w * BYTES_PER_W


def busiest_rank_experts(n_ranks, trials=200000, seed=16):
    """E[max over ranks of a token's routed experts on that rank], blocks of E/N experts."""
    rnd = random.Random(seed)
    per_rank = E // n_ranks
    s = 0
    for _ in range(trials):
        groups = rnd.sample(range(G), GK)
        pool = [g * (E // G) + i for g in groups for i in range(E // G)]
        ids = rnd.sample(pool, K)
        cnt = {}
        for e in ids:
            cnt[e // per_rank] = cnt.get(e // per_rank, 0) + 1
        s += max(cnt.values())
    return s / trials


def allgather_s(n, msg_bytes, alpha, beta):
    steps = math.ceil(math.log2(n))
    return steps * alpha + msg_bytes * (n - 1) / n / beta


def main():
    print("Weights (q4, 4.5 bits): routed experts %.1f GB, everything else %.1f GB, total %.1f GB (%.0fB params)"
          % (b(routed_all) / GB, b(replicated) / GB, b(total) / GB, total / 1e9))
    act = L * attn_w + (L - L_MOE) * dense_w + L_MOE * ((K + 1) * expert_w + router_w) + head_w
    print("Read per token by one process: %.2f GB (%.1fB active params: attention %.2f GB, dense MLPs %.2f GB, "
          "routed %.2f GB, shared %.2f GB, routers %.2f GB, head %.2f GB)"
          % (b(act) / GB, act / 1e9, b(L * attn_w) / GB, b((L - L_MOE) * dense_w) / GB,
             b(L_MOE * K * expert_w) / GB, b(L_MOE * expert_w) / GB, b(L_MOE * router_w) / GB, b(head_w) / GB))
    one = b(act) / B_MEM
    print("One process (if one machine held %.0f GB): %.1f ms a token -> %.1f tokens/s at %.0f GB/s\n"
          % (b(total) / GB, one * 1e3, 1 / one, B_MEM / GB))

    nets = [("25 Gbit/s RoCE", 25e9 / 8, 3e-6), ("25 Gbit/s TCP", 25e9 / 8, 20e-6),
            ("100 Gbit/s RoCE", 100e9 / 8, 3e-6), ("100 Gbit/s TCP", 100e9 / 8, 20e-6)]
    msg = K * H * 4                                       # one token's slot rows, f32
    rows = []
    for n in (8, 16):
        mx = busiest_rank_experts(n)
        mem_rank = b(replicated + routed_all / n) / GB
        mem_rep = b(replicated + routed_all * (E + n) / E / n) / GB      # an EPLB plan with R = N redundant experts
        read_rank = b(L * attn_w + (L - L_MOE) * dense_w + L_MOE * (expert_w + router_w) + head_w) \
            + b(L_MOE * mx * expert_w)
        read_mean = b(L * attn_w + (L - L_MOE) * dense_w + L_MOE * (expert_w + router_w)) + b(L_MOE * K / n * expert_w)
        compute = read_rank / B_MEM
        recv = L_MOE * msg * (n - 1) / n
        msgs = L_MOE * math.ceil(math.log2(n)) + 2 * math.ceil(math.log2(n))
        row = {"n": n, "mx": mx, "mem": mem_rank, "mem_rep": mem_rep, "read": read_rank / GB, "read_mean": read_mean / GB,
               "compute_ms": compute * 1e3, "recv_mb": recv / 1e6, "msgs": msgs, "net": {}}
        for name, beta, alpha in nets:
            t_net = L_MOE * allgather_s(n, msg, alpha, beta) + 2 * (math.ceil(math.log2(n)) * alpha)
            row["net"][name] = (t_net * 1e3, 1 / (compute + t_net))
        # llama.cpp RPC layer split: the machines run one after another; per remote machine and token
        # about 3 TCP round trips (set_tensor of the input, graph_compute, get_tensor) and H*4 bytes each way
        lsplit = {}
        for name, beta, alpha in nets:
            a_tcp = max(alpha, 20e-6)                     # llama.cpp RPC is TCP only
            t_hops = (n - 1) * (3 * 2 * a_tcp + 2 * H * 4 / beta)
            lsplit[name] = (t_hops * 1e3, 1 / (one + t_hops))
        row["lsplit"] = lsplit
        row["lsplit_mem"] = b(total) / n / GB
        rows.append(row)

    print("| | EP, 8 machines | EP, 16 machines | layer split, 8 | layer split, 16 |")
    print("| --- | --- | --- | --- | --- |")
    r8, r16 = rows
    print("| weights per machine | %.1f GB | %.1f GB | %.1f GB | %.1f GB |" % (r8["mem"], r16["mem"], r8["lsplit_mem"], r16["lsplit_mem"]))
    print("| weights per machine, EPLB plan with R = N replicas | %.1f GB | %.1f GB | - | - |" % (r8["mem_rep"], r16["mem_rep"]))
    print("| a token's routed experts (of 8) on the busiest machine | %.2f | %.2f | - | - |" % (r8["mx"], r16["mx"]))
    print("| weight bytes read per token, busiest machine (mean) | %.2f GB (%.2f) | %.2f GB (%.2f) | %.2f GB in all, one machine at a time | same |"
          % (r8["read"], r8["read_mean"], r16["read"], r16["read_mean"], b(act) / GB))
    print("| compute time per token (reads / %.0f GB/s) | %.1f ms | %.1f ms | %.1f ms | %.1f ms |"
          % (B_MEM / GB, r8["compute_ms"], r16["compute_ms"], one * 1e3, one * 1e3))
    print("| bytes received per token per machine | %.1f MB | %.1f MB | %.0f KB | %.0f KB |"
          % (r8["recv_mb"], r16["recv_mb"], H * 4 / 1e3, H * 4 / 1e3))
    print("| messages per token per machine (each way) | %d | %d | ~6 round trips per remote | same |" % (r8["msgs"], r16["msgs"]))
    for name, _, _ in nets:
        print("| %s: network ms per token -> decode tokens/s | %.2f ms -> **%.1f** | %.2f ms -> **%.1f** | %.2f ms -> %.1f | %.2f ms -> %.1f |"
              % (name, r8["net"][name][0], r8["net"][name][1], r16["net"][name][0], r16["net"][name][1],
                 r8["lsplit"][name][0], r8["lsplit"][name][1], r16["lsplit"][name][0], r16["lsplit"][name][1]))

    print("\nPrefill (a batch of P tokens per pass; the bytes are per token whatever P is):")
    print("| | 8 machines | 16 machines |")
    print("| --- | --- | --- |")
    for P in (64, 512):
        print("| P = %d: messages per MoE layer per machine / per token | %d / %.2f | %d / %.2f |"
              % (P, math.ceil(math.log2(8)), L_MOE * math.ceil(math.log2(8)) / P,
                 math.ceil(math.log2(16)), L_MOE * math.ceil(math.log2(16)) / P))
    print("| bytes received per token per machine | %.1f MB | %.1f MB |" % (r8["recv_mb"], r16["recv_mb"]))
    for name, beta, alpha in nets[::2]:
        print("| %s: wire time per token (bandwidth term) | %.2f ms | %.2f ms |"
              % (name.split(" RoCE")[0], r8["recv_mb"] * 1e6 / beta * 1e3, r16["recv_mb"] * 1e6 / beta * 1e3))
    fl8 = 2 * (L * attn_w + (L - L_MOE) * dense_w + L_MOE * (expert_w + router_w) + L_MOE * K / 8 * expert_w)
    fl16 = 2 * (L * attn_w + (L - L_MOE) * dense_w + L_MOE * (expert_w + router_w) + L_MOE * K / 16 * expert_w)
    print("| weight FLOPs per token per machine (balanced batch) | %.1f GFLOP | %.1f GFLOP |" % (fl8 / 1e9, fl16 / 1e9))


if __name__ == "__main__":
    main()
