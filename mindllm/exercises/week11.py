"""Week 11 exercises: serving (notebook 11_serving). The references are the package's own: `TextStream` (the text a
stream may show so far, for byte-level tokens and for stop strings), `render_chat` and `fit_history` (the
conversation as the prompt, fitted to the context window) and `parse_events` (a client reading server-sent events).
Every check draws fresh random cases from a seeded generator, with the edge cases that break a first attempt."""
from __future__ import annotations

import json

import numpy as np

from .. import engine
from ..engine import TextStream
from ..serve import parse_events
from .core import Mismatch, exercise, expect_equal


class ByteTokenizer:
    """A byte-level vocabulary (GPT-2's base alphabet): token = one UTF-8 byte, so one Chinese character is three
    tokens and a prefix can end inside a character."""

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class PieceTokenizer:
    """Tokens that are whole strings (like BPE merges): decode joins them."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids) -> str:
        return "".join(self.pieces[i] for i in ids)


TEXTS = ["Hello, world!", "你好，世界", "ROMEO: 爱 is 💗.", "a", "数据并行 + 流水线并行", "é\u0301 ñ ü"]


@exercise("week11.stream_text",
          hint="after each token decode ALL ids so far; if the text ends with '\\ufffd' (an unfinished character) "
               "show nothing yet, else show text[len(shown):] and remember what you have shown")
def stream_text(student) -> int:
    rng = np.random.default_rng(111)
    tok, n = ByteTokenizer(), 0
    for text in TEXTS + ["".join(rng.choice(list("ab中文🙂 ,"), size=12)) for _ in range(4)]:
        ids = list(text.encode("utf-8"))
        ref = TextStream(tok)
        want = [p for p in (ref.push(i) for i in ids) if p]
        got = student(tok.decode, ids)
        if not isinstance(got, list):
            raise Mismatch(f"my_stream_text must return a list of strings; got {type(got).__name__}")
        if "".join(got) != text:
            raise Mismatch(f"for {text!r} your pieces join to {''.join(got)!r}, expected the text itself")
        expect_equal([p for p in got if p], want, f"the pieces shown while {text!r} streams byte by byte")
        n += 1
    return n


def _conversation(rng, turns: int, system: bool) -> list[dict]:
    words = ["What is AI?", "Tell me a joke.", "你会说中文吗？", "Why?", "ok", "A bot.", "Yes.", "我是机器人。"]
    messages = [{"role": "system", "content": "You are helpful."}] if system else []
    for i in range(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": str(rng.choice(words))})
    return messages


@exercise("week11.render_chat",
          hint="base model (eos_text None): join every content; instruction-tuned: system contents first, each + "
               "'\\n\\n'; then per turn, user -> prompt_text({'instruction': content, 'input': ''}), assistant -> "
               "content + eos_text")
def render_chat(student) -> int:
    rng = np.random.default_rng(112)
    n = 0
    for turns, system, eos in [(1, False, "<|endoftext|>"), (3, False, "<|endoftext|>"), (5, True, "<|endoftext|>"),
                               (3, False, "\n"), (4, True, None), (1, False, None), (7, True, "\n")]:
        messages = _conversation(rng, turns, system)
        expect_equal(student(messages, eos), engine.render_chat(messages, eos),
                     f"my_render_chat of {len(messages)} messages (system: {system}), eos_text={eos!r}")
        n += 1
    return n


@exercise("week11.fit_history",
          hint="while count(kept) > block and more than one user/assistant turn is left: drop the oldest such turn, "
               "and the assistant turn right after it (an answer goes with its question); system messages stay")
def fit_history(student) -> int:
    rng = np.random.default_rng(113)
    n = 0
    for turns, system, block in [(1, False, 5), (3, False, 1000), (5, True, 40), (7, False, 30), (9, True, 12),
                                 (6, True, 1), (4, False, 25)]:
        messages = _conversation(rng, turns, system)

        def count(ms):
            return sum(len(m["content"]) + 3 for m in ms)

        want = engine.fit_history(messages, count, block)
        got = student([dict(m) for m in messages], count, block)
        expect_equal(got, want, f"my_fit_history of {len(messages)} messages ({count(messages)} tokens) into "
                                f"{block} tokens")
        n += 1
    return n


def _sse(rng, chunks: list[dict]) -> str:
    lines = [": keep-alive"] if rng.random() < 0.5 else []
    for c in chunks:
        if rng.random() < 0.3:
            lines.append("event: message")
        lines += [f"data: {json.dumps(c, ensure_ascii=False)}", ""]
    lines += ["data: [DONE]", ""]
    if rng.random() < 0.5:  # anything after [DONE] is not read
        lines += ['data: {"late": true}', ""]
    return "\n".join(lines)


@exercise("week11.parse_sse",
          hint="split the text into lines; keep only lines starting with 'data:'; strip what follows; stop at "
               "'[DONE]'; json.loads the rest, in order")
def parse_sse(student) -> int:
    rng = np.random.default_rng(114)
    n = 0
    for k in [0, 1, 3, 8, 5]:
        chunks = [{"choices": [{"index": 0, "delta": {"content": str(rng.choice(["a", " 你", "好", "\n", ""]))}}]}
                  for _ in range(k)]
        raw = _sse(rng, chunks)
        expect_equal(student(raw), parse_events(raw.splitlines()), f"my_parse_sse of a stream of {k} chunks")
        n += 1
    return n


@exercise("week11.stop_strings",
          hint="after each piece, cut the text at the earliest stop string that occurs; otherwise show all but the "
               "last len(longest stop) - 1 characters, which could still begin a stop string")
def stop_strings(student) -> int:
    rng = np.random.default_rng(115)
    pieces = ["Q", ":", " ", "hi", "\n", "A", "###", "##", "#", " Instruction", "ok", "。", "你好"]
    n = 0
    for stops in [("\n",), ("###",), ("### Instruction",), ("A:", "\n\n"), ("。",), ()]:
        for _ in range(3):
            ids = rng.integers(0, len(pieces), size=int(rng.integers(1, 16))).tolist()
            ref = TextStream(PieceTokenizer(pieces), stops)
            want_pieces = []
            for i in ids:
                want_pieces.append(ref.push(i))
                if ref.stopped:
                    break
            want_pieces.append(ref.flush())
            got = student([pieces[i] for i in ids], list(stops))
            what = f"my_stop_strings on pieces {[pieces[i] for i in ids]} with stops {list(stops)}"
            if not isinstance(got, list):
                raise Mismatch(f"{what}: return a list of the strings shown, one per step (then the rest)")
            expect_equal("".join(got), "".join(want_pieces), what + ", the text shown in all")
            expect_equal([p for p in got if p], [p for p in want_pieces if p], what + ", piece by piece")
            n += 1
    return n
