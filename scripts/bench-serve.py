#!/usr/bin/env python3
"""Load benchmark for a running `mllm serve` (standard library only: threads + http.client).

For each concurrency level, that many clients each send --requests streamed chat
requests back to back; the script reports aggregate generated tokens/s (all completion
tokens / wall time; the prompt tokens processed are listed too), p50/p95 time to
first token (request sent -> first non-empty piece of text) and the mean
per-request decode rate after the first token.

    mllm serve --port 8080 --max-concurrent 16 &
    python3 scripts/bench-serve.py --port 8080 --clients 1,4,16 --requests 2 --max-tokens 16

It also works against other OpenAI-compatible servers (e.g. llama.cpp's llama-server):
--model sets the request's model name, --extra-body merges server-specific fields into
every request, --label adds a leading column naming the engine
(scripts/bench-serve-vs-llamaserver.sh runs it that way, one level per call).

Only talks to the host given (default 127.0.0.1); every loop is bounded.
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe a walk through a forest in autumn.",
    "Tell me about the history of bread.",
]


def percentile(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(host, port, prompt, max_tokens, timeout, model="bench", extra=None):
    """Send one streamed chat request; return (ttft_s, total_s, completion_tokens, prompt_tokens)."""
    body = {
        "model": model,
        # A short system prompt (the model's default one is long; prompts cost as much
        # per token as generation with today's kernels).
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body = json.dumps({**body, **(extra or {})})
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    t0 = time.perf_counter()
    ttft, tokens, prompt_tokens = None, None, None
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
        for raw in resp:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
                prompt_tokens = chunk["usage"]["prompt_tokens"]
            for c in chunk.get("choices", []):
                if ttft is None and c.get("delta", {}).get("content"):
                    ttft = time.perf_counter() - t0
    finally:
        conn.close()
    total = time.perf_counter() - t0
    if tokens is None:
        raise RuntimeError("the stream had no usage chunk")
    return (ttft if ttft is not None else total), total, tokens, prompt_tokens


def run_level(args, clients):
    results, errors = [], []
    lock = threading.Lock()

    def client(c):
        for r in range(args.requests):
            prompt = PROMPTS[(c + r) % len(PROMPTS)]
            try:
                res = one_request(
                    args.host, args.port, prompt, args.max_tokens, args.timeout, args.model, args.extra
                )
                with lock:
                    results.append(res)
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.timeout * args.requests + 10)
    wall = time.perf_counter() - t0
    return results, errors, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    ap.add_argument("--requests", type=int, default=2, help="requests per client per level")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=300, help="seconds allowed per request")
    ap.add_argument("--model", default="bench", help="the requests' model field")
    ap.add_argument("--extra-body", default="{}", help="JSON object merged into every request body")
    ap.add_argument("--label", default=None, help="add a leading 'engine' column with this text")
    ap.add_argument("--no-header", action="store_true", help="print the table rows only")
    ap.add_argument("--no-warmup", action="store_true", help="skip the short untimed warm-up request")
    args = ap.parse_args()
    try:
        args.extra = json.loads(args.extra_body)
    except json.JSONDecodeError as e:
        sys.exit(f"--extra-body is not valid JSON: {e}")
    if not isinstance(args.extra, dict):
        sys.exit("--extra-body must be a JSON object")
    levels = [int(x) for x in args.clients.split(",") if x.strip()]
    if not levels or min(levels) < 1 or max(levels) > 256 or not 1 <= args.requests <= 100:
        sys.exit("--clients must be 1..256 and --requests 1..100")

    if not args.no_warmup:
        one_request(args.host, args.port, PROMPTS[0], 2, args.timeout, args.model, args.extra)
    lead, lead_rule = ("| engine ", "| :----- ") if args.label is not None else ("", "")
    if not args.no_header:
        print(lead + "| clients | requests | prompt tokens | gen tokens | wall s | agg gen tok/s | TTFT p50 ms "
              "| TTFT p95 ms | per-req gen tok/s |")
        print(lead_rule + "| ------: | -------: | ------------: | ---------: | -----: | ------------: | ----------: "
              "| ----------: | ----------------: |")
    failed = False
    for n in levels:
        results, errors, wall = run_level(args, n)
        if errors:
            failed = True
            print(f"clients={n}: {len(errors)} failed requests, e.g. {errors[0]}", file=sys.stderr)
        if not results:
            continue
        ttfts = [r[0] * 1e3 for r in results]
        tokens = sum(r[2] for r in results)
        prompt_tokens = sum(r[3] for r in results)
        # Decode rate of each request after its first token.
        rates = [(r[2] - 1) / (r[1] - r[0]) for r in results if r[2] > 1 and r[1] > r[0]]
        print(
            (f"| {args.label} " if args.label is not None else "")
            + f"| {n:7d} | {len(results):8d} | {prompt_tokens:13d} | {tokens:10d} | {wall:6.1f} "
            f"| {tokens / wall:13.1f} "
            f"| {percentile(ttfts, 0.5):11.0f} | {percentile(ttfts, 0.95):11.0f} "
            f"| {statistics.mean(rates) if rates else float('nan'):17.1f} |",
            flush=True,
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
