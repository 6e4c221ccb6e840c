# Time to first token of each turn of a 6-turn chat (default system prompt, streamed,
# greedy, 16 tokens per answer) against a running server at argv[1].
import json, sys, time, urllib.request
base = sys.argv[1]
msgs = []
questions = ["What is the capital of France?", "And of Italy?", "Which is bigger?",
             "Name a river in each.", "Which river is longer?", "Thanks. Summarise our chat."]
out = []
for q in questions:
    msgs.append({"role": "user", "content": q})
    body = json.dumps({"messages": msgs, "max_tokens": 16, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", body, {"content-type": "application/json"})
    t0 = time.time(); first = None; text = ""; usage = None
    with urllib.request.urlopen(req) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            c = json.loads(line[6:])
            if c.get("usage"): usage = c["usage"]
            for ch in c["choices"]:
                piece = ch["delta"].get("content")
                if piece:
                    if first is None: first = time.time() - t0
                    text += piece
    msgs.append({"role": "assistant", "content": text})
    out.append((usage["prompt_tokens"], first * 1000))
print(" ".join(f"{p}:{t:.0f}ms" for p, t in out))
