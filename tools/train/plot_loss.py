#!/usr/bin/python3
"""Draw the training loss curve from train.py's log.jsonl as a small SVG, and print
a markdown table (for models/toy/README.md).

  /usr/bin/python3 tools/train/plot_loss.py /work/toy-run/run1/log.jsonl models/toy/loss.svg
"""
import json
import sys


def smooth(xs, k=5):
    out = []
    for i in range(len(xs)):
        w = xs[max(0, i - k + 1):i + 1]
        out.append(sum(w) / len(w))
    return out


def main():
    src, dst = sys.argv[1], sys.argv[2]
    recs = [json.loads(l) for l in open(src) if l.strip()]
    rs = [r for r in recs if "loss" in r]
    final = [r for r in recs if "final_val" in r]
    tok = [r["tokens"] / 1e6 for r in rs]
    main_l = smooth([r["loss"] for r in rs])
    mtp_l = smooth([r["mtp"] for r in rs])
    vals = [(r["tokens"] / 1e6, r["val"]) for r in rs if "val" in r]
    if final:
        vals.append((final[-1]["tokens"] / 1e6, final[-1]["final_val"]))
    W, H, L, R, T, B = 640, 360, 50, 20, 20, 40
    xmax = max(tok) if tok else 1
    ymin, ymax = 2.0, 9.0

    def X(x):
        return L + (W - L - R) * x / xmax

    def Y(y):
        y = min(max(y, ymin), ymax)
        return T + (H - T - B) * (ymax - y) / (ymax - ymin)

    s = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">' % (W, H),
         '<rect width="100%" height="100%" fill="white"/>']
    for y in range(int(ymin), int(ymax) + 1):
        s.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (L, Y(y), W - R, Y(y)))
        s.append('<text x="%d" y="%.1f" text-anchor="end">%d</text>' % (L - 5, Y(y) + 4, y))
    step = max(1, int(xmax / 6 + 0.5)) if xmax >= 3 else 0.5
    x = 0.0
    while x <= xmax + 1e-9:
        s.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>' % (X(x), T, X(x), H - B))
        s.append('<text x="%.1f" y="%d" text-anchor="middle">%g</text>' % (X(x), H - B + 15, x))
        x += step
    s.append('<text x="%d" y="%d" text-anchor="middle">tokens trained (millions)</text>' % ((L + W - R) // 2, H - 8))
    s.append('<text x="12" y="%d" transform="rotate(-90 12 %d)" text-anchor="middle">loss (nats/token)</text>'
             % ((T + H - B) // 2, (T + H - B) // 2))
    for ys, col in ((main_l, "#1f77b4"), (mtp_l, "#ff7f0e")):
        pts = " ".join("%.1f,%.1f" % (X(a), Y(b)) for a, b in zip(tok, ys))
        s.append('<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>' % (col, pts))
    for a, b in vals:
        s.append('<circle cx="%.1f" cy="%.1f" r="3" fill="#2ca02c"/>' % (X(a), Y(b)))
    lx = W - R - 210
    for i, (lab, col) in enumerate((("train loss, main head", "#1f77b4"), ("train loss, MTP head (token t+2)", "#ff7f0e"),
                                    ("validation loss, main head", "#2ca02c"))):
        s.append('<rect x="%d" y="%d" width="12" height="3" fill="%s"/>' % (lx, T + 10 + 15 * i, col))
        s.append('<text x="%d" y="%d">%s</text>' % (lx + 18, T + 15 + 15 * i, lab))
    s.append("</svg>")
    with open(dst, "w") as f:
        f.write("\n".join(s) + "\n")
    # markdown table: ~12 rows
    print("| step | tokens (M) | minutes | train loss | train MTP loss | val loss |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    every = max(1, len(rs) // 12)
    for i, r in enumerate(rs):
        if i % every == 0 or i == len(rs) - 1 or "val" in r:
            if "val" not in r and i % every != 0 and i != len(rs) - 1:
                continue
            print("| %d | %.2f | %.0f | %.3f | %.3f | %s |" % (r["step"], r["tokens"] / 1e6, r["elapsed"] / 60,
                                                              r["loss"], r["mtp"], ("%.3f" % r["val"]) if "val" in r else ""))
    if final:
        f = final[-1]
        print("| %d (end) | %.2f | %.0f | | | %.3f |" % (f["step"], f["tokens"] / 1e6, f["elapsed"] / 60, f["final_val"]))


if __name__ == "__main__":
    main()
