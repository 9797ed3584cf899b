#!/usr/bin/env node
// diffcheck.js - writes a large differential test: OUT_DIR/in.txt (one text a
// line) and OUT_DIR/official.txt (the official ids, comma-separated, a line
// each). Lines: every code point U+0000..U+323AF and the supplementary
// special-purpose plane in a probe string, plus N random strings from many
// character pools. diffcheck.sh compares them with `moe tokenize -f`.
//   node diffcheck.js OUT_DIR [N [TOKENIZER_DIR]]
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');
const outDir = process.argv[2];
const N = Number(process.argv[3] || 30000);
const dir = process.argv[4] || path.join(__dirname, '../../tests/data/tokenizer/deepseek_v3');
let seed = 987654321;
const rnd = () => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed / 4294967296; };
const ri = (n) => Math.floor(rnd() * n);
const pools = [
  () => String.fromCodePoint(0x20 + ri(95)),
  () => ' \t\r\u00a0\u3000\u2028\u0085\u180e\u200b\u200d\ufeff\u000b\u000c'[ri(13)],
  () => String(ri(10)),
  () => String.fromCodePoint(0xa0 + ri(0x2000)),
  () => String.fromCodePoint(0x2000 + ri(0x1000)),
  () => String.fromCodePoint(0x3000 + ri(0x7000)),
  () => String.fromCodePoint(0xac00 + ri(0x2ba4)),
  () => String.fromCodePoint(0xe000 + ri(0x1ff0)),
  () => String.fromCodePoint(0x10000 + ri(0x20000)),
  () => String.fromCodePoint(0x1f300 + ri(0x700)),
  () => ['<｜User｜>', '<｜Assistant｜>', '<|EOT|>', '<｜end▁of▁sentence｜>', '<｜tool▁sep｜>', '<｜'][ri(6)],
  () => String.fromCodePoint(0x300 + ri(0x70)),
  () => String.fromCodePoint(1 + ri(31)),
];
const lines = [];
const probe = (c) => { const x = String.fromCodePoint(c); return x + 'a ' + x + ' !' + x + '1' + x + 'é' + x + ',' + x + x + '\u0301 ' + x + x + x + x; };
for (let c = 0; c <= 0x323af; c++) if (!(c >= 0xd800 && c <= 0xdfff) && c !== 10) lines.push(probe(c));
for (let c = 0xe0000; c <= 0xe01ef; c++) lines.push(probe(c));
for (let i = 0; i < N; i++) {
  let s = '';
  const bias = ri(pools.length);
  for (let j = 0, k = 1 + ri(30); j < k; j++) {
    let c = (rnd() < 0.5 ? pools[bias] : pools[ri(pools.length)])();
    if (c >= '\ud800' && c <= '\udfff') c = 'x';
    s += c.replace(/\n/g, ' ');
  }
  lines.push(s);
}
(async () => {
  const t = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
  const out = [];
  for (let i = 0; i < lines.length; i += 20000) {
    const e = await t.encodeBatch(lines.slice(i, i + 20000), { addSpecialTokens: false });
    for (const x of e) out.push(x.getIds().join(','));
  }
  fs.writeFileSync(path.join(outDir, 'in.txt'), lines.join('\n') + '\n');
  fs.writeFileSync(path.join(outDir, 'official.txt'), out.join('\n') + '\n');
  console.log(`${lines.length} lines`);
})();
