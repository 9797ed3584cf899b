#!/usr/bin/env node
// gen_golden.js - makes tests/data/tokenizer/<name>/golden.jsonl with the
// official Hugging Face tokenizer (npm `tokenizers`, the Rust library's binding).
//
//   cd tools/tokenizer && npm ci && node gen_golden.js [TOKENIZER_DIR [OUT_FILE]]
//   (defaults: ../../tests/data/tokenizer/deepseek_v3 and DIR/golden.jsonl)
//
// Output: one JSON object a line, {"cat": CATEGORY, "text": TEXT, "ids": [ID,...]}
// where ids = encode(text, add_special_tokens=false), and the script checks that
// the official decode(ids) gives back text. The corpus is made here from fixed
// seeds and a seeded PRNG, so the file is the same on every run.
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');

const dir = process.argv[2] || path.join(__dirname, '../../tests/data/tokenizer/deepseek_v3');
const out = process.argv[3] || path.join(dir, 'golden.jsonl');

// ---------------------------------------------------------------- PRNG
let seed = 0x5eed1234;
function rnd() { // mulberry32
  seed = (seed + 0x6D2B79F5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const ri = (n) => Math.floor(rnd() * n);
const pick = (a) => a[ri(a.length)];
const cps = (s) => Array.from(s);
function slice(s) { const c = cps(s); const a = ri(c.length); const b = a + 1 + ri(c.length - a); return c.slice(a, b).join(''); }

// ---------------------------------------------------------------- seed texts
const EN = [
  "The quick brown fox jumps over the lazy dog.",
  "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.",
  "Call me Ishmael. Some years ago—never mind how long precisely—having little or no money in my purse, I thought I would sail about a little.",
  "In a hole in the ground there lived a hobbit. Not a nasty, dirty, wet hole, filled with the ends of worms and an oozy smell.",
  "\"Don't panic!\" she said, isn't it? We'll see; they're here, you've won, I'd go, he'll stay.",
  "Mixture-of-experts models route each token to a few experts out of many, so most parameters stay idle for any one token.",
  "Mr. Smith paid $1,234.56 on 2024-03-15 at 10:45 AM (UTC+8) — roughly 3.5% more than last year's €999.",
  "E-mail me at john.doe@example.com or visit https://example.org/path?q=1&lang=en#top for more info.",
  "She sells sea-shells by the sea-shore; the shells she sells are surely sea-shells.",
  "CAPITAL LETTERS AND lower case And MiXeD CaSe words: iPhone, eBay, McDonald's, O'Neill.",
  "Hyphenated-words, slashes/and\\backslashes, under_scores, and... ellipses… plus “smart quotes” and ‘single’ ones.",
  "Naïve café résumé: coöperate, façade, jalapeño, Ångström, Øresund, Straße, Œuvre.",
  "A man, a plan, a canal: Panama! Was it a car or a cat I saw? No 'x' in Nixon.",
  "Tokenizers split text into pieces; byte-level BPE can encode any byte sequence without an unknown token.",
  "He said: \"I'll be back.\" Then—after a long pause—he left (without a word).",
  "#hashtag @mention !important ?query &amp; <html> [link](url) {json: true} ~tilde ^caret `code`",
];
const ZH = [
  "我爱北京天安门，天安门上太阳升。",
  "深度求索是一家专注于通用人工智能的公司。",
  "今天天气很好，我们去公园散步吧！",
  "混合专家模型把每个词元分配给少数几个专家。",
  "《红楼梦》是中国古典四大名著之一，作者曹雪芹。",
  "请问：这个问题的答案是什么？谢谢！",
  "机器学习、深度学习和强化学习都是人工智能的分支。",
  "他在2023年10月1日买了3本书，共花费128元。",
  "繁體中文：這是一個測試句子，包含「引號」與『書名號』。",
  "龘靐齉爩，生僻字也要能正确编码。𠮷野家",
];
const JA = [
  "こんにちは、世界！今日はいい天気ですね。",
  "私は日本語を勉強しています。カタカナとひらがなと漢字。",
  "東京タワーは1958年に完成しました。",
  "吾輩は猫である。名前はまだ無い。",
  "ｶﾀｶﾅの半角文字とーー長音記号、ヴァイオリン。",
  "「これはテストです」と彼は言った。",
];
const KO = [
  "안녕하세요, 세계! 오늘 날씨가 좋네요.",
  "저는 한국어를 공부하고 있습니다.",
  "대한민국의 수도는 서울입니다.",
  "한글은 1443년에 세종대왕이 창제했습니다.",
  "ㄱㄴㄷㄹ ㅏㅑㅓㅕ 자모도 포함합니다.",
];
const EMOJI = [
  "😀", "😂🤣", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🧑🏿‍💻", "❤️", "🇨🇳🇺🇸🇯🇵", "👩‍❤️‍💋‍👨", "1️⃣", "#️⃣", "©️®️™️",
  "🤖 robots", "I ❤️ NY", "🎉🎉🎉 party", "☕️ + 🍰 = 😋", "🐈‍⬛", "🫠🫶🪿", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "✌🏻✌🏼✌🏽✌🏾✌🏿",
];
const OTHER = [
  "Привет, мир! Как дела?", "Γειά σου Κόσμε! αβγδε ΑΒΓΔΕ", "مرحبا بالعالم", "שלום עולם",
  "नमस्ते दुनिया", "สวัสดีชาวโลก", "Xin chào thế giới", "Merhaba dünya, İstanbul ığdır",
  "∀x∈ℝ: x²≥0, ∑ᵢ aᵢ = ∫₀¹ f(x)dx ≈ π/4 ± ε", "½ ¾ ⅓ Ⅻ ① ⑳ ²³ ٣٤٥ ०१२ 一二三",
  "e\u0301 a\u0300 o\u0308 (combining marks) Z\u0351\u036b\u0343a\u0352l\u0367g\u0351o",
  "\u00a0non-breaking\u00a0space\u3000ideographic\u2003em\u2009thin\u200bzwsp\u200d\u2028ls\u2029ps\u0085nel\u180emvs\ufeffbom",
  "control \u0001\u0002\u0007\u001b[0m bell \u007f del",
  "ＦＵＬＬＷＩＤＴＨ ｆｕｌｌ １２３４５ ！？",
];
const CODE = [
  "#include <stdio.h>\n\nint main(void) {\n    printf(\"hello, world\\n\");\n    return 0;\n}\n",
  "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
  "const add = (a, b) => a + b;\nconsole.log(`sum: ${add(2, 3)}`);",
  "for (int i = 0; i < n; i++) { sum += x[i] * w[i]; }",
  "if (x != NULL && *x == '\\0') return -1; // empty",
  "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
  "<div class=\"container\"><p id='intro'>Hello &amp; welcome</p></div>",
  "{\"key\": \"value\", \"list\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
  "fn main() {\n\tlet v: Vec<u32> = (0..10).map(|x| x * x).collect();\n\tprintln!(\"{:?}\", v);\n}",
  "#!/bin/sh\nset -eu\nfor f in *.txt; do wc -l \"$f\"; done | sort -n > out.log 2>&1",
  "x = [i**2 for i in range(100) if i % 3 == 0]  # list comprehension",
  "    return self._cache.get(key, default)\n\n\n\nclass Foo(Bar, metaclass=ABCMeta):\n    pass",
  "a+=1;b-=2;c*=3;d/=4;e%=5;f<<=6;g>>=7;h&=8;i|=9;j^=10;k&&l||!m",
  "std::vector<std::pair<int, std::string>> v{{1, \"one\"}, {2, \"two\"}};",
  "\t\tswitch (op) {\r\n\t\tcase '+': return a + b;\r\n\t\tdefault: break;\r\n\t\t}\r\n",
  "// TODO(someone): fix this\n/* block\n * comment\n */\n",
  "0x7fffffff 0b1010 1e-9 3.14159f 1_000_000 -42 +7 .5 5. 0o777",
  "matrix[i][j] = matrix[i-1][j-1] + cost(s[i], t[j]);",
];
const SPECIALS = [
  "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<|EOT|>",
  "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>",
  "<｜tool▁outputs▁begin｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>", "<｜tool▁outputs▁end｜>",
  "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>", "<｜▁pad▁｜>", "<｜place▁holder▁no▁0｜>", "<｜place▁holder▁no▁799｜>",
];

// ---------------------------------------------------------------- corpus
const lines = [];
const add = (cat, text) => { if (text.length) lines.push([cat, text]); };
function many(cat, n, f) { for (let i = 0; i < n; i++) add(cat, f(i)); }

for (const s of EN) add('en', s);
many('en', 220, () => { let s = ''; const k = 1 + ri(3); for (let j = 0; j < k; j++) s += (j ? pick([' ', '  ', '\n', ' ']) : '') + slice(pick(EN)); return s; });
const WORDS = EN.join(' ').split(/\s+/);
many('en', 60, () => { let s = []; for (let j = 0, k = 1 + ri(12); j < k; j++) s.push(pick(WORDS)); return s.join(' '); });

for (const s of ZH) add('zh', s);
many('zh', 110, () => pick([slice(pick(ZH)), pick(ZH) + pick(ZH), slice(pick(ZH)) + ' ' + slice(pick(EN)), pick(ZH).replace(/，/g, ', ')]));
for (const s of JA) add('ja', s);
many('ja', 80, () => pick([slice(pick(JA)), pick(JA) + pick(JA), slice(pick(JA)) + slice(pick(ZH)), pick(JA) + ' ' + slice(pick(EN))]));
for (const s of KO) add('ko', s);
many('ko', 80, () => pick([slice(pick(KO)), pick(KO) + ' ' + pick(KO), slice(pick(KO)) + slice(pick(EN)), pick(KO).replace(/ /g, '')]));

for (const s of EMOJI) add('emoji', s);
many('emoji', 80, () => { let s = ''; for (let j = 0, k = 1 + ri(5); j < k; j++) s += pick(EMOJI) + pick(['', ' ', 'a', '\n', '!', '中']); return s; });

const digits = (n) => { let s = ''; for (let i = 0; i < n; i++) s += String(ri(10)); return s; };
for (let n = 1; n <= 25; n++) add('digits', digits(n));
many('digits', 110, () => pick([
  () => digits(1 + ri(30)),
  () => 'abc' + digits(1 + ri(10)) + 'def',
  () => digits(1 + ri(7)) + '.' + digits(1 + ri(7)),
  () => digits(1 + ri(3)) + ',' + digits(3) + ',' + digits(3),
  () => ' ' + digits(1 + ri(9)) + ' ' + digits(1 + ri(9)),
  () => '-' + digits(1 + ri(6)) + 'e' + digits(2),
  () => digits(4) + '-' + digits(2) + '-' + digits(2) + 'T' + digits(2) + ':' + digits(2),
  () => '价格' + digits(1 + ri(8)) + '元',
  () => 'v' + digits(1) + '.' + digits(2) + '.' + digits(3),
  () => '１２３４５６７' + digits(2) + '²³¹' + '٠١٢٣٤' + '½',
  () => '(' + digits(3) + ') ' + digits(3) + '-' + digits(4),
  () => digits(2) + '%' + ' ' + digits(5) + 'x' + digits(5),
])());

const WS = [' ', '  ', '   ', '    ', '        ', '\t', '\t\t', '\n', '\n\n', '\n\n\n', '\r\n', '\r', ' \n', '\n ', ' \t \n', '\u00a0', '\u3000', '\u2003', '\u0085', '\u2028', '\u180e', '\v', '\f'];
for (const w of WS) { add('space', w); add('space', 'a' + w + 'b'); add('space', w + 'x' + w); }
many('space', 70, () => { let s = ''; for (let j = 0, k = 1 + ri(6); j < k; j++) s += pick(WS) + pick(['', 'word', 'Word', '中文', '1234', '!', '?!', '😀', 'é', '.']); return s; });

for (const s of CODE) add('code', s);
const CODE_LINES = CODE.join('\n').split('\n').filter((l) => l.trim().length);
many('code', 120, () => pick([slice(pick(CODE)), pick(CODE_LINES), pick(CODE_LINES) + '\n' + pick(CODE_LINES), '    ' + pick(CODE_LINES), '\t' + pick(CODE_LINES) + '\n\n']));

for (const s of OTHER) add('other', s);
many('other', 70, () => pick([slice(pick(OTHER)), pick(OTHER) + ' ' + slice(pick(EN))]));
// random code points from many blocks (no surrogates)
const BLOCKS = [[0x20, 0x7e], [0xa0, 0x24f], [0x300, 0x36f], [0x370, 0x3ff], [0x400, 0x4ff], [0x590, 0x6ff], [0x900, 0x97f], [0xe00, 0xe7f],
  [0x1100, 0x11ff], [0x2000, 0x206f], [0x2100, 0x22ff], [0x3000, 0x30ff], [0x4e00, 0x9fff], [0xac00, 0xd7a3], [0xff00, 0xffef], [0x1f300, 0x1faff], [0x20000, 0x2a6df]];
many('random', 90, () => { let s = ''; for (let j = 0, k = 1 + ri(20); j < k; j++) { const b = pick(BLOCKS); s += String.fromCodePoint(b[0] + ri(b[1] - b[0] + 1)); } return s; });

for (const s of SPECIALS) add('special', s);
many('special', 90, () => pick([
  () => pick(SPECIALS) + slice(pick(EN)),
  () => slice(pick(EN)) + pick(SPECIALS) + slice(pick(ZH)),
  () => pick(SPECIALS) + pick(SPECIALS) + ' ' + pick(SPECIALS),
  () => '<｜begin▁of▁sentence｜>You are helpful.<｜User｜>' + slice(pick(EN)) + '<｜Assistant｜>' + slice(pick(EN)) + '<｜end▁of▁sentence｜>',
  () => ' ' + pick(SPECIALS) + ' \n',
  () => cps(pick(SPECIALS)).slice(0, 3 + ri(5)).join('') + ' partial',
  () => '<|User|> <User> <｜user｜> ' + pick(SPECIALS).replace('｜', '|'),
  () => pick(SPECIALS) + digits(5) + pick(SPECIALS) + '😀',
])());

// characters that Unicode 15-16 assigned (the official library knows them,
// PCRE2 10.42 does not: see newer_unicode in engine/text/tokenizer.c)
const NEWER = [[0x31350, 0x323af], [0x2ebf0, 0x2ee5d], [0x10d40, 0x10d49], [0x10d4a, 0x10d65], [0x2ffc, 0x2fff],
  [0x1cc00, 0x1ccef], [0x11380, 0x11389], [0x1b4e, 0x1b4f], [0x897, 0x897], [0x16d40, 0x16d6c], [0x1fa75, 0x1fa77]];
many('unicode16', 60, () => { let s = ''; for (let j = 0, k = 1 + ri(8); j < k; j++) { const b = pick(NEWER);
  s += String.fromCodePoint(b[0] + ri(b[1] - b[0] + 1)) + pick(['', '', 'a', ' ', '1', '!', ' x', '中']); } return s; });
// mixed: random draws from many character pools (what a differential test over
// 30,000 such lines and every code point showed to agree)
const POOLS = [
  () => String.fromCodePoint(0x20 + ri(95)), () => ' \t\r\u00a0\u3000\u2028\u0085\u180e\u200b\u200d\ufeff\u000b\u000c'[ri(13)],
  () => String(ri(10)), () => String.fromCodePoint(0xa0 + ri(0x2000)), () => String.fromCodePoint(0x2000 + ri(0x1000)),
  () => String.fromCodePoint(0x3000 + ri(0x7000)), () => String.fromCodePoint(0xac00 + ri(0x2ba4)),
  () => String.fromCodePoint(0x10000 + ri(0x20000)), () => String.fromCodePoint(0x1f300 + ri(0x700)),
  () => pick(SPECIALS), () => String.fromCodePoint(0x300 + ri(0x70)),
];
many('mixed', 150, () => { let s = ''; const bias = ri(POOLS.length);
  for (let j = 0, k = 1 + ri(30); j < k; j++) { let c = (rnd() < 0.5 ? POOLS[bias] : pick(POOLS))(); if (c >= '\ud800' && c <= '\udfff') c = 'x'; s += c; } return s; });

// long runs: PCRE2's default JIT stack runs out on a few thousand spaces
add('long', 'begin' + ' '.repeat(20000) + 'end');
add('long', 'x' + '\n'.repeat(10000) + 'y');
add('long', ('\t \n  ').repeat(5000));
add('long', ' '.repeat(30000));
add('long', 'a'.repeat(20000) + ' ' + '9'.repeat(10000));
add('long', '中'.repeat(10000) + '😀'.repeat(2000));
add('long', ('word ').repeat(5000) + '!'.repeat(5000));
add('long', '\r\n'.repeat(8000) + ' \u3000'.repeat(3000));

// ---------------------------------------------------------------- encode
async function main() {
  const tok = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
  const seen = new Set();
  const outLines = [];
  const counts = {};
  for (const [cat, text] of lines) {
    if (seen.has(text)) continue;
    seen.add(text);
    const enc = await tok.encode(text, null, { addSpecialTokens: false });
    const ids = enc.getIds();
    const back = await tok.decode(ids, false);
    if (back !== text) throw new Error(`official decode does not round-trip: ${JSON.stringify(text)}`);
    outLines.push(JSON.stringify({ cat, text, ids }));
    counts[cat] = (counts[cat] || 0) + 1;
  }
  fs.writeFileSync(out, outLines.join('\n') + '\n');
  console.log(`${out}: ${outLines.length} lines`, JSON.stringify(counts));
}
main().catch((e) => { console.error(e.message); process.exit(1); });
