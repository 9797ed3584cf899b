#!/usr/bin/python3
"""serve_check.py - the checks of tests/cli_serve.sh against a running `moe serve`
(Python standard library only). Usage:

    serve_check.py PORT basic MOE MODEL [DTYPE]   routes, chat/completions, streams, usage, stop,
                                             routing extension, cache reuse, greedy = moe generate,
                                             32 concurrent requests, every bad-input case
    serve_check.py PORT mtp MOE MODEL [DTYPE]        basic against a --mtp-mode always server, drafts accepted
    serve_check.py PORT mtp-auto MOE MODEL [DTYPE]   basic against a --mtp (auto) server, both kinds of step
    serve_check.py PORT parallel MOE MODEL [DTYPE]   greedy = moe generate while 15 others decode
    serve_check.py PORT limits KEY PID       401, disconnect frees the slot, 503 queue full,
                                             SIGTERM ends running streams with a final chunk

Prints one FAIL line per failed check and "serve_check: N passed, M failed"; exits 1 on
any failure. Every network call has a timeout.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"
TIMEOUT = 60
passed = 0
failed = 0


def ok(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what, flush=True)
    return cond


def request(port, method, path, body=None, headers=None, timeout=TIMEOUT):
    """(status, headers dict, body bytes)"""
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    h = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        h.setdefault("Content-Type", "application/json")
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data


def post(port, path, body, headers=None):
    s, h, d = request(port, "POST", path, body, headers)
    try:
        return s, json.loads(d)
    except ValueError:
        return s, {"_raw": d}


def stream(port, path, body, headers=None, on_chunk=None):
    """Streams an SSE response: (status, [chunk dicts], saw_done)."""
    c = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    h = dict(headers or {})
    h["Content-Type"] = "application/json"
    c.request("POST", path, body=json.dumps(body), headers=h)
    r = c.getresponse()
    chunks, done = [], False
    if r.status != 200:
        r.read()
        c.close()
        return r.status, chunks, done
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        payload = line[6:]
        if payload == b"[DONE]":
            done = True
            continue
        chunks.append(json.loads(payload))
        if on_chunk and on_chunk(chunks[-1]):
            break
    c.close()
    return r.status, chunks, done


def chat_text(chunks):
    return "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch.get("choices"))


def compl_text(chunks):
    return "".join(ch["choices"][0].get("text", "") for ch in chunks if ch.get("choices"))


def metrics(port):
    s, _, d = request(port, "GET", "/metrics")
    out = {}
    for line in d.decode().splitlines():
        if line and not line.startswith("#") and "{" not in line:
            k, v = line.split()
            out[k] = float(v)
    return out


def wait_metric(port, name, pred, seconds=20):
    t0 = time.time()
    while time.time() - t0 < seconds:
        if pred(metrics(port).get(name, -1)):
            return True
        time.sleep(0.02)
    return False


DTYPE = "auto"
MTP = False   # the server runs --mtp: passes also run the drafts


def generate(moe, model, prompt, n, no_bos):
    args = [moe, "generate", "-m", model, "-p", prompt, "--greedy", "-n", str(n), "-t", "1", "--dtype", DTYPE]
    if no_bos:
        args.append("--no-bos")
    out = subprocess.run(args, capture_output=True, timeout=120).stdout.decode()
    ok(out.startswith(prompt), "generate echoes the prompt")
    return out[len(prompt):].rstrip("\n")


def check_error(port, method, path, body, status, what, headers=None, param=None):
    s, h, d = request(port, method, path, body, headers)
    ok(s == status, f"{what}: status {s}, wanted {status}: {d[:200]!r}")
    try:
        e = json.loads(d)["error"]
        ok(isinstance(e.get("message"), str) and e["message"] and "type" in e and "param" in e and e.get("code") == status,
           f"{what}: error body {d[:200]!r}")
        if param:
            ok(e.get("param") == param, f"{what}: param {e.get('param')!r}, wanted {param!r}")
    except (ValueError, KeyError, TypeError):
        ok(False, f"{what}: not an OpenAI error body: {d[:200]!r}")
    s2, _, _ = request(port, "GET", "/health")
    ok(s2 == 200, f"{what}: server still answers")
    return d


# ------------------------------------------------------------------ basic


def basic(port, moe, model):
    s, _, d = request(port, "GET", "/health")
    ok(s == 200 and json.loads(d)["status"] == "ok", "/health")
    s, _, d = request(port, "GET", "/v1/models")
    models = json.loads(d)["data"]
    ok(s == 200 and len(models) == 1, "/v1/models")
    name = models[0]["id"]
    s, _, d = request(port, "GET", "/v1/models/" + name)
    ok(s == 200 and json.loads(d)["id"] == name, "/v1/models/ID")
    s, h, d = request(port, "GET", "/")
    ok(s == 200 and h.get("content-type", "").startswith("text/html") and b"<html" in d and b"moe_routing" in d,
       "the page is served at /")
    ok(b"http://" not in d and b"https://" not in d, "the page loads no external assets")
    s, _, d = request(port, "GET", "/props")
    props = json.loads(d)
    ok(s == 200 and props["moe_routing_info"]["experts"] > 0, "/props")

    # tokenize / detokenize round trip
    s, t = post(port, "/tokenize", {"content": "Once upon a time"})
    ok(s == 200 and len(t["tokens"]) > 0, "/tokenize")
    s, t2 = post(port, "/tokenize", {"content": "Once upon a time", "add_special": True})
    ok(s == 200 and len(t2["tokens"]) == len(t["tokens"]) + 1, "/tokenize add_special adds BOS")
    s, dt = post(port, "/detokenize", {"tokens": t["tokens"]})
    ok(s == 200 and dt["content"] == "Once upon a time", f"/detokenize round trip: {dt}")

    msgs = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "Once upon a time"}]
    s, tp = post(port, "/apply-template", {"messages": msgs})
    ok(s == 200 and "Once upon a time" in tp["prompt"], "/apply-template")
    rendered = tp["prompt"]
    s, rt = post(port, "/tokenize", {"content": rendered})
    n_rendered = len(rt["tokens"])

    # non-streaming chat: shape, usage, greedy = moe generate on the rendered prompt
    N = 30
    s, r = post(port, "/v1/chat/completions", {"messages": msgs, "max_tokens": N, "temperature": 0})
    ok(s == 200 and r["object"] == "chat.completion", f"chat: {s} {r}")
    ch = r["choices"][0]
    ok(ch["message"]["role"] == "assistant" and isinstance(ch["message"]["content"], str), "chat: message")
    ok(ch["finish_reason"] in ("stop", "length"), "chat: finish_reason")
    u = r["usage"]
    ok(u["prompt_tokens"] == n_rendered, f"usage.prompt_tokens {u['prompt_tokens']} = tokens of the rendered prompt {n_rendered}")
    ok(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], "usage.total_tokens")
    if ch["finish_reason"] == "length":
        ok(u["completion_tokens"] == N, "usage.completion_tokens = max_tokens at finish length")
    answer = ch["message"]["content"]
    ref = generate(moe, model, rendered, N, True)
    ok(answer == ref, f"chat greedy = moe generate --greedy --no-bos on the rendered prompt:\n  {answer!r}\n  {ref!r}")

    # streaming chat: same text, role first, finish last, usage chunk, [DONE]
    s, chunks, done = stream(port, "/v1/chat/completions", {"messages": msgs, "max_tokens": N, "temperature": 0,
                                                           "stream": True, "stream_options": {"include_usage": True}})
    ok(s == 200 and done, "chat stream ends with [DONE]")
    ok(chunks and chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["choices"][0]["delta"].get("role") == "assistant",
       "chat stream: first chunk has the role")
    ok(chat_text(chunks) == answer, f"chat stream text = non-streamed: {chat_text(chunks)!r}")
    fin = [c for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"]]
    ok(len(fin) == 1 and fin[0]["choices"][0]["finish_reason"] == ch["finish_reason"], "chat stream: one finish chunk")
    ok(chunks[-1].get("choices") == [] and chunks[-1]["usage"]["completion_tokens"] == u["completion_tokens"]
       and chunks[-1]["usage"]["prompt_tokens"] == u["prompt_tokens"], "stream_options.include_usage: the usage chunk")
    ok(all("moe_routing" not in c for c in chunks), "no moe_routing unless asked")
    s, chunks, done = stream(port, "/v1/chat/completions", {"messages": msgs, "max_tokens": 4, "stream": True})
    ok(all("usage" not in c for c in chunks), "no usage chunk unless asked")

    # completions = moe generate (BOS first, as generate does)
    prompt = "The little dog"
    s, r = post(port, "/v1/completions", {"prompt": prompt, "max_tokens": N, "temperature": 0})
    ok(s == 200 and r["object"] == "text_completion", f"completion: {r}")
    ctext = r["choices"][0]["text"]
    ok(ctext == generate(moe, model, prompt, N, False), f"completion greedy = moe generate --greedy: {ctext!r}")
    s, chunks, done = stream(port, "/v1/completions", {"prompt": prompt, "max_tokens": N, "temperature": 0, "stream": True})
    ok(done and compl_text(chunks) == ctext, "completion stream text = non-streamed")
    s, r2 = post(port, "/v1/completions", {"prompt": t2["tokens"], "max_tokens": 8, "temperature": 0})
    s3, r3 = post(port, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0})
    ok(s == 200 and r2["choices"][0]["text"] == r3["choices"][0]["text"], "completion from token ids = from text")

    # seeded sampling is reproducible; top_k / min_p accepted
    body = {"prompt": prompt, "max_tokens": 20, "temperature": 1.0, "seed": 42, "top_k": 40, "top_p": 0.95, "min_p": 0.02}
    a = post(port, "/v1/completions", body)[1]["choices"][0]["text"]
    b = post(port, "/v1/completions", body)[1]["choices"][0]["text"]
    ok(a == b, "the same seed gives the same text")

    # logit_bias: OpenAI's {"id": bias} and llama-server's [[id, bias]]; false never samples it
    def first_tokens(extra, n=1):
        s, r = post(port, "/v1/completions", dict({"prompt": prompt, "max_tokens": n, "temperature": 0,
                                                    "moe_routing": True}, **extra))
        return [t["token"] for t in r.get("moe_routing", [])] if s == 200 else f"status {s} {r}"
    t0 = first_tokens({})[0]
    ok(first_tokens({"logit_bias": {str(t0): -100}})[0] != t0, f"logit_bias {{'{t0}': -100}} moves the greedy token")
    ok(first_tokens({"logit_bias": [[t0, False]]})[0] != t0, f"logit_bias [[{t0}, false]] bans it")
    ok(first_tokens({"logit_bias": {str(t0): 0.0}}) == [t0], "logit_bias 0 changes nothing")
    t1 = post(port, "/tokenize", {"content": " dog"})[1]["tokens"][-1]   # an ordinary token, not EOS
    ok(first_tokens({"logit_bias": {str(t1): 100}, "temperature": 0.9, "seed": 5}, 3) == [t1] * 3,
       f"logit_bias +100 forces token {t1}, sampled")
    s, chunks, done = stream(port, "/v1/completions", {"prompt": prompt, "max_tokens": 3, "temperature": 0, "stream": True,
                                                       "moe_routing": True, "logit_bias": [[t1, 100]]})
    ok([c["moe_routing"]["token"] for c in chunks if "moe_routing" in c] == [t1] * 3, "logit_bias, streamed")

    # stop strings: cut before the match, finish stop, streamed and not
    s, r = post(port, "/v1/completions", {"prompt": prompt, "max_tokens": 40, "temperature": 0})
    full = r["choices"][0]["text"]
    if ok(len(full) > 12, f"a long enough text for the stop test: {full!r}"):
        stop = full[8:11]
        want = full[:full.index(stop)]
        for st in (stop, [stop], ["zzzq", stop]):
            s, r = post(port, "/v1/completions", {"prompt": prompt, "max_tokens": 40, "temperature": 0, "stop": st})
            ok(r["choices"][0]["text"] == want and r["choices"][0]["finish_reason"] == "stop",
               f"stop {st!r}: {r['choices'][0]['text']!r} wanted {want!r}")
        s, chunks, done = stream(port, "/v1/completions", {"prompt": prompt, "max_tokens": 40, "temperature": 0,
                                                          "stop": stop, "stream": True})
        ok(compl_text(chunks) == want and chunks[-1]["choices"][0]["finish_reason"] == "stop", "stop, streamed")

    # routing extension: per chunk layers x (ids, weights, kept groups)
    s, chunks, done = stream(port, "/v1/chat/completions", {"messages": msgs, "max_tokens": 6, "temperature": 0,
                                                           "stream": True, "moe_routing": True})
    info = chunks[0].get("moe_routing_info") if chunks else None
    ok(info and info["experts"] > 0 and info["k"] > 0, f"moe_routing_info in the first chunk: {info}")
    rts = [c["moe_routing"] for c in chunks if "moe_routing" in c]
    ok(len(rts) == 6, f"one moe_routing per generated token ({len(rts)})")
    if info and rts:
        L, fd, K, Gk = info["layers"], info["first_dense"], info["k"], info["topk_group"]
        lay = rts[0]["layers"]
        ok(len(lay) == L - fd, "routing for every MoE layer")
        ok(all(len(l[1]) == K and len(l[2]) == K and len(set(l[1])) == K for l in lay), "K distinct experts with weights")
        ok(all(len(l[3]) == Gk for l in lay) if info["groups"] > 1 else True, "the kept groups")
        G = info["groups"]
        per = info["experts"] // G
        ok(all(all(e // per in l[3] for e in l[1]) for l in lay) if G > 1 else True, "chosen experts lie in kept groups")
        ok(all(isinstance(r["pos"], int) and "token" in r for r in rts), "routing carries token and position")
        ok([r["pos"] for r in rts] == list(range(rts[0]["pos"], rts[0]["pos"] + len(rts))), "routing positions ascend")

    # the next chat turn reuses the slot's cache
    s, r1 = post(port, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Tell me about a cat"}],
                                                "max_tokens": 12, "temperature": 0})
    turn2 = [{"role": "user", "content": "Tell me about a cat"},
             {"role": "assistant", "content": r1["choices"][0]["message"]["content"]},
             {"role": "user", "content": "And a dog?"}]
    m0 = metrics(port)
    s, r2 = post(port, "/v1/chat/completions", {"messages": turn2, "max_tokens": 4, "temperature": 0})
    m1 = metrics(port)
    cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"]
    ok(cached >= r1["usage"]["prompt_tokens"], f"the next turn reuses the cache: {cached} cached of {r2['usage']['prompt_tokens']}")
    # and the passes ran only the new tokens: the uncached prompt tail and the generated ones
    # (the last generated token is sampled, not necessarily run; with --mtp a pass also runs
    # each slot's draft, at most one rejected per generated token)
    ran = m1["moe_batch_tokens_total"] - m0["moe_batch_tokens_total"]
    new_prompt = r2["usage"]["prompt_tokens"] - cached
    gen = r2["usage"]["completion_tokens"]
    ok(new_prompt > 0 and new_prompt + gen - 1 <= ran <= new_prompt + (2 if MTP else 1) * gen,
       f"the next turn computes only its new tokens: {ran} run for {new_prompt} new prompt + {gen} generated")
    ok(m1["moe_prompt_tokens_cached_total"] - m0["moe_prompt_tokens_cached_total"] == cached, "metrics count the cached tokens")

    # 32 concurrent requests (greedy and seeded), half streamed: each equals its serial answer
    prompts = ["Once upon a time", "The cat", "A big red ball", "Tom and Sue", "In the park", "The sun was",
               "Lily had a", "One day"]
    bodies = []
    for i in range(32):
        b = {"prompt": prompts[i % 8], "max_tokens": 24, "cache_prompt": False}   # the same chunks every time
        b["temperature"] = 0 if i % 2 == 0 else 0.9
        if i % 2:
            b["seed"] = 1000 + i
        bodies.append(b)
    expected = [post(port, "/v1/completions", b)[1]["choices"][0]["text"] for b in bodies]
    got = [None] * 32

    def run(i):
        try:
            if i % 4 < 2:
                got[i] = post(port, "/v1/completions", bodies[i])[1]["choices"][0]["text"]
            else:
                got[i] = compl_text(stream(port, "/v1/completions", dict(bodies[i], stream=True))[1])
        except Exception as e:  # noqa: BLE001 - reported as a failure
            got[i] = f"error {e}"
    th = [threading.Thread(target=run, args=(i,)) for i in range(32)]
    for t in th:
        t.start()
    for t in th:
        t.join(120)
    bad = [i for i in range(32) if got[i] != expected[i]]
    ok(not bad, f"32 concurrent requests over the slots: {len(bad)} differ from their serial answers: {bad[:4]} "
                f"{[(got[i], expected[i]) for i in bad[:2]]}")
    m = metrics(port)
    ok(m.get("moe_slots_busy") == 0 and m.get("moe_queue_length") == 0, "all slots free afterwards")
    ok(m.get("moe_tokens_generated_total", 0) > 0 and m.get("moe_requests_total", 0) >= 64, "metrics count the requests")
    s, _, d = request(port, "GET", "/metrics")
    ok(b'moe_expert_tokens_total{layer="1",expert=' in d, "metrics: per-layer expert load")
    for name in ("moe_requests_total", "moe_prompt_tokens_total", "moe_tokens_generated_total",
                 "moe_tokens_generated_per_second", "moe_queue_length", "moe_slots_busy", "moe_kv_positions_used"):
        ok(name in m, f"metrics: {name}")
    ok(m.get("moe_tokens_generated_per_second", 0) > 0, "metrics: tokens/s after the load")
    ok(m.get("moe_prompt_tokens_total", 0) >= m.get("moe_prompt_tokens_cached_total", -1) >= 0, "metrics: prompt tokens and cached")

    # bad input: status and error body, the server keeps serving
    C = "/v1/chat/completions"
    check_error(port, "POST", C, "{not json", 400, "malformed JSON")
    check_error(port, "POST", C, "[1,2]", 400, "a body that is not an object")
    check_error(port, "POST", C, {"messages": "hi"}, 400, "messages not an array", param="messages")
    check_error(port, "POST", C, {"max_tokens": 5}, 400, "missing messages", param="messages")
    check_error(port, "POST", C, {"messages": []}, 400, "empty messages", param="messages")
    check_error(port, "POST", C, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "unknown role", param="messages")
    check_error(port, "POST", C, {"messages": [{"role": "user"}]}, 400, "a message without content", param="messages")
    check_error(port, "POST", C, {"messages": [{"role": "user", "content": 5}]}, 400, "content of the wrong type")
    check_error(port, "POST", C, {"messages": msgs, "max_tokens": 0}, 400, "max_tokens 0", param="max_tokens")
    check_error(port, "POST", C, {"messages": msgs, "max_tokens": -3}, 400, "max_tokens < 0", param="max_tokens")
    check_error(port, "POST", C, {"messages": msgs, "max_tokens": "9"}, 400, "max_tokens a string", param="max_tokens")
    check_error(port, "POST", C, {"messages": msgs, "temperature": "hot"}, 400, "temperature a string", param="temperature")
    check_error(port, "POST", C, {"messages": msgs, "top_p": 3}, 400, "top_p out of range", param="top_p")
    check_error(port, "POST", C, {"messages": msgs, "stream": "yes"}, 400, "stream not a bool", param="stream")
    check_error(port, "POST", C, {"messages": msgs, "stop": 7}, 400, "stop not a string", param="stop")
    check_error(port, "POST", C, {"messages": msgs, "n": 2}, 400, "n = 2", param="n")
    check_error(port, "POST", C, {"messages": msgs, "logit_bias": 5}, 400, "logit_bias not a map", param="logit_bias")
    check_error(port, "POST", C, {"messages": msgs, "logit_bias": {"cat": 1}}, 400, "logit_bias key not an id", param="logit_bias")
    check_error(port, "POST", C, {"messages": msgs, "logit_bias": [[99999999, 1]]}, 400, "logit_bias id out of range",
                param="logit_bias")
    check_error(port, "POST", C, {"messages": msgs, "logit_bias": {"5": "x"}}, 400, "logit_bias bias a string", param="logit_bias")
    check_error(port, "POST", C, {"messages": msgs, "logit_bias": [[5]]}, 400, "logit_bias pair of one", param="logit_bias")
    check_error(port, "POST", "/v1/completions", {"max_tokens": 3}, 400, "completion without a prompt", param="prompt")
    check_error(port, "POST", "/v1/completions", {"prompt": [1, 99999999]}, 400, "token id out of range", param="prompt")
    n_ctx = props["n_ctx"]
    d = check_error(port, "POST", C, {"messages": [{"role": "user", "content": "cat " * (n_ctx + 10)}]}, 400,
                    "prompt longer than the context")
    ok(f"context holds {n_ctx}".encode() in d, f"the message states the limit: {d[:200]!r}")
    check_error(port, "POST", C, {"messages": msgs, "model": "gpt-4"}, 404, "unknown model", param="model")
    check_error(port, "GET", "/v1/models/gpt-4", None, 404, "unknown model id")
    check_error(port, "GET", "/v1/nothing", None, 404, "unknown route")
    check_error(port, "GET", C, None, 405, "GET on a POST route")
    check_error(port, "POST", "/health", "{}", 405, "POST on a GET route")
    check_error(port, "POST", C, json.dumps({"messages": msgs, "pad": "x" * 70000}), 413, "body over --max-body")
    check_error(port, "POST", "/tokenize", {"content": 3}, 400, "tokenize: content not a string")
    check_error(port, "POST", "/detokenize", {"tokens": ["a"]}, 400, "detokenize: not ids")
    # a body sent in chunks (no Content-Length) over the limit
    c = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    c.request("POST", C, body=iter([b"{" + b" " * 40000, b" " * 40000 + b"}"]), encode_chunked=True,
              headers={"Transfer-Encoding": "chunked"})
    r = c.getresponse()
    ok(r.status == 413, f"a chunked body over --max-body: {r.status}")
    c.close()

    # a half-sent request is closed after --timeout, without holding a slot
    so = socket.create_connection((HOST, port), timeout=30)
    so.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\":")
    t0 = time.time()
    try:
        data = so.recv(1000)
    except (socket.timeout, ConnectionResetError):
        data = b"timeout"
    ok(data != b"timeout" and time.time() - t0 < 15, f"a half-sent request times out: {data!r} after {time.time() - t0:.1f} s")
    so.close()
    ok(metrics(port).get("moe_slots_busy") == 0, "no slot held by the half-sent request")


# ------------------------------------------------------------------ parallel


def parallel(port, moe, model):
    msgs = [{"role": "user", "content": "Once upon a time there was a little girl"}]
    s, tp = post(port, "/apply-template", {"messages": msgs})
    rendered = tp["prompt"]
    N = 30
    ref = generate(moe, model, rendered, N, True)
    ends = []
    stop_flag = threading.Event()

    def other(i):
        def cb(ch):
            return stop_flag.is_set()
        stream(port, "/v1/completions", {"prompt": "One day %d" % i, "max_tokens": 100000, "temperature": 1.0,
                                         "seed": i, "stream": True}, on_chunk=cb)
        ends.append(time.time())
    th = [threading.Thread(target=other, args=(i,)) for i in range(15)]
    for t in th:
        t.start()
    ok(wait_metric(port, "moe_slots_busy", lambda v: v >= 15), "15 requests decoding")
    s, r = post(port, "/v1/chat/completions", {"messages": msgs, "max_tokens": N, "temperature": 0})
    t_done = time.time()
    busy = metrics(port).get("moe_slots_busy")
    ok(busy >= 15, f"the 15 others were still decoding when it finished ({busy} busy)")
    ok(r["choices"][0]["message"]["content"] == ref,
       f"greedy with 15 others in the same passes = moe generate:\n  {r['choices'][0]['message']['content']!r}\n  {ref!r}")
    stop_flag.set()
    for t in th:
        t.join(60)
    ok(len(ends) == 15 and min(ends) >= t_done, "the others ran past it")
    m = metrics(port)
    per_pass = m["moe_batch_tokens_total"] / max(1, m["moe_forward_passes_total"])
    ok(per_pass > 8, f"tokens share passes: {per_pass:.1f} tokens per pass")
    ok(m["moe_batch_tokens_total"] <= 20 * m["moe_forward_passes_total"], "no pass beyond --batch 20")
    ok(wait_metric(port, "moe_slots_busy", lambda v: v == 0), "the clients that went away freed their slots")


# ------------------------------------------------------------------ limits


def limits(port, key, pid):
    auth = {"Authorization": "Bearer " + key}
    C = "/v1/completions"
    check_error(port, "POST", C, {"prompt": "x", "max_tokens": 2}, 401, "no API key")
    check_error(port, "POST", C, {"prompt": "x", "max_tokens": 2}, 401, "a wrong API key", {"Authorization": "Bearer nope"})
    check_error(port, "GET", "/v1/models", None, 401, "models without the key")
    check_error(port, "GET", "/metrics", None, 401, "metrics without the key")
    s, r = post(port, C, {"prompt": "x", "max_tokens": 2}, auth)
    ok(s == 200, "the right API key")
    s, _, _ = request(port, "GET", "/")
    ok(s == 200, "the page needs no key")

    def m():
        s, _, d = request(port, "GET", "/metrics", headers=auth)
        return {l.split()[0]: float(l.split()[1]) for l in d.decode().splitlines() if l and l[0] != "#" and "{" not in l}

    # a client that goes away mid-stream frees its slot
    long_body = {"prompt": "Once upon a time", "max_tokens": 100000, "temperature": 1.0, "seed": 1, "stream": True}
    g0 = m()["moe_tokens_generated_total"]
    s, chunks, done = stream(port, C, long_body, auth, on_chunk=lambda ch: True)
    ok(s == 200 and len(chunks) == 1 and not done, "read one chunk, then hang up")
    t0 = time.time()
    while time.time() - t0 < 20 and (m()["moe_slots_busy"] != 0):
        time.sleep(0.01)
    mm = m()
    ok(mm["moe_slots_busy"] == 0 and mm["moe_requests_cancelled_total"] == 1,
       f"the slot is free after the client left: {mm['moe_slots_busy']} busy, {mm['moe_requests_cancelled_total']} cancelled")
    ok(mm["moe_tokens_generated_total"] - g0 < mm["moe_kv_positions_total"] - 10, "it stopped before the context was full")
    s, r = post(port, C, {"prompt": "x", "max_tokens": 3}, auth)
    ok(s == 200 and r["usage"]["completion_tokens"] == 3, "the freed slot serves again")

    # one slot, a queue of one: the third request gets 503
    hold = []
    go = threading.Event()

    def holder(i):
        def cb(ch):
            go.wait(60)
            return True
        hold.append(stream(port, C, dict(long_body, seed=i), auth, on_chunk=cb))
    a = threading.Thread(target=holder, args=(1,))
    a.start()
    ok(wait_metric_auth(m, "moe_slots_busy", 1), "the slot is busy")
    b = threading.Thread(target=holder, args=(2,))
    b.start()
    ok(wait_metric_auth(m, "moe_queue_length", 1), "one request queued")
    check_error(port, "POST", C, {"prompt": "x", "max_tokens": 2}, 503, "queue full", auth)
    ok(m()["moe_requests_rejected_total"] == 1, "metrics count the 503")
    go.set()
    a.join(60)
    b.join(60)
    ok(wait_metric_auth(m, "moe_slots_busy", 0) and wait_metric_auth(m, "moe_queue_length", 0), "slot and queue free again")

    # SIGTERM while a stream runs: it gets a final chunk and [DONE]; the server exits
    result = {}

    def last():
        result["r"] = stream(port, C, dict(long_body, seed=3), auth,
                             on_chunk=lambda ch: result.setdefault("t", time.time()) and False)
    t = threading.Thread(target=last)
    t.start()
    t0 = time.time()
    while "t" not in result and time.time() - t0 < 20:
        time.sleep(0.01)
    os.kill(pid, signal.SIGTERM)
    t.join(60)
    s, chunks, done = result.get("r", (0, [], False))
    ok(done and chunks and chunks[-1]["choices"][0]["finish_reason"] == "stop",
       f"SIGTERM: the running stream got a final chunk and [DONE] ({len(chunks)} chunks, done={done})")


def wait_metric_auth(m, name, want, seconds=20):
    t0 = time.time()
    while time.time() - t0 < seconds:
        if m().get(name) == want:
            return True
        time.sleep(0.01)
    return False


def main():
    global DTYPE, MTP
    port, what = int(sys.argv[1]), sys.argv[2]
    if what in ("basic", "parallel", "mtp", "mtp-auto") and len(sys.argv) > 5:
        DTYPE = sys.argv[5]
    try:
        if what == "basic":
            basic(port, sys.argv[3], sys.argv[4])
        elif what == "mtp":   # the basic checks with --mtp: drafts verified in the batched passes
            MTP = True
            basic(port, sys.argv[3], sys.argv[4])
            m = metrics(port)
            ok(m.get("moe_mtp_drafted_total", 0) > 100 and 0 < m.get("moe_mtp_accepted_total", 0) <= m["moe_mtp_drafted_total"],
               f"MTP drafts made and accepted: {m.get('moe_mtp_drafted_total')} / {m.get('moe_mtp_accepted_total')}")
            ok(m["moe_tokens_generated_total"] > 1.2 * m["moe_forward_passes_total"], "more tokens than passes with --mtp")
        elif what == "mtp-auto":   # --mtp auto: answers unchanged whichever steps draft
            MTP = True
            basic(port, sys.argv[3], sys.argv[4])
            m = metrics(port)
            spec, plain = m.get("moe_mtp_speculative_steps_total", 0), m.get("moe_mtp_plain_steps_total", 0)
            # its first step at a number of decoding slots is plain (the yardstick), the next
            # ones measure speculation: both kinds ran, and every decoding step is one of them
            ok(spec >= 1 and plain >= 1 and spec + plain <= m["moe_forward_passes_total"],
               f"--mtp auto: {spec} speculative and {plain} plain steps in {m['moe_forward_passes_total']} passes")
            ok(m.get("moe_mtp_drafted_total", 0) >= spec, "every speculative step drafted")
        elif what == "parallel":
            parallel(port, sys.argv[3], sys.argv[4])
        elif what == "limits":
            limits(port, sys.argv[3], int(sys.argv[4]))
    except Exception as e:  # noqa: BLE001 - any exception is a failed check
        import traceback
        traceback.print_exc()
        ok(False, f"{what}: {e!r}")
    print(f"serve_check {what}: {passed} passed, {failed} failed", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
