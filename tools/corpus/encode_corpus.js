#!/usr/bin/env node
// Tokenize a corpus text file (documents separated by "\n\f\n" lines, as written by
// assemble.py) into a flat little-endian uint16 token file for training:
// every document becomes  BOS(0) tokens... EOS(1).
//
//   node tools/corpus/encode_corpus.js models/toy/tokenizer.json build/corpus/train.txt build/corpus/train.bin
'use strict';
const fs = require('fs');
const path = require('path');
const tk = require(path.join(__dirname, 'node_modules', 'tokenizers'));
const [tokFile, inFile, outFile] = process.argv.slice(2);
const tok = tk.Tokenizer.fromFile(tokFile);
const docs = fs.readFileSync(inFile, 'utf8').replace(/\n$/, '').split('\n\f\n');
(async () => {
  const out = [];
  const B = 256;
  for (let i = 0; i < docs.length; i += B) {
    const encs = await tok.encodeBatch(docs.slice(i, i + B), { addSpecialTokens: false });
    for (const e of encs) {
      out.push(0);
      for (const id of e.getIds()) out.push(id);
      out.push(1);
    }
  }
  const arr = Uint16Array.from(out);
  fs.writeFileSync(outFile, Buffer.from(arr.buffer));
  const bytes = fs.statSync(inFile).size;
  console.log(outFile + ': ' + docs.length + ' docs, ' + arr.length + ' tokens, ' + (bytes / arr.length).toFixed(2) + ' bytes/token');
})();
