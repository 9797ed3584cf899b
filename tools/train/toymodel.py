"""PyTorch DeepSeek-V3-architecture model used to train the toy model (imported by
train.py, export.py and evaluate.py; not run directly).

The math is the inference math of tools/reference/deepseek_v3_spec.md:
MLA (q_lora, naive per-head K/V, interleaved-pair RoPE, no YaRN), SwiGLU, dense
first layer, MoE with sigmoid scores + e_score_correction_bias, group-limited
(top-2-sum) routing, normalised top-k weights times routed_scaling_factor, one
shared expert, and one MTP module fed [enorm(emb(x_{t+1})); hnorm(h_t)] where h_t
is the main hidden state after the final norm.  The MTP module shares the main
model's embedding and output head (stored as copies at export, as V3 does).

Routed experts are stored stacked ([E, H, 2I] gate|up and [E, I, H] down) and
computed by sorting the (token, expert) pairs by expert, scattering them into a
zero-padded [E, C, H] buffer (C = the largest expert load in the batch) and doing
two batched matmuls, so there is no Python loop over the 256 experts.  (A loop of
per-expert matmuls was measured 5x slower here: small matmuls are slow in this
BLAS.)  During training only, an optional capacity factor bounds C early in
training, before the bias has balanced the load; overflow pairs are dropped and
counted (evaluation and export never drop).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def default_config():
    return {
        "vocab_size": 4096,
        "hidden_size": 192,
        "intermediate_size": 512,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 4,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "q_lora_rank": 96,
        "kv_lora_rank": 64,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 16,
        "v_head_dim": 32,
        "n_routed_experts": 256,
        "num_experts_per_tok": 8,
        "n_shared_experts": 1,
        "n_group": 8,
        "topk_group": 4,
        "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "norm_topk_prob": True,
        "num_nextn_predict_layers": 1,
        "max_position_embeddings": 512,
        "rope_theta": 10000,
        "rope_scaling": None,
        "rms_norm_eps": 1e-6,
    }


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_interleaved(x, cos, sin):
    """x [..., S, dr]; rotates pairs (x[2i], x[2i+1]) by angle pos*inv_freq[i].
    cos/sin: [S, dr/2]."""
    xs = x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
    a, b = xs[..., 0], xs[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return out.reshape(x.shape)


class MLA(nn.Module):
    def __init__(self, c):
        super().__init__()
        H, nh = c["hidden_size"], c["num_attention_heads"]
        self.nh, self.dn, self.dr, self.dv = nh, c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
        self.kvr = c["kv_lora_rank"]
        dq = self.dn + self.dr
        self.q_a_proj = nn.Linear(H, c["q_lora_rank"], bias=False)
        self.q_a_layernorm = RMSNorm(c["q_lora_rank"], c["rms_norm_eps"])
        self.q_b_proj = nn.Linear(c["q_lora_rank"], nh * dq, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(H, self.kvr + self.dr, bias=False)
        self.kv_a_layernorm = RMSNorm(self.kvr, c["rms_norm_eps"])
        self.kv_b_proj = nn.Linear(self.kvr, nh * (self.dn + self.dv), bias=False)
        self.o_proj = nn.Linear(nh * self.dv, H, bias=False)
        self.scale = dq ** -0.5

    def forward(self, x, cos, sin, mask):
        B, S, _ = x.shape
        nh, dn, dr, dv = self.nh, self.dn, self.dr, self.dv
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))).view(B, S, nh, dn + dr).transpose(1, 2)
        q_nope, q_pe = q[..., :dn], q[..., dn:]
        kv = self.kv_a_proj_with_mqa(x)
        ckv = self.kv_a_layernorm(kv[..., :self.kvr])
        k_pe = kv[..., self.kvr:].unsqueeze(1)                       # [B,1,S,dr]
        q_pe = rope_interleaved(q_pe, cos, sin)
        k_pe = rope_interleaved(k_pe, cos, sin)
        kvb = self.kv_b_proj(ckv).view(B, S, nh, dn + dv).transpose(1, 2)
        k_nope, v = kvb[..., :dn], kvb[..., dn:]
        # q.k = q_nope.k_nope + q_pe.k_pe, scaled, plus the additive causal mask, in one baddbmm
        qf = torch.cat([q_nope, q_pe], dim=-1).reshape(B * nh, S, dn + dr)
        kf = torch.cat([k_nope, k_pe.expand(B, nh, S, dr)], dim=-1).reshape(B * nh, S, dn + dr)
        att = torch.baddbmm(mask, qf, kf.transpose(1, 2), alpha=self.scale).softmax(-1)
        att = att.view(B, nh, S, S)
        o = (att @ v).transpose(1, 2).reshape(B, S, nh * dv)
        return self.o_proj(o)


class MLP(nn.Module):
    def __init__(self, H, inter):
        super().__init__()
        self.gate_proj = nn.Linear(H, inter, bias=False)
        self.up_proj = nn.Linear(H, inter, bias=False)
        self.down_proj = nn.Linear(inter, H, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    def __init__(self, c):
        super().__init__()
        H, E, I = c["hidden_size"], c["n_routed_experts"], c["moe_intermediate_size"]
        self.E, self.k, self.I = E, c["num_experts_per_tok"], I
        self.G, self.topk_group = c["n_group"], c["topk_group"]
        self.rsf = float(c["routed_scaling_factor"])
        self.gate = nn.Linear(H, E, bias=False)
        self.register_buffer("e_score_correction_bias", torch.zeros(E))
        self.w13 = nn.Parameter(torch.empty(E, H, 2 * I))    # [gate | up], x @ w13
        self.w2 = nn.Parameter(torch.empty(E, I, H))
        self.shared_experts = MLP(H, I * c["n_shared_experts"])
        self.last = None          # routing stats of the last forward (for balancing / logging)
        self.capacity_factor = 0.0    # training only: >0 caps each expert at cf * mean load (overflow dropped)

    def route(self, x):
        """x [N,H] -> ids [N,k], weights [N,k], scores [N,E] (sigmoid, with grad)."""
        N = x.shape[0]
        scores = torch.sigmoid(self.gate(x))
        sel = scores.detach() + self.e_score_correction_bias
        gs = sel.view(N, self.G, self.E // self.G).topk(2, dim=-1).values.sum(-1)      # [N,G]
        gidx = gs.topk(self.topk_group, dim=-1).indices
        gmask = torch.zeros(N, self.G, dtype=torch.bool).scatter_(1, gidx, True)
        sel = sel.masked_fill(~gmask.repeat_interleave(self.E // self.G, dim=1), float("-inf"))
        ids = sel.topk(self.k, dim=-1).indices
        w = scores.gather(1, ids)
        w = w / (w.sum(-1, keepdim=True) + 1e-20) * self.rsf
        return ids, w, scores

    def experts(self, x, ids, w):
        N, H = x.shape
        E, k = self.E, self.k
        flat_e = ids.reshape(-1)
        order = torch.argsort(flat_e)
        e_sorted = flat_e[order]
        tok_sorted = order // k
        counts = torch.bincount(flat_e, minlength=E)
        C = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(N * k) - starts[e_sorted]
        self.dropped = 0
        if self.training and self.capacity_factor > 0:
            cap = int(math.ceil(self.capacity_factor * N * k / E))
            if C > cap:
                keep = pos < cap
                self.dropped = int((~keep).sum())
                order, e_sorted, tok_sorted, pos = order[keep], e_sorted[keep], tok_sorted[keep], pos[keep]
                C = cap
        slot = e_sorted * C + pos
        buf = x.new_zeros(E * C, H).index_copy(0, slot, x.index_select(0, tok_sorted))
        h = torch.bmm(buf.view(E, C, H), self.w13)
        a = F.silu(h[..., :self.I]) * h[..., self.I:]
        y = torch.bmm(a, self.w2).view(E * C, H).index_select(0, slot)
        y = y * w.reshape(-1)[order].unsqueeze(1)
        return x.new_zeros(N, H).index_add(0, tok_sorted, y), counts

    def forward(self, x):
        B, S, H = x.shape
        xf = x.reshape(B * S, H)
        ids, w, scores = self.route(xf)
        y, counts = self.experts(xf, ids, w)
        y = y + self.shared_experts(xf)
        self.last = dict(ids=ids.view(B, S, self.k), scores=scores.view(B, S, self.E), counts=counts)
        return y.view(B, S, H)

    def seq_balance_loss(self):
        """DeepSeek-V3 sequence-wise balance loss sum_i f_i P_i (without alpha)."""
        ids, scores = self.last["ids"], self.last["scores"]
        B, S, _ = ids.shape
        f = torch.zeros(B, self.E).scatter_add_(1, ids.reshape(B, -1), torch.ones(B, S * self.k))
        f = f * (self.E / (self.k * S))
        P = (scores / scores.sum(-1, keepdim=True)).mean(1)
        return (f * P).sum(-1).mean()


class Block(nn.Module):
    def __init__(self, c, moe):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = MLA(c)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.mlp = MoE(c) if moe else MLP(c["hidden_size"], c["intermediate_size"])
        self.is_moe = moe

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class MTP(nn.Module):
    def __init__(self, c):
        super().__init__()
        H = c["hidden_size"]
        self.enorm = RMSNorm(H, c["rms_norm_eps"])
        self.hnorm = RMSNorm(H, c["rms_norm_eps"])
        self.eh_proj = nn.Linear(2 * H, H, bias=False)
        self.block = Block(c, True)
        self.shared_head_norm = RMSNorm(H, c["rms_norm_eps"])


class ToyDeepseekV3(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        H, V = c["hidden_size"], c["vocab_size"]
        self.embed_tokens = nn.Embedding(V, H)
        self.layers = nn.ModuleList([Block(c, i >= c["first_k_dense_replace"]) for i in range(c["num_hidden_layers"])])
        self.norm = RMSNorm(H, c["rms_norm_eps"])
        self.lm_head = nn.Linear(H, V, bias=False)
        self.mtp = MTP(c)
        dr = c["qk_rope_head_dim"]
        inv = 1.0 / (float(c["rope_theta"]) ** (torch.arange(0, dr, 2, dtype=torch.float64) / dr))
        self.register_buffer("inv_freq", inv, persistent=False)
        self._init()

    def _init(self):
        std = 0.02
        nl = len(self.layers) + 1
        for n, p in self.named_parameters():
            if p.dim() < 2:
                continue
            s = std
            if n.endswith("o_proj.weight") or n.endswith("down_proj.weight") or n.endswith("w2"):
                s = std / math.sqrt(2 * nl)
            nn.init.normal_(p, 0.0, s)

    def moe_layers(self):
        return [l.mlp for l in self.layers if l.is_moe] + [self.mtp.block.mlp]

    def rope_tables(self, S):
        ang = torch.arange(S, dtype=torch.float64)[:, None] * self.inv_freq[None, :]
        return torch.cos(ang).float(), torch.sin(ang).float()

    def forward(self, tokens, mtp_tokens=None):
        """tokens [B,S] (positions 0..S-1); mtp_tokens [B,S]: token t+1 for each position t.
        Returns main logits [B,S,V], MTP logits [B,S,V] (or None), final normed hidden."""
        B, S = tokens.shape
        cos, sin = self.rope_tables(S)
        mask = torch.full((S, S), float("-inf")).triu(1)       # additive causal mask
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        h = self.norm(x)
        logits = self.lm_head(h)
        mlog = None
        if mtp_tokens is not None:
            m = self.mtp
            e = self.embed_tokens(mtp_tokens)
            u = m.eh_proj(torch.cat([m.enorm(e), m.hnorm(h)], dim=-1))
            z = m.block(u, cos, sin, mask)
            mlog = self.lm_head(m.shared_head_norm(z))
        return logits, mlog, h
