#!/usr/bin/env node
// check_tiny.js - the official library's ids for the tiny tokenizers of
// tests/test_tokenizer.c (same vocab, merges and options), to check that
// test's expectations: cd tools/tokenizer && node check_tiny.js
// (The official library wants merges all as "a b" strings or all as pairs;
// the C test mixes both forms, which gives the same ranks.)
'use strict';
const os = require('os');
const path = require('path');
const tmp = require('fs').mkdtempSync(path.join(os.tmpdir(), 'moe-tiny-'));
const { Tokenizer } = require('tokenizers');
const fs = require('fs');
const VOCAB = {"a":0,"b":1,"c":2,"d":3,"-":4,"\u0120":5,"w":6,"ab":7,"bc":8,"abc":9,"a-":10,"-b":11,"--":12,"\u0120a":13,"cd":14};
const MERGES = ["b c", "a b", "a bc", "a -", "- b", "- -", "\u0120 a"];
function tiny(split, bl, extra, added) {
  const j = { version: "1.0", normalizer: null, added_tokens: added || [],
    pre_tokenizer: { type: "Sequence", pretokenizers: [...(split ? [split] : []), Object.assign({ type: "ByteLevel", trim_offsets: true }, bl || { add_prefix_space: false, use_regex: false })] },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true }, model: Object.assign({ type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab: VOCAB, merges: MERGES }, extra || {}) };
  fs.writeFileSync(path.join(tmp, 'tokenizer.json'), JSON.stringify(j));
  return Tokenizer.fromFile(path.join(tmp, 'tokenizer.json'));
}
const sp = (behavior, invert, pat) => ({ type: "Split", pattern: pat || { String: "-" }, behavior, invert });
(async () => {
  const enc = async (t, s) => (await t.encode(s, null, { addSpecialTokens: false })).getIds().join(' ');
  let t = tiny();
  for (const s of ["abc", "ab", "abcd", "cab", "a-b", " a", "", "xyz"]) console.log('merges', JSON.stringify(s), await enc(t, s));
  for (const [b, inv, s] of [["Isolated", 0, "a-b"], ["MergedWithPrevious", 0, "a-b"], ["MergedWithNext", 0, "a-b"], ["Removed", 0, "a-b"], ["Isolated", 0, "a--b"], ["Contiguous", 0, "a--b"], ["Removed", 1, "a-b"], ["MergedWithNext", 1, "-a-"]])
    console.log('split', b, inv, s, await enc(tiny(sp(b, !!inv)), s));
  console.log('regex', await enc(tiny(sp("Isolated", false, { Regex: "\\p{L}+" })), "ab-ab"));
  t = tiny(null, { add_prefix_space: true, use_regex: false });
  for (const s of ["ab", " ab", "a"]) console.log('prefix', JSON.stringify(s), await enc(t, s));
  console.log('use_regex', await enc(tiny(null, { add_prefix_space: false, use_regex: true }), "a-b"));
  t = tiny(null, null, { ignore_merges: true });
  for (const s of ["abc", "a-"]) console.log('ignore_merges', s, await enc(t, s));
  const added = [{id:20,content:"<s>",special:true,normalized:false,lstrip:false,rstrip:false,single_word:false},
    {id:21,content:"<l>",special:true,normalized:false,lstrip:true,rstrip:false,single_word:false},
    {id:22,content:"<r>",special:true,normalized:false,rstrip:true,lstrip:false,single_word:false},
    {id:23,content:"ww",special:false,normalized:true,single_word:true,lstrip:false,rstrip:false},
    {id:24,content:"<s>x",special:false,normalized:true,lstrip:false,rstrip:false,single_word:false},
    {id:25,content:"<ss>",special:false,normalized:true,lstrip:false,rstrip:false,single_word:false}];
  t = tiny(null, null, null, added);
  for (const s of ["a<s>b", "<s><s>", "<s>x", "a <l>b", "a<r>  b", "a ww b", "awwb", "<ss>", "ww", "a\u00a0<l>b", "é ww", "1ww"]) console.log('added', JSON.stringify(s), await enc(t, s));
  console.log('decode', await t.decode([0, 15, 20, 1], false));
  fs.rmSync(tmp, { recursive: true });
})();
