#!/usr/bin/env python3
"""Drive a running `mllm serve` with the official `openai` Python client.

Usage: python3 scripts/openai_client_test.py --base-url http://127.0.0.1:PORT/v1

Checks chat and legacy completions, streamed and not, against each other (greedy:
the streamed text must equal the whole answer), usage counts, seeds, stop strings
and errors raised by the client for bad requests. Exits non-zero on the first failure.

The pinned client is installed on first use into a virtual environment outside the
repository (default ~/.cache/mllm/venv-openai, or $MLLM_OPENAI_VENV), and the
script re-runs itself with that environment's Python.
"""

import argparse
import os
import subprocess
import sys
import venv

OPENAI_VERSION = "3.57.0"
VENV = os.environ.get("MLLM_OPENAI_VENV") or os.path.join(
    os.path.expanduser("~"), ".cache", "mllm", "venv-openai"
)


def have_pinned_client():
    try:
        import openai  # noqa: F401
    except ImportError:
        return False
    return openai.__version__ == OPENAI_VERSION


def ensure_client():
    """Re-run this script inside the venv that has the pinned client (create it if missing)."""
    if have_pinned_client():
        return
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        sys.exit(f"the venv {VENV} lacks openai=={OPENAI_VERSION} even after installing it")
    ok = os.path.exists(py) and subprocess.run(
        [py, "-c", f"import openai, sys; sys.exit(openai.__version__ != '{OPENAI_VERSION}')"],
        capture_output=True,
    ).returncode == 0
    if not ok:
        print(f"installing openai=={OPENAI_VERSION} into {VENV}", file=sys.stderr, flush=True)
        if not os.path.exists(py):
            venv.create(VENV, with_pip=True)
        subprocess.run(
            [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"openai=={OPENAI_VERSION}"],
            check=True,
        )
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])


checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def check_usage(usage, max_tokens):
    check(usage is not None, "usage is present")
    check(usage.prompt_tokens > 0, f"prompt_tokens > 0: {usage}")
    check(1 <= usage.completion_tokens <= max_tokens, f"1 <= completion_tokens <= {max_tokens}: {usage}")
    check(usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, f"total adds up: {usage}")
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else None
    check(cached is not None and 0 <= cached < usage.prompt_tokens, f"0 <= cached_tokens < prompt_tokens: {usage}")


def counts(usage):
    """The token counts of a usage (how many prompt tokens came from the cache varies)."""
    return (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


def stream_text(stream, chat):
    """Concatenated text, finish reason, usage and number of chunks of a stream."""
    text, finish, usage, n = [], None, None, 0
    for chunk in stream:
        n += 1
        check(chunk.object == ("chat.completion.chunk" if chat else "text_completion"), f"chunk object: {chunk}")
        if chunk.usage is not None:
            check(chunk.choices == [], "the usage chunk has no choices")
            usage = chunk.usage
            continue
        check(len(chunk.choices) == 1, f"one choice per chunk: {chunk}")
        c = chunk.choices[0]
        piece = (c.delta.content if chat else c.text) or ""
        check(finish is None, "nothing after the finish reason but usage")
        text.append(piece)
        finish = c.finish_reason
    return "".join(text), finish, usage, n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--max-tokens", type=int, default=8)
    args = ap.parse_args()
    ensure_client()
    import openai

    client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=120)
    n = args.max_tokens

    models = client.models.list().data
    # The served model first, then its aliases (each naming the served model as its root).
    check(len(models) >= 1, f"the model is listed: {models}")
    model = models[0].id
    check(all(getattr(m, "root", None) == model for m in models), f"one served model and its aliases: {models}")
    for m in models:
        check(client.models.retrieve(m.id).id == m.id, f"models.retrieve finds {m.id}")

    # Chat, whole and streamed: greedy, so the same text.
    # A short system prompt: the default one is long and prompt processing is still slow.
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=n, temperature=0)
    check(whole.object == "chat.completion" and whole.id.startswith("chatcmpl-"), f"chat object: {whole}")
    check(whole.model == model, "the answer names the model")
    choice = whole.choices[0]
    check(len(whole.choices) == 1 and choice.index == 0, "one choice")
    check(choice.message.role == "assistant", "the answer is the assistant's")
    check(isinstance(choice.message.content, str) and choice.message.content, "the answer has text")
    check(choice.finish_reason in ("stop", "length"), f"finish reason: {choice.finish_reason}")
    check_usage(whole.usage, n)
    print(f"chat: {choice.message.content!r} ({choice.finish_reason}, {whole.usage.completion_tokens} tokens)")

    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=n, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, chunks = stream_text(stream, chat=True)
    check(text == choice.message.content, f"streamed chat text {text!r} == whole {choice.message.content!r}")
    check(finish == choice.finish_reason, "same finish reason streamed")
    check_usage(usage, n)
    check(counts(usage) == counts(whole.usage), f"same usage streamed: {usage}")
    # The same prompt again: all but its last token come from the prefix cache.
    check(usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1, f"prefix reused: {usage}")
    check(chunks >= 3, f"the answer came in pieces ({chunks} chunks)")

    # Without include_usage no usage chunk is sent.
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=n, temperature=0, stream=True)
    text2, _, usage2, _ = stream_text(stream, chat=True)
    check(text2 == text and usage2 is None, "no usage chunk unless asked for")

    # Legacy completions.
    prompt = "The capital of France is"
    comp = client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0)
    check(comp.object == "text_completion" and comp.id.startswith("cmpl-"), f"completion object: {comp}")
    check(comp.choices[0].text, "the completion has text")
    check_usage(comp.usage, n)
    print(f"completion: {comp.choices[0].text!r}")
    stream = client.completions.create(
        model=model, prompt=prompt, max_tokens=n, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    text, finish, usage, _ = stream_text(stream, chat=False)
    check(text == comp.choices[0].text, f"streamed completion {text!r} == whole {comp.choices[0].text!r}")
    check(finish == comp.choices[0].finish_reason, "same finish reason streamed")
    check(counts(usage) == counts(comp.usage), f"same usage streamed: {usage}")

    # A stop string cuts the text before it and ends with finish_reason "stop".
    full = comp.choices[0].text
    cut = full.strip()[len(full.strip()) // 2:][:3]
    if cut:
        stopped = client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0, stop=[cut])
        check(stopped.choices[0].text == full[: full.find(cut)], f"stop {cut!r}: {stopped.choices[0].text!r}")
        check(stopped.choices[0].finish_reason == "stop", "a stop string gives finish_reason stop")

    # Sampling with a seed is reproducible.
    sampled = [
        client.chat.completions.create(
            model=model, messages=messages, max_tokens=n, temperature=0.9, top_p=0.95, seed=1234
        ).choices[0].message.content
        for _ in range(2)
    ]
    check(sampled[0] == sampled[1], f"same seed, same text: {sampled}")

    # Log-probabilities parse into the client's own types.
    lp = client.chat.completions.create(
        model=model, messages=messages, max_tokens=n, temperature=0, logprobs=True, top_logprobs=2
    )
    content = lp.choices[0].logprobs.content
    check(content and "".join(e.token for e in content) == lp.choices[0].message.content, f"chat logprobs: {content}")
    check(all(len(e.top_logprobs) == 2 and e.logprob <= 0 and bytes(e.bytes).decode() == e.token for e in content),
          "each chat entry has its bytes and 2 alternatives")
    echo = client.completions.create(model=model, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    legacy = echo.choices[0].logprobs
    check(echo.choices[0].text == prompt and "".join(legacy.tokens) == prompt, f"echo: {echo}")
    check(legacy.token_logprobs[0] is None and all(x <= 0 for x in legacy.token_logprobs[1:]), f"echo scores: {legacy}")
    check(legacy.text_offset[0] == 0 and legacy.top_logprobs[0] is None, f"echo lists: {legacy}")

    # Errors come back as the client's exceptions with the OpenAI error body.
    try:
        client.chat.completions.create(model=model, messages=[], max_tokens=n)
        check(False, "empty messages are refused")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.body.get("param") == "messages", f"empty messages: {e.body}")
    try:
        client.chat.completions.create(model=model, messages=messages, max_tokens=10**6)
        check(False, "max_tokens above the context is refused")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "max_tokens", f"max_tokens: {e.body}")
    try:
        client.chat.completions.create(model=model, messages=messages, max_tokens=n, n=2)
        check(False, "n=2 is refused")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "n", f"n: {e.body}")
    try:
        client.chat.completions.create(model=model, messages=messages, max_tokens=n, logprobs=True, top_logprobs=21)
        check(False, "top_logprobs=21 is refused")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "top_logprobs", f"top_logprobs: {e.body}")

    print(f"{checks} passed, 0 failed")


if __name__ == "__main__":
    main()
