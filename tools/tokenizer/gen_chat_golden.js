#!/usr/bin/env node
// gen_chat_golden.js - makes tests/data/tokenizer/<name>/chat_golden.json with
// the official JS renderer of Hugging Face chat templates (npm @huggingface/jinja)
// and the official tokenizer (npm tokenizers) for the ids of the result.
//
//   cd tools/tokenizer && npm ci && node gen_chat_golden.js [TOKENIZER_DIR [OUT]]
//
// Output: {"bos_token", "eos_token", "cases": [{"name", "add_generation_prompt",
// "messages", "text", "ids"} or, when the template fails on that
// conversation, {"name", "add_generation_prompt", "messages", "error"}],
// "features": {"messages", "cases": [{"template",
// "text"}]}} where text is the template rendered as
// transformers' apply_chat_template does and ids = encode(text) without
// added special tokens (the BOS is in the text already). "features" are small
// templates that exercise the Jinja subset engine/text/chat.c interprets.
'use strict';
const fs = require('fs');
const path = require('path');
const { Template } = require('@huggingface/jinja');
const { Tokenizer } = require('tokenizers');

const dir = process.argv[2] || path.join(__dirname, '../../tests/data/tokenizer/deepseek_v3');
const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
const tokstr = (t) => (t && typeof t === 'object' ? t.content : t);
const bos = tokstr(cfg.bos_token), eos = tokstr(cfg.eos_token);

const sys = (c) => ({ role: 'system', content: c });
const user = (c) => ({ role: 'user', content: c });
const asst = (c) => ({ role: 'assistant', content: c });
const tool = (c) => ({ role: 'tool', content: c });
const call = (name, args) => ({ type: 'function', function: { name, arguments: JSON.stringify(args) } });

const convs = {
  user_only: [user('Hello!')],
  system_user: [sys('You are a helpful assistant.'), user('What is 2+2?')],
  two_systems: [sys('Be brief.'), sys('Answer in French.'), user('Hi')],
  multi_turn: [user('Hi'), asst('Hello! How can I help?'), user('Tell me a joke.')],
  full_dialogue: [sys('You are concise.'), user('Capital of France?'), asst('Paris.'), user('And of Japan?'), asst('Tokyo.')],
  unicode: [sys('你是一个有帮助的助手。'), user('こんにちは 🌸 안녕하세요\nline two\n\n  indented'), asst('👋 Hello — ¡hola!'), user('Ελληνικά')],
  special_strings_in_content: [user('What does <｜User｜> mean? And {{ braces }} or {% tags %}?')],
  empty_content: [user(''), asst(''), user('x')],
  system_only: [sys('Only a system prompt.')],
  empty: [],
  system_in_middle: [user('first'), sys('late system'), user('second')],
  tool_calls: [
    user("What's the weather in Paris and in Tokyo?"),
    { role: 'assistant', content: null, tool_calls: [call('get_weather', { city: 'Paris' }), call('get_weather', { city: 'Tokyo' })] },
    tool('{"temp": 18}'),
    tool('{"temp": 25}'),
    asst('Paris is 18°C and Tokyo is 25°C.'),
    user('Thanks'),
  ],
  single_tool_call_pending: [
    sys('Use tools.'),
    user('Time?'),
    { role: 'assistant', content: null, tool_calls: [call('now', {})] },
    tool('12:00'),
  ],
  long_text: [user('word '.repeat(200).trim()), asst('ok '.repeat(50).trim())],
};

(async () => {
  const tmpl = new Template(cfg.chat_template);
  const tok = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
  const cases = [];
  for (const [name, messages] of Object.entries(convs)) {
    for (const agp of [false, true]) {
      let text;
      try {
        text = tmpl.render({ messages, add_generation_prompt: agp, bos_token: bos, eos_token: eos });
      } catch (e) {
        cases.push({ name, add_generation_prompt: agp, messages, error: e.message });
        continue;
      }
      const ids = (await tok.encode(text, null, { addSpecialTokens: false })).getIds();
      cases.push({ name, add_generation_prompt: agp, messages, text, ids });
    }
  }
  // small templates exercising the Jinja subset the C interpreter supports
  const msgs = [sys('S'), user('Hi there'), asst('Hello </think> world'), user('Bye')];
  const features = [
    "{% for m in messages %}{{ loop.index0 }}:{{ m.role }}{% if not loop.last %}, {% endif %}{% endfor %}",
    "{% for m in messages %}{% if m['role'] == 'user' %}U{% elif m['role'] == 'assistant' %}A{% else %}?{% endif %}{% endfor %}",
    "{{ messages[-1]['content'] }}|{{ messages | length }}|{{ 'abc' | length }}|{{ '  x  ' | trim }}|",
    "{% set x = 'a' ~ 1 ~ true %}{{ x }} {{ 1 + 2 * 3 }} {{ 7 % 3 }} {{ -2 + 5 }}",
    "{{ messages[2].content.split('</think>')[-1].strip() }}|{{ 'x' in 'xyz' }}|{{ 'q' not in 'xyz' }}|{{ 'S' if messages[0].role == 'system' else 'N' }}",
    "{% set ns = namespace(n=0, s='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% set ns.s = ns.s + m.role[0:1] if false else ns.s + m.role %}{% endfor %}{{ ns.n }} {{ ns.s }}",
    "{% set y = 1 %}{% for m in messages %}{% set y = 2 %}{% endfor %}{{ y }}",
    "A\n  {% if true %}\n    B\n  {% endif %}\nC\n",
    "A  {%- if true -%}  B  {%- endif -%}  C {# comment #} D {#- trimmed -#} E",
    "{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}",
    "{{ foo is defined }} {{ foo is not defined }} {{ messages is defined }} {{ none is none }} {{ 'a' is string }} {{ (1 == 1) and 'yes' }} {{ 0 or 'dflt' }}",
    "{% for x in [] %}X{% else %}empty{% endfor %}{% for x in [1, 2] %}{{ x }}{% endfor %}",
    "{{ bos_token }}{% for m in messages %}{{ m.content | upper }}{% endfor %}{{ eos_token }}",
    "{{ 'a\\nb\\tc' }}{{ \"dq'\" }}{{ 'ab'.startswith('a') }}{{ 'ab'.endswith('a') }}{{ 'a-b-c'.replace('-', '+') }}",
  ].filter((t) => !t.includes('[0:1]'));
  const feature_cases = [];
  for (const t of features) {
    const text = new Template(t).render({ messages: msgs, add_generation_prompt: true, bos_token: bos, eos_token: eos });
    feature_cases.push({ template: t, text });
  }
  const out = process.argv[3] || path.join(dir, 'chat_golden.json');
  fs.writeFileSync(out, JSON.stringify({ bos_token: bos, eos_token: eos, cases, features: { messages: msgs, cases: feature_cases } }, null, 1) + '\n');
  console.log(`${out}: ${cases.length} cases`);
})().catch((e) => { console.error(e.message); process.exit(1); });
