#!/usr/bin/env python3
"""Short-beside-long latency of `mllm serve`: a 2-token request sent 1 s after a
~6000-token prompt, with chunked prefill (--prefill-chunk 256, the default) and without
(--prefill-chunk 0), against the same short request alone.

    python3 scripts/short_beside_long.py --mllm target/release/mllm --reps 3

Starts one server per configuration and repetition on 127.0.0.1 (port chosen by the
system), alternating the configurations, with prefix reuse off (--prefix-cache 0) so
that every long prompt is prefilled in full. Prints one line per measurement and a
median table. Standard library only; every wait is bounded.
"""

import argparse
import http.client
import json
import queue
import statistics
import subprocess
import threading
import time

SHORT = "Say hi."


def long_prompt(words):
    # Varied words, so that the tokenizer makes about one token per word.
    base = ("the river runs past a town where seven bakers sell bread at dawn while "
            "children count boats and the old mill turns slowly in the wind ").split()
    return " ".join(f"{base[i % len(base)]}{'' if i % 9 else ' ' + str(i % 97)}" for i in range(words))


def post(port, body, timeout):
    """Send a /v1/completions request; return (seconds, response JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:300]!r}")
        return time.perf_counter() - t0, json.loads(data)
    finally:
        conn.close()


class Server:
    def __init__(self, mllm, model, threads, chunk):
        args = [mllm, "serve", "--host", "127.0.0.1", "--port", "0", "--threads", str(threads),
                "--prefix-cache", "0", "--prefill-chunk", str(chunk)]
        if model:
            args += ["--model", model]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.port = None
        lines = queue.Queue()
        # The server's stderr is read on a thread (and drained to the end), so waiting for
        # its banner is bounded by a timeout even if it prints nothing.
        threading.Thread(target=lambda: [lines.put(l) for l in self.proc.stderr], daemon=True).start()
        deadline = time.time() + 120
        while self.port is None and time.time() < deadline:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.time()))
            except queue.Empty:
                break
            if " on http://" in line:
                self.port = int(line.split(" on http://")[1].split()[0].rsplit(":", 1)[1])
        if self.port is None:
            self.stop()
            raise RuntimeError("the server did not report its address in 120 s")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def short_body():
    return {"prompt": SHORT, "max_tokens": 2, "temperature": 0}


def measure(args, chunk, prompt):
    """(alone s, beside s, long s, long prompt tokens) on a fresh server."""
    s = Server(args.mllm, args.model, args.threads, chunk)
    try:
        post(s.port, short_body(), 60)  # warm-up
        alone, _ = post(s.port, short_body(), 60)
        result = {}

        def long_request():
            result["long"] = post(s.port, {"prompt": prompt, "max_tokens": 2, "temperature": 0}, 600)

        t = threading.Thread(target=long_request)
        t.start()
        time.sleep(1.0)
        beside, _ = post(s.port, short_body(), 600)
        t.join(timeout=600)
        long_s, long_json = result["long"]
        return alone, beside, long_s, long_json["usage"]["prompt_tokens"]
    finally:
        s.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mllm", default="target/release/mllm")
    ap.add_argument("--model", default=None, help="model for --model (default: the server's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--words", type=int, default=5000, help="words in the long prompt (~1.2 tokens each)")
    ap.add_argument("--chunks", default="256,0", help="--prefill-chunk values to compare")
    args = ap.parse_args()
    prompt = long_prompt(args.words)
    chunks = [int(c) for c in args.chunks.split(",")]
    rows = {c: [] for c in chunks}
    for rep in range(args.reps):
        for c in chunks:
            alone, beside, long_s, n = measure(args, c, prompt)
            rows[c].append((alone, beside, long_s))
            print(f"rep {rep} prefill-chunk {c}: short alone {alone:.2f} s, short beside the long "
                  f"prompt {beside:.2f} s, long ({n} prompt tokens) {long_s:.1f} s", flush=True)
    print()
    print("| --prefill-chunk | short alone (s) | short 1 s after the long prompt (s) | ratio to alone | long request (s) |")
    print("|---|---|---|---|---|")
    for c in chunks:
        a = statistics.median(r[0] for r in rows[c])
        b = statistics.median(r[1] for r in rows[c])
        lg = statistics.median(r[2] for r in rows[c])
        print(f"| {c} | {a:.2f} | {b:.2f} | {b / a:.1f}x | {lg:.1f} |")


if __name__ == "__main__":
    main()
