#!/usr/bin/env python3
"""Regenerate tests/fixtures/chat_templates/cases.json: reference renderings of real
chat templates by HF transformers' own `apply_chat_template`.

    python3 -m venv /work/venv-tmpl && /work/venv-tmpl/bin/pip install transformers jinja2 tokenizers
    /work/venv-tmpl/bin/python scripts/make_chat_template_fixtures.py

For each template in tests/fixtures/chat_templates/*.jinja (see the README there for
where they come from) and each conversation below, with and without
`add_generation_prompt`, the template is rendered by a `PreTrainedTokenizerFast`
whose `chat_template`, `bos_token` and `eos_token` are the model's, through
`apply_chat_template(messages, tokenize=False, ...)`. A combination that transformers
raises on is recorded as `expected_error: true` (with the message), and
tests/chat_templates.rs checks that we raise too.

Templates that call `strftime_now` (Llama 3.x) see a fixed clock (FIXED_NOW); each
call is recorded in `strftime_now` as [format, text] so that the Rust test can put
its own clock's rendering of the same format in place of that text.
"""
import datetime as _dt
import glob
import json
import os
import sys

import jinja2
import tokenizers
import transformers
from transformers import PreTrainedTokenizerFast
from transformers.utils import chat_template_utils

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures", "chat_templates")

# Special tokens the models' tokenizer_config.json files name (None: not set).
SPECIAL = {
    "HuggingFaceTB-SmolLM2-135M-Instruct": ("<|im_start|>", "<|im_end|>"),
    "Qwen-Qwen2.5-7B-Instruct": (None, "<|im_end|>"),
    "Qwen-Qwen3-0.6B": (None, "<|im_end|>"),
    "mistralai-Mistral-Nemo-Instruct-2407": ("<s>", "</s>"),
    "microsoft-Phi-3.5-mini-instruct": ("<s>", "<|endoftext|>"),
    "meta-llama-Llama-3.2-3B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.1-8B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "synthetic-transformers-features": ("<BOS>", "<EOS>"),
}

SYS = {"role": "system", "content": "You are a concise assistant."}
U1 = {"role": "user", "content": "What is 2+2?"}
A1 = {"role": "assistant", "content": "4."}
U2 = {"role": "user", "content": "And 3+3?"}
# Unicode, newlines, tabs and leading/trailing (also non-ASCII) whitespace.
SYS_WS = {"role": "system", "content": "\n  Réponds en français, s'il te plaît.\u00a0 \n"}
U_WS = {"role": "user", "content": "  Héllo, wörld! 你好 🦀\n\nSecond line\twith a tab.\n  "}
# U+001C..U+001F are whitespace to Python's str.strip() but not to Rust's trim().
A_WS = {"role": "assistant", "content": "\x1f Sure:\n- ünïcödé\n- \u3000ideographic space\u3000\n\n\x1c"}
U_WS2 = {"role": "user", "content": "\n\n\"Quotes\" & <tags> {{ not jinja }} \\ backslash  "}
# Qwen3 splits an assistant turn at </think>.
A_THINK = {"role": "assistant", "content": "<think>\nLet me add.\n</think>\n\n4."}
TOOL = {"role": "tool", "content": "{\"result\": 4}"}

CONVERSATIONS = {
    "user": [U1],
    "system_user": [SYS, U1],
    "system_user_assistant_user": [SYS, U1, A1, U2],
    "user_assistant_user": [U1, A1, U2],
    "user_assistant": [U1, A1],
    "whitespace_unicode": [SYS_WS, U_WS, A_WS, U_WS2],
    "whitespace_unicode_no_system": [U_WS, A_WS, U_WS2],
    "empty_system": [{"role": "system", "content": ""}, U1],
    "think": [U1, A_THINK, U2],
    "think_last": [SYS, U1, A_THINK],
    "tool_result": [U1, A1, TOOL],
    # Templates that need alternating roles raise on these.
    "user_user": [U1, U2],
    "assistant_first": [A1, U1],
    "unknown_role": [{"role": "narrator", "content": "Once upon a time"}, U1],
    # transformers refuses an empty conversation before rendering.
    "empty": [],
}

FIXED_NOW = _dt.datetime(2024, 7, 26, 9, 30, 0)
_calls = []


class _RecordingNow:
    """Stands in for the `datetime` name that transformers' strftime_now reads."""

    @staticmethod
    def now(tz=None):
        class _D:
            def strftime(self, fmt):
                out = FIXED_NOW.strftime(fmt)
                _calls.append([fmt, out])
                return out

        return _D()


def make_tokenizer(template, bos, eos):
    specials = [t for t in (bos, eos) if t is not None]
    vocab = {"<unk>": 0, **{t: i + 1 for i, t in enumerate(specials)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    kwargs = {"unk_token": "<unk>"}
    if bos is not None:
        kwargs["bos_token"] = bos
    if eos is not None:
        kwargs["eos_token"] = eos
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template, **kwargs)


def main(out_path):
    # transformers' strftime_now calls `datetime.now()` through its module global.
    assert hasattr(chat_template_utils, "datetime"), "transformers changed how strftime_now reads the clock"
    chat_template_utils.datetime = _RecordingNow
    cases = []
    names = sorted(os.path.basename(p)[: -len(".jinja")] for p in glob.glob(os.path.join(FIXTURES, "*.jinja")))
    for name in names:
        with open(os.path.join(FIXTURES, name + ".jinja"), encoding="utf-8") as fh:
            template = fh.read()
        bos, eos = SPECIAL[name]
        tok = make_tokenizer(template, bos, eos)
        # unk_token is in the special tokens map too; we do not pass it, and no template reads it.
        assert "unk_token" not in template
        for conv_name, messages in CONVERSATIONS.items():
            for agp in (False, True):
                case = {
                    "template": name,
                    "conversation": conv_name,
                    "bos_token": bos,
                    "eos_token": eos,
                    "messages": messages,
                    "add_generation_prompt": agp,
                }
                _calls.clear()
                try:
                    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=agp)
                except (jinja2.TemplateError, ValueError, TypeError) as e:
                    case["expected_error"] = True
                    case["error"] = f"{type(e).__name__}: {e}"
                else:
                    assert isinstance(text, str)
                    case["expected"] = text
                    if _calls:
                        case["strftime_now"] = list(_calls)
                cases.append(case)
    out = {
        "made_with": f"transformers {transformers.__version__}, jinja2 {jinja2.__version__}, tokenizers "
        f"{tokenizers.__version__}: PreTrainedTokenizerFast.apply_chat_template(messages, tokenize=False, "
        f"add_generation_prompt=...); strftime_now sees {FIXED_NOW.isoformat()}",
        "cases": cases,
    }
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(out, fh, ensure_ascii=False, indent=1)
        fh.write("\n")
    n_err = sum(1 for c in cases if c.get("expected_error"))
    print(f"{out_path}: {len(cases)} cases ({n_err} raise in transformers)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.normpath(os.path.join(FIXTURES, "cases.json")))
