#!/usr/bin/python3
"""eplb_ref.py - DeepSeek's EPLB (github deepseek-ai/EPLB, eplb.py) transliterated to numpy,
line for line, to check engine/ep/eplb.c against. Writes tests/data/eplb/cases.txt, the
expected outputs tests/test_eplb.c compares with (committed; run this once after changing
the cases: `/usr/bin/python3 tools/check/eplb_ref.py`; needs Debian's python3-numpy).

Differences from eplb.py, all about ties (eplb.py leaves them to torch):
  * torch.sort(descending=True) is not stable; here the sort is stable on -weight, so the
    lower index wins among equal weights (engine/ep/eplb.c does the same);
  * torch.max(dim) returns the first maximum, numpy.argmax too;
  * Python's min() returns the first lightest pack, as here.
Arithmetic stays float32 like eplb.py's `weight.float()` tensors (numpy would otherwise
promote float32 / int64 to float64).

The cases file: per case one line "case NAME L E N R G Nn", then L lines "w ...", L lines
"phy2log ...", L lines "rank ...", L lines "logcnt ..." (the physical slots in rank order:
rank r holds slots r*P/N .. (r+1)*P/N - 1).
"""
import os
import sys

import numpy as np


def balanced_packing(weight, num_packs):
    num_layers, num_groups = weight.shape
    assert num_groups % num_packs == 0
    groups_per_pack = num_groups // num_packs
    if groups_per_pack == 1:
        pack_index = np.broadcast_to(np.arange(num_groups, dtype=np.int64), weight.shape).copy()
        rank_in_pack = np.zeros(weight.shape, dtype=np.int64)
        return pack_index, rank_in_pack
    indices = np.argsort(-weight.astype(np.float32), axis=-1, kind="stable")
    pack_index = np.full(weight.shape, -1, dtype=np.int64)
    rank_in_pack = np.full(weight.shape, -1, dtype=np.int64)
    for i in range(num_layers):
        pack_weights = [np.float32(0)] * num_packs
        pack_items = [0] * num_packs
        for group in indices[i]:
            pack = min((k for k in range(num_packs) if pack_items[k] < groups_per_pack),
                       key=pack_weights.__getitem__)
            assert pack_items[pack] < groups_per_pack
            pack_index[i, group] = pack
            rank_in_pack[i, group] = pack_items[pack]
            pack_weights[pack] = np.float32(pack_weights[pack] + weight[i, group])
            pack_items[pack] += 1
    return pack_index, rank_in_pack


def replicate_experts(weight, num_phy):
    n, num_log = weight.shape
    num_redundant = num_phy - num_log
    assert num_redundant >= 0
    phy2log = np.tile(np.arange(num_phy, dtype=np.int64), (n, 1))
    rank = np.zeros((n, num_phy), dtype=np.int64)
    logcnt = np.ones((n, num_log), dtype=np.int64)
    arangen = np.arange(n)
    for i in range(num_log, num_phy):
        redundant_indices = (weight / logcnt.astype(np.float32)).argmax(axis=-1)
        phy2log[:, i] = redundant_indices
        rank[:, i] = logcnt[arangen, redundant_indices]
        logcnt[arangen, redundant_indices] += 1
    return phy2log, rank, logcnt


def inverse(perm):
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[1], dtype=np.int64), perm.shape), axis=1)
    return inv


def rebalance_experts_hierarchical(weight, num_physical_experts, num_groups, num_nodes, num_gpus):
    num_layers, num_logical_experts = weight.shape
    assert num_logical_experts % num_groups == 0
    group_size = num_logical_experts // num_groups
    assert num_groups % num_nodes == 0
    groups_per_node = num_groups // num_nodes
    assert num_gpus % num_nodes == 0
    assert num_physical_experts % num_gpus == 0
    phy_experts_per_gpu = num_physical_experts // num_gpus

    # Step 1: pack groups to nodes
    tokens_per_group = weight.reshape(num_layers, num_groups, group_size).sum(-1, dtype=np.float32)
    group_pack_index, group_rank_in_pack = balanced_packing(tokens_per_group, num_nodes)
    log2mlog = (((group_pack_index * groups_per_node + group_rank_in_pack) * group_size)[:, :, None] +
                np.arange(group_size, dtype=np.int64)).reshape(num_layers, -1)
    mlog2log = inverse(log2mlog)

    # Step 2: construct redundant experts within nodes
    tokens_per_mlog = np.take_along_axis(weight, mlog2log, -1).reshape(-1, num_logical_experts // num_nodes)
    phy2mlog, phyrank, mlogcnt = replicate_experts(tokens_per_mlog, num_physical_experts // num_nodes)

    # Step 3: pack physical_experts to GPUs
    tokens_per_phy = np.take_along_axis(tokens_per_mlog / mlogcnt.astype(np.float32), phy2mlog, -1)
    pack_index, rank_in_pack = balanced_packing(tokens_per_phy, num_gpus // num_nodes)
    phy2pphy = pack_index * phy_experts_per_gpu + rank_in_pack
    pphy2phy = inverse(phy2pphy)

    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, -1)
    pphy2mlog = (pphy2mlog.reshape(num_layers, num_nodes, -1) +
                 np.arange(0, num_logical_experts, num_logical_experts // num_nodes).reshape(1, -1, 1)).reshape(num_layers, -1)
    pphy2log = np.take_along_axis(mlog2log, pphy2mlog, -1)
    pphyrank = np.take_along_axis(phyrank, pphy2phy, -1).reshape(num_layers, -1)
    logcnt = np.take_along_axis(mlogcnt.reshape(num_layers, -1), log2mlog, -1)
    return pphy2log, pphyrank, logcnt


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    weight = np.asarray(weight, dtype=np.float32)
    if num_groups % num_nodes == 0:
        return rebalance_experts_hierarchical(weight, num_replicas, num_groups, num_nodes, num_gpus)
    return rebalance_experts_hierarchical(weight, num_replicas, 1, 1, num_gpus)


def cases():
    # DeepSeek's README example (its printed output is checked below as well)
    yield "readme", [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                     [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]], 8, 4, 4, 2
    # small hand-checkable ones (tests/test_eplb.c works two of them out in comments)
    yield "pack4x2", [[10, 40, 20, 30]], 2, 0, 1, 1
    yield "hot4x2r2", [[90, 10, 30, 30]], 2, 2, 1, 1
    yield "ties8x4", [[5, 5, 5, 5, 5, 5, 5, 5]], 4, 0, 1, 1
    yield "zeros8x2r2", [[0] * 8], 2, 2, 2, 1
    yield "global_nodes_do_not_divide_groups", [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]], 4, 4, 3, 2
    # skewed pseudo-random counts (Zipf-like), hierarchical and global, with and without replicas
    rng = np.random.RandomState(16)
    for name, L, E, N, R, G, Nn in [("zipf64x8", 3, 64, 8, 0, 8, 1), ("zipf64x8r8", 3, 64, 8, 8, 8, 1),
                                    ("zipf64x8r8n2", 3, 64, 8, 8, 8, 2), ("zipf64x16r16n4", 2, 64, 16, 16, 8, 4),
                                    ("zipf32x4r4g1", 2, 32, 4, 4, 1, 1), ("zipf48x6r6n3", 2, 48, 6, 6, 6, 3)]:
        w = []
        for _ in range(L):
            base = 1000.0 / (1 + np.arange(E)) ** 0.8
            w.append([int(x) for x in rng.permutation(base * rng.uniform(0.5, 1.5, E)).round()])
        yield name, w, N, R, G, Nn


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out_path = os.path.join(root, "tests", "data", "eplb", "cases.txt")
    readme = np.array([[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                       [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]])
    lines = ["# written by tools/check/eplb_ref.py (numpy port of deepseek-ai/EPLB eplb.py); do not edit"]
    for name, w, N, R, G, Nn in cases():
        w = np.array(w, dtype=np.int64)
        L, E = w.shape
        phy2log, rank, logcnt = rebalance_experts(w, E + R, G, Nn, N)
        if name == "readme" and not (phy2log == readme).all():
            sys.exit("eplb_ref.py: the README example does not reproduce: %s" % phy2log)
        lines.append("case %s %d %d %d %d %d %d" % (name, L, E, N, R, G, Nn))
        for tag, a in (("w", w), ("phy2log", phy2log), ("rank", rank), ("logcnt", logcnt)):
            for row in a:
                lines.append(tag + " " + " ".join(str(int(x)) for x in row))
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("eplb_ref.py: README example reproduced; wrote %s" % out_path)


if __name__ == "__main__":
    main()
