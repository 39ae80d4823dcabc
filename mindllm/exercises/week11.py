"""Week 11 exercises. Serving (notebook 11_serving): the references are the package's own `TextStream` (the text a
stream may show so far, for byte-level tokens and for stop strings), `render_chat` and `fit_history` (the
conversation as the prompt, fitted to the context window) and `parse_events` (a client reading server-sent events).
Inference (notebook 11_inference): `quant.schemes.quantize` (absmax per channel, zero point per tensor),
`quant.llm_int8.int8_matmul`, `speculative.verify` (the acceptance rule) and `evaluate.rouge_l`.
Every check draws fresh random cases from a seeded generator, with the edge cases that break a first attempt."""
from __future__ import annotations

import json

import numpy as np

from .. import engine, evaluate
from ..engine import TextStream
from ..quant.llm_int8 import int8_matmul as ref_int8_matmul
from ..quant.schemes import quantize
from ..serve import parse_events
from ..speculative import verify
from .core import Mismatch, exercise, expect_close, expect_equal


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


# ---------------------------------------------------------------- notebook 11_inference

def _weights(rng, n_in: int, n_out: int, shift: float = 0.0) -> np.ndarray:
    """Columns of unequal size (as real layers have), optionally off-centre, with an exact zero and a tie."""
    w = rng.normal(size=(n_in, n_out)) * rng.uniform(0.05, 2.0, size=n_out) + shift
    w[0, 0] = 0.0
    return w.astype(np.float32)


@exercise("week11.absmax_per_channel",
          hint="per output column j: scale_j = max_i |w_ij| / (2^(bits-1) - 1); q = round(w / scale), clipped to "
               "±(2^(bits-1) - 1), as int8; return (q, scale) with scale of shape (1, n_out); a column of zeros "
               "must not divide by 0 (floor the scale at a tiny number)")
def absmax_per_channel(student) -> int:
    rng = np.random.default_rng(116)
    n = 0
    for n_in, n_out, bits in [(4, 3, 8), (16, 8, 8), (64, 32, 8), (8, 5, 4), (1, 7, 8)]:
        w = _weights(rng, n_in, n_out)
        ref = quantize(w, bits=bits, granularity="channel", axis=1)
        got = student(w.copy(), bits)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise Mismatch("my_absmax_per_channel must return (q, scale)")
        q, scale = got
        what = f"my_absmax_per_channel of a {n_in}x{n_out} weight at {bits} bits"
        expect_close(np.asarray(scale).reshape(1, -1), ref.scale, what + ", the scales", rtol=1e-6)
        expect_equal(np.asarray(q).astype(np.int64), ref.q.astype(np.int64), what + ", the codes")
        n += 1
    return n


@exercise("week11.zero_point",
          hint="one range for the tensor, widened to include 0: lo = min(w.min(), 0), hi = max(w.max(), 0); "
               "scale = (hi - lo) / (2^bits - 1); zero = qmin - round(lo / scale) with qmin = -2^(bits-1); "
               "q = clip(round(w / scale) + zero, qmin, 2^(bits-1) - 1)")
def zero_point(student) -> int:
    rng = np.random.default_rng(117)
    n = 0
    for n_in, n_out, bits, shift in [(4, 3, 8, 0.0), (16, 8, 8, 1.5), (32, 4, 8, -0.7), (8, 8, 4, 0.3),
                                     (5, 5, 8, 3.0)]:
        w = _weights(rng, n_in, n_out, shift)
        ref = quantize(w, bits=bits, granularity="tensor", symmetric=False)
        got = student(w.copy(), bits)
        if not (isinstance(got, tuple) and len(got) == 3):
            raise Mismatch("my_zero_point must return (q, scale, zero)")
        q, scale, zero = got
        what = f"my_zero_point of a {n_in}x{n_out} weight (mean {w.mean():+.2f}) at {bits} bits"
        expect_close(float(np.ravel(scale)[0]), float(ref.scale.ravel()[0]), what + ", the scale", rtol=1e-6)
        expect_equal(int(np.ravel(zero)[0]), int(ref.zero.ravel()[0]), what + ", the zero point")
        expect_equal(np.asarray(q).astype(np.int64), ref.q.astype(np.int64), what + ", the codes")
        n += 1
    return n


@exercise("week11.int8_matmul",
          hint="outlier columns of x: any |x| > threshold; multiply those columns (and the same rows of w) in "
               "float; quantize the rest: x per row, w per column (absmax, 127 levels), multiply the codes as "
               "integers, scale back by sx * sw; add the two parts")
def int8_matmul(student) -> int:
    rng = np.random.default_rng(118)
    n = 0
    for rows, inner, out, outliers, threshold in [(3, 8, 4, [], 6.0), (16, 64, 32, [5], 6.0),
                                                  (8, 32, 16, [0, 31], 6.0), (4, 16, 8, [3, 4, 5], 2.0),
                                                  (6, 24, 12, [7], np.inf)]:
        x = rng.normal(size=(rows, inner)).astype(np.float32)
        x[:, outliers] *= 40.0
        w = (rng.normal(size=(inner, out)) * 0.1).astype(np.float32)
        want, _ = ref_int8_matmul(x, w, threshold)
        expect_close(student(x.copy(), w.copy(), threshold), want,
                     f"my_int8_matmul with {len(outliers)} outlier dimension(s), threshold {threshold}",
                     rtol=1e-4, atol=1e-5)
        n += 1
    return n


class _FixedDraw:
    """The package's verify() with its random number fixed to u; records the residual it would sample from."""

    def __init__(self, u: float):
        self.u, self.residual = u, None

    def random(self) -> float:
        return self.u

    def choice(self, n, p):
        self.residual = np.asarray(p)
        return int(np.argmax(p))


@exercise("week11.speculative_verify",
          hint="keep x when u < min(1, p[x] / q[x]) and return None; else return max(p - q, 0) divided by its sum")
def speculative_verify(student) -> int:
    rng = np.random.default_rng(119)
    n = 0
    for vocab in (2, 3, 5, 10, 50):
        for _ in range(4):
            p, q = rng.dirichlet(np.ones(vocab)), rng.dirichlet(np.ones(vocab))
            x, u = int(rng.choice(vocab, p=q)), float(rng.random())
            draw = _FixedDraw(u)
            kept = verify(p, q, x, False, draw) is None
            got = student(p.copy(), q.copy(), x, u)
            what = f"my_verify with p[x] = {p[x]:.3f}, q[x] = {q[x]:.3f}, u = {u:.3f}"
            if kept:
                if got is not None:
                    raise Mismatch(f"{what}: the draft's token is kept (u < p[x] / q[x]); return None")
            elif got is None:
                raise Mismatch(f"{what}: the draft's token is rejected (u >= p[x] / q[x]); return the residual")
            else:
                expect_close(got, draw.residual, what + ", the residual distribution", rtol=1e-6)
            n += 1
    return n


@exercise("week11.rouge_l",
          hint="tokens p = rouge_words(prediction), r = rouge_words(reference); LCS by dynamic programming "
               "(L[i][j] = L[i-1][j-1] + 1 if p[i-1] == r[j-1] else max(L[i-1][j], L[i][j-1])); precision LCS/len(p), "
               "recall LCS/len(r), F = 2PR/(P+R); 0.0 when the LCS is 0 or a text has no tokens")
def rouge_l(student) -> int:
    rng = np.random.default_rng(120)
    words = ["the", "king", "is", "dead", "long", "live", "queen", "a", "我", "是", "机器人", "你好", "AI", "42"]
    pairs = [("the king is dead", "the king is dead"), ("", "the king"), ("long live the queen", "the queen"),
             ("我是机器人", "你是机器人吗"), ("a b c", "x y z"), ("The King!", "the king")]
    for _ in range(14):
        pred = " ".join(rng.choice(words, size=int(rng.integers(0, 9))))
        ref = " ".join(rng.choice(words, size=int(rng.integers(1, 9))))
        pairs.append((pred, ref))
    for pred, ref in pairs:
        expect_close(student(pred, ref), evaluate.rouge_l(pred, ref), f"my_rouge_l({pred!r}, {ref!r})", rtol=1e-9)
    return len(pairs)
