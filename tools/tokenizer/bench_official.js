#!/usr/bin/env node
// bench_official.js - the official library's encoding speed, printed like
// `moe tokenize --bench`: node bench_official.js TOKENIZER_JSON TEXT_FILE
// (whole text in one encode call, then every line in one encodeBatch call)
'use strict';
const fs = require('fs');
const { Tokenizer } = require('tokenizers');
(async () => {
  const text = fs.readFileSync(process.argv[3], 'utf8');
  const bytes = Buffer.byteLength(text, 'utf8');
  let t0 = process.hrtime.bigint();
  const tok = Tokenizer.fromFile(process.argv[2]);
  let t1 = process.hrtime.bigint();
  const e0 = process.hrtime.bigint();
  const enc = await tok.encode(text, null, { addSpecialTokens: false });
  const n = enc.getIds().length;
  const e1 = process.hrtime.bigint();
  const s = Number(e1 - e0) / 1e9;
  // then line by line, in one batch call (run with TOKENIZERS_PARALLELISM=false for one thread)
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const l0 = process.hrtime.bigint();
  await tok.encodeBatch(lines, { addSpecialTokens: false });
  const l1 = process.hrtime.bigint();
  const ls = Number(l1 - l0) / 1e9;
  console.log(`load_ms=${(Number(t1 - t0) / 1e6).toFixed(1)} bytes=${bytes} tokens=${n} encode_s=${s.toFixed(4)} ` +
    `encode_MBps=${(bytes / 1e6 / s).toFixed(2)} lines=${lines.length} lines_MBps=${(bytes / 1e6 / ls).toFixed(2)}`);
})();
