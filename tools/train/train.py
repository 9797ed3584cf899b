#!/usr/bin/python3
"""Train the toy DeepSeek-V3-architecture model on the tokenized corpus (CPU, PyTorch).

  /usr/bin/python3 tools/train/train.py --data build/corpus --out /work/toy-run/run1 \
      --minutes 100 --threads 1 [--config '{"hidden_size": 192}'] [--smoke]

Training objective (DeepSeek-V3 style):
  loss = CE(main) + mtp_weight * CE(MTP, predicts token t+2) + alpha * sequence-wise balance loss
and after every step, auxiliary-loss-free balancing of every MoE layer:
  e_score_correction_bias += gamma * sign(mean_load - load)
The learning-rate schedule is driven by wall-clock time (--minutes): linear warm-up,
then cosine decay to 10%, so the run ends on time with a decayed LR.
Writes OUT/ckpt.pt (model state + config, every --ckpt-minutes and at the end),
OUT/log.jsonl (loss, lr, tok/s, per-layer expert load: max/mean and #unused)
and OUT/train.log (human readable).
"""
import argparse
import os
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # torch here uses OpenBLAS: keep it to one thread
os.environ.setdefault("OMP_NUM_THREADS", "1")
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from toymodel import ToyDeepseekV3, default_config  # noqa: E402


def batches(data, B, S, rng, extra=None, extra_frac=0.0):
    """Random windows of S+2 tokens; with probability extra_frac a window comes from `extra`."""
    n = len(data) - (S + 2)
    while True:
        rows = []
        for _ in range(B):
            if extra is not None and rng.random() < extra_frac:
                o = int(rng.integers(0, len(extra) - (S + 2)))
                rows.append(extra[o:o + S + 2])
            else:
                o = int(rng.integers(0, n))
                rows.append(data[o:o + S + 2])
        yield torch.from_numpy(np.stack(rows).astype(np.int64))


def losses(model, chunk, alpha):
    x, y = chunk[:, :-2], chunk[:, 1:-1]
    mt, my = chunk[:, 1:-1], chunk[:, 2:]
    logits, mlog, _ = model(x, mt)
    V = logits.shape[-1]
    l_main = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    l_mtp = F.cross_entropy(mlog.reshape(-1, V), my.reshape(-1))
    l_bal = sum(m.seq_balance_loss() for m in model.moe_layers())
    return l_main, l_mtp, l_bal


@torch.no_grad()
def evaluate(model, val, S, nseq):
    model.eval()
    tot = [0.0, 0.0]
    step = (len(val) - S - 2) // nseq
    for i in range(nseq):
        c = torch.from_numpy(val[i * step:i * step + S + 2].astype(np.int64))[None]
        a, b, _ = losses(model, c, 0.0)
        tot[0] += float(a)
        tot[1] += float(b)
    model.train()
    return tot[0] / nseq, tot[1] / nseq


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="build/corpus")
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", default=None, help="JSON overrides of the model config")
    ap.add_argument("--minutes", type=float, default=65.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--mtp-weight", type=float, default=0.3)
    ap.add_argument("--alpha", type=float, default=1e-4, help="sequence-wise balance loss weight")
    ap.add_argument("--gamma", type=float, default=1e-3, help="bias update speed (final)")
    ap.add_argument("--gamma-start", type=float, default=2e-2,
                    help="bias update speed at step 0, decaying linearly to --gamma at --gamma-steps")
    ap.add_argument("--gamma-steps", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--extra", default=None, help="extra token file to oversample (e.g. more generated stories)")
    ap.add_argument("--extra-frac", type=float, default=0.0, help="fraction of training windows from --extra")
    ap.add_argument("--capacity-factor", type=float, default=2.0,
                    help="training-only cap on tokens per expert per step (x mean load); 0 = no cap")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--eval-seqs", type=int, default=8)
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--max-steps", type=int, default=0)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    cfg = default_config()
    cfg["max_position_embeddings"] = a.seq
    if a.config:
        cfg.update(json.loads(a.config))
    os.makedirs(a.out, exist_ok=True)
    train = np.memmap(os.path.join(a.data, "train.bin"), dtype=np.uint16, mode="r")
    val = np.memmap(os.path.join(a.data, "val.bin"), dtype=np.uint16, mode="r")
    assert int(train.max()) < cfg["vocab_size"]
    model = ToyDeepseekV3(cfg)
    nparam = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    nodecay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd},
                             {"params": nodecay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    logf = open(os.path.join(a.out, "log.jsonl"), "a")
    txt = open(os.path.join(a.out, "train.log"), "a")

    def say(s):
        print(s, flush=True)
        txt.write(s + "\n")
        txt.flush()

    say("config %s" % json.dumps(cfg))
    say("params %d (trainable, MTP shares embed/head), train tokens %d, val tokens %d, args %s"
        % (nparam, len(train), len(val), vars(a)))
    moes = model.moe_layers()
    names = ["L%d" % i for i, l in enumerate(model.layers) if l.is_moe] + ["MTP"]
    window = torch.zeros(len(moes), cfg["n_routed_experts"])
    budget = a.minutes * 60.0
    t0 = time.time()
    last_ckpt = t0
    tokens = 0
    step = 0

    def save():
        tmp = os.path.join(a.out, "ckpt.pt.tmp")
        torch.save({"config": cfg, "model": model.state_dict(), "step": step, "tokens": tokens,
                    "elapsed": time.time() - t0, "args": vars(a)}, tmp)
        os.replace(tmp, os.path.join(a.out, "ckpt.pt"))

    extra = np.memmap(a.extra, dtype=np.uint16, mode="r") if a.extra else None
    for m in moes:
        m.capacity_factor = a.capacity_factor
    dropped = 0
    gen = batches(train, a.batch, a.seq, rng, extra, a.extra_frac)
    while True:
        el = time.time() - t0
        frac = min(el / budget, 1.0)
        if el >= budget or (a.max_steps and step >= a.max_steps):
            break
        if step < a.warmup:
            lr = a.lr * (step + 1) / a.warmup
        else:
            lr = a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        chunk = next(gen)
        l_main, l_mtp, l_bal = losses(model, chunk, a.alpha)
        loss = l_main + a.mtp_weight * l_mtp + a.alpha * l_bal
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # auxiliary-loss-free balancing
        gamma = a.gamma + (a.gamma_start - a.gamma) * max(0.0, 1.0 - step / a.gamma_steps)
        with torch.no_grad():
            for j, m in enumerate(moes):
                load = m.last["counts"].float()
                m.e_score_correction_bias += gamma * torch.sign(load.mean() - load)
                window[j] += load
                dropped += m.dropped
        step += 1
        tokens += a.batch * a.seq
        if step % a.log_every == 0:
            el = time.time() - t0
            ld = {}
            for j, nm in enumerate(names):
                w = window[j]
                ld[nm] = [round(float(w.max() / w.mean()), 2), int((w == 0).sum()),
                          round(float(moes[j].e_score_correction_bias.abs().max()), 3)]
            window.zero_()
            rec_drop = dropped / (a.log_every * len(moes) * a.batch * a.seq * cfg["num_experts_per_tok"])
            dropped = 0
            rec = dict(step=step, tokens=tokens, elapsed=round(el, 1), lr=lr, loss=float(l_main),
                       mtp=float(l_mtp), bal=float(l_bal), gnorm=float(gn), tok_s=round(tokens / el), load=ld,
                       dropped=rec_drop)
            if step % a.eval_every == 0:
                rec["val"], rec["val_mtp"] = evaluate(model, val, a.seq, a.eval_seqs)
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            say("step %5d tok %8d %6.0fs lr %.2e loss %.3f mtp %.3f bal %.3f gn %.2f %4.0f tok/s drop %.4f%s load %s" % (
                step, tokens, el, lr, rec["loss"], rec["mtp"], rec["bal"], rec["gnorm"], rec["tok_s"], rec_drop,
                (" VAL %.3f/%.3f" % (rec["val"], rec["val_mtp"])) if "val" in rec else "",
                " ".join("%s:%.2f/%d" % (k, v[0], v[1]) for k, v in ld.items())))
        if time.time() - last_ckpt > a.ckpt_minutes * 60:
            save()
            last_ckpt = time.time()
    v, vm = evaluate(model, val, a.seq, 32)
    say("final step %d tokens %d elapsed %.0fs val %.4f val_mtp %.4f" % (step, tokens, time.time() - t0, v, vm))
    logf.write(json.dumps(dict(step=step, tokens=tokens, elapsed=round(time.time() - t0, 1), final_val=v,
                               final_val_mtp=vm)) + "\n")
    save()
    say("saved %s" % os.path.join(a.out, "ckpt.pt"))


if __name__ == "__main__":
    main()
