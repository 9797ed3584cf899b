#!/usr/bin/env node
// make_bench_text.js - writes a multi-MB benchmark text (default 4 MB) made of
// the golden lines in a seeded random order: node make_bench_text.js OUT [MB [CATS]]
// (CATS: comma-separated golden categories to draw from, e.g. en,code; default all)
'use strict';
const fs = require('fs');
const path = require('path');
const golden = path.join(__dirname, '../../tests/data/tokenizer/deepseek_v3/golden.jsonl');
const cats = process.argv[4] ? process.argv[4].split(',') : null;
const texts = fs.readFileSync(golden, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  .filter((o) => !cats || cats.includes(o.cat)).map((o) => o.text);
let seed = 12345;
const rnd = () => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed / 4294967296; };
const want = (Number(process.argv[3]) || 4) * 1e6;
const parts = [];
let n = 0;
while (n < want) { const t = texts[Math.floor(rnd() * texts.length)]; parts.push(t); n += Buffer.byteLength(t) + 1; }
fs.writeFileSync(process.argv[2], parts.join('\n') + '\n');
