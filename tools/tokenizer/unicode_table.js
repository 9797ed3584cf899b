#!/usr/bin/env node
// unicode_table.js - the code points whose class (L, M, N, P, S) the official
// library (Oniguruma, newer Unicode) knows but the system PCRE2 does not, as
// the C table `newer_unicode` in engine/text/tokenizer.c.
//
//   gcc -O2 pcre_classes.c -o /tmp/pcre_classes -lpcre2-8
//   /tmp/pcre_classes > /tmp/pcre.cls && node unicode_table.js /tmp/pcre.cls
//
// Candidates are the code points where node's Unicode (ICU) and PCRE2 differ;
// each is then classified by the official pre-tokenizer (DeepSeek-V3's Split
// regexes) with two probe strings, so a character newer than the official
// library's Unicode is left out.
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');
const pcre = fs.readFileSync(process.argv[2], 'utf8');
const res = [/^\p{L}$/u, /^\p{M}$/u, /^\p{N}$/u, /^\p{P}$/u, /^\p{S}$/u, /^\p{White_Space}$/u];
const t = Tokenizer.fromFile(path.join(__dirname, '../../tests/data/tokenizer/deepseek_v3/tokenizer.json'));
const pt = t.getPreTokenizer();
const keep = [];
let idx = 0;
for (let cp = 0; cp <= 0x10ffff; cp++) {
  if (cp >= 0xd800 && cp <= 0xdfff) continue;
  const pc = pcre[idx++];
  const x = String.fromCodePoint(cp);
  let nc = '-';
  for (let i = 0; i < 6; i++) if (res[i].test(x)) { nc = 'LMNPSZ'[i]; break; }
  if (nc === pc || nc === '-' || nc === 'Z') continue;
  // official class: N if "xxxx" splits in two (\p{N}{1,3}); else by " xa"
  let oc;
  if (pt.preTokenizeString(x + x + x + x).length === 2) oc = 'N';
  else {
    const s2 = pt.preTokenizeString(' ' + x + 'a').map((p) => p[0].length);
    oc = s2.length === 1 ? 'LM' : s2.length === 2 && s2[1] === 1 ? 'PS' : 'other';
  }
  if (oc === 'other') continue; // newer than the official library's Unicode
  if (!oc.includes(nc)) throw new Error(`U+${cp.toString(16)}: node says ${nc}, official ${oc}`);
  const last = keep[keep.length - 1];
  if (last && last[1] === cp - 1 && last[2] === nc) last[1] = cp;
  else keep.push([cp, cp, nc]);
}
const hex = (v) => '0x' + v.toString(16).toUpperCase();
const cells = keep.map(([a, b, c]) => `{'${c}', ${hex(a)}, ${hex(b)}}`);
let line = '   ';
const lines = [];
for (const c of cells) { if (line.length + c.length + 2 > 112) { lines.push(line); line = '   '; } line += ' ' + c + ','; }
lines.push(line);
console.log(`/* ${keep.length} ranges */\n` + lines.join('\n'));
