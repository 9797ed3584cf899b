#!/usr/bin/python3
"""Evaluate a toy-model checkpoint on the bf16-rounded weights (= the exported model):
validation loss, MTP agreement, expert load balance, and a few sample generations.

  /usr/bin/python3 tools/train/evaluate.py --ckpt /work/toy-run/run1/ckpt.pt \
      --val build/corpus/val.bin --tokenizer models/toy/tokenizer.json --json /work/toy-run/eval.json

* val loss: mean cross-entropy (nats/token) of the main head over val.bin, cut into
  windows of the training context (no overlap); also the MTP head's loss (token t+2).
* MTP agreement: fraction of positions t where the MTP head's greedy prediction
  (inputs: main hidden at t, true token t+1) equals the main model's greedy
  prediction at position t+1 (what speculative decoding needs for acceptance).
* load balance: for every MoE layer (and the MTP block), expert selection counts
  over all validation tokens: max load / mean load, min / mean, experts never used.
"""
import argparse
import os
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # torch here uses OpenBLAS: keep it to one thread
os.environ.setdefault("OMP_NUM_THREADS", "1")
import json
import os
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export import load_model  # noqa: E402


def byte_decoder():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Detok:
    def __init__(self, path):
        t = json.load(open(path, encoding="utf-8"))
        self.inv = {i: s for s, i in t["model"]["vocab"].items()}
        for a in t["added_tokens"]:
            self.inv[a["id"]] = a["content"]
        self.special = {a["id"] for a in t["added_tokens"] if a["special"]}
        self.bd = byte_decoder()

    def __call__(self, ids):
        out = bytearray()
        for i in ids:
            if i in self.special:
                continue
            s = self.inv[i]
            if all(ch in self.bd for ch in s):
                out += bytes(self.bd[ch] for ch in s)
            else:
                out += s.encode("utf-8")
        return out.decode("utf-8", errors="replace")


def encode(tokfile, text):
    js = ("const tk=require(%r);const t=tk.Tokenizer.fromFile(%r);"
          "t.encode(%s,null,{addSpecialTokens:false}).then(e=>console.log(JSON.stringify(e.getIds())));"
          % (os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus", "node_modules", "tokenizers"),
             tokfile, json.dumps(text)))
    return json.loads(subprocess.check_output(["node", "-e", js]))


@torch.no_grad()
def generate(model, ids, n, temp, topk, seed, ctx):
    g = torch.Generator().manual_seed(seed)
    ids = list(ids)
    for _ in range(n):
        x = torch.tensor(ids[-ctx:])[None]
        lg = model(x)[0][0, -1]
        if temp <= 0:
            nxt = int(lg.argmax())
        else:
            v, ix = (lg / temp).topk(topk)
            nxt = int(ix[torch.multinomial(v.softmax(-1), 1, generator=g)])
        if nxt == 1:
            break
        ids.append(nxt)
    return ids


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--val", default="build/corpus/val.bin")
    ap.add_argument("--tokenizer", default="models/toy/tokenizer.json")
    ap.add_argument("--max-windows", type=int, default=0, help="limit (0 = all of val.bin)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, ck = load_model(a.ckpt)
    c = ck["config"]
    S = c["max_position_embeddings"]
    val = np.memmap(a.val, dtype=np.uint16, mode="r")
    nwin = (len(val) - 2) // S
    if a.max_windows:
        nwin = min(nwin, a.max_windows)
    moes = model.moe_layers()
    names = ["layer %d" % i for i, l in enumerate(model.layers) if l.is_moe] + ["MTP (layer %d)" % c["num_hidden_layers"]]
    counts = torch.zeros(len(moes), c["n_routed_experts"], dtype=torch.long)
    ce = ce_m = agree = acc = acc_m = n = n_ag = 0.0
    for b0 in range(0, nwin, a.batch):
        w = [np.asarray(val[i * S:i * S + S + 2], dtype=np.int64) for i in range(b0, min(nwin, b0 + a.batch))]
        ch = torch.from_numpy(np.stack(w))
        x, y, mt, my = ch[:, :-2], ch[:, 1:-1], ch[:, 1:-1], ch[:, 2:]
        lg, ml, _ = model(x, mt)
        V = lg.shape[-1]
        ce += float(F.cross_entropy(lg.reshape(-1, V), y.reshape(-1), reduction="sum"))
        ce_m += float(F.cross_entropy(ml.reshape(-1, V), my.reshape(-1), reduction="sum"))
        pm, pt = lg.argmax(-1), ml.argmax(-1)
        acc += float((pm == y).sum())
        acc_m += float((pt == my).sum())
        agree += float((pt[:, :-1] == pm[:, 1:]).sum())
        n += y.numel()
        n_ag += pt[:, :-1].numel()
        for j, m in enumerate(moes):
            counts[j] += torch.bincount(m.last["ids"].reshape(-1), minlength=c["n_routed_experts"])
    res = {"step": ck["step"], "tokens_trained": ck["tokens"], "train_seconds": round(ck["elapsed"]),
           "val_tokens": int(n), "val_loss": ce / n, "val_ppl": float(np.exp(ce / n)),
           "val_loss_mtp": ce_m / n, "main_top1": acc / n, "mtp_top1": acc_m / n,
           "mtp_agreement": agree / n_ag, "load": {}}
    for j, nm in enumerate(names):
        cc = counts[j].double()
        res["load"][nm] = {"max_over_mean": float(cc.max() / cc.mean()), "min_over_mean": float(cc.min() / cc.mean()),
                           "unused": int((cc == 0).sum()),
                           "bias_range": [float(moes[j].e_score_correction_bias.min()),
                                          float(moes[j].e_score_correction_bias.max())]}
    print("step %d, %d tokens trained, %ds" % (res["step"], res["tokens_trained"], res["train_seconds"]))
    print("val loss %.4f nats/token (ppl %.2f) over %d tokens; MTP loss %.4f" % (
        res["val_loss"], res["val_ppl"], n, res["val_loss_mtp"]))
    print("top-1: main %.3f, MTP %.3f; MTP greedy == main's next greedy: %.3f" % (
        res["main_top1"], res["mtp_top1"], res["mtp_agreement"]))
    for nm, d in res["load"].items():
        print("  %-14s max/mean %.2f  min/mean %.2f  unused %d  bias [%.3f, %.3f]" % (
            nm, d["max_over_mean"], d["min_over_mean"], d["unused"], d["bias_range"][0], d["bias_range"][1]))
    if a.samples:
        det = Detok(a.tokenizer)
        prompt = [0] + encode(a.tokenizer, "Once upon a time")
        res["samples"] = []
        for k in range(a.samples):
            temp = 0.0 if k == 0 else 0.8
            out = generate(model, prompt, 100, temp, 40, k, S)
            txt = det(out)
            res["samples"].append({"temperature": temp, "top_k": 40 if temp else 1, "seed": k, "text": txt})
            print("--- sample (temperature %.1f, seed %d):\n%s" % (temp, k, txt))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
