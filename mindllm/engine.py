"""What `python -m mindllm.chat` and `python -m mindllm.serve` share: a conversation turned into the prompt the run
was trained on, the prompt fitted into the context window, and the answer streamed as text.

    engine = Engine.load("runs/week09/full")
    ids, dropped = engine.prompt([{"role": "user", "content": "What is AI?"}])
    for piece in engine.stream(ids, max_tokens=64, temperature=0.0):
        print(piece, end="")
    engine.finish_reason          # "stop" (end of answer or a stop string) or "length"

An instruction-tuned run answers in its training template (data/instruct.py), one `### Instruction:` block per user
turn, and ends its answer with the end-of-answer token; a base language model simply continues the text of the
conversation. An engine decodes one request at a time: the compiled decoder is shared (serve.py queues requests).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import numpy as np

from . import runs
from .data.instruct import prompt_text
from .errors import UserError
from .decoding import tokens
from .speculative import load_draft, speculative_tokens
from .tasks.instruct import end_of_answer

ROLES = ("system", "user", "assistant")


class PromptTooLong(UserError):
    """The newest turn alone does not fit the context window (a server answers 400)."""


class TextStream:
    """New token ids in, new text out. A character split across byte-level tokens waits for its last byte (the
    decoder shows U+FFFD until then), and text that could be the start of a stop string waits until it is not."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.shown, self.stopped = 0, False
        self.text = ""

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        hits = [text.find(s) for s in self.stop if s in text]
        if hits:
            self.text, self.stopped = text[:min(hits)], True
            return self.flush()
        self.text = text
        hold = max((len(s) - 1 for s in self.stop), default=0)
        safe = len(text) - hold
        return self._emit(safe)

    def flush(self) -> str:
        """What is left to show once decoding ends."""
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        if upto <= self.shown:
            return ""
        piece, self.shown = self.text[self.shown:upto], upto
        return piece


class Engine:
    """A trained GPT or Llama run, ready to answer: `prompt()` builds the ids, `stream()` yields text."""

    def __init__(self, model, tokenizer, task: str, name: str, draft=None, k: int = 4):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.draft, self.k = draft, k  # speculative decoding with a draft model (the same output distribution)
        self.instruct = task == "instruct"
        self.block = model.config.block_size
        self.eos_text = end_of_answer(tokenizer) if self.instruct else None
        self.eos = tokenizer.encode(self.eos_text)[0] if self.instruct else None
        self.finish_reason, self.completion_tokens = "length", 0

    @classmethod
    def load(cls, path: str, name: str | None = None, draft: str | None = None, k: int = 4) -> Engine:
        """The run at `path`; `draft`, a smaller run with the same tokenizer, proposes k tokens per target pass."""
        model, tokenizer, cfg = runs.load_model(path)
        draft_model = load_draft(draft, path, tokenizer) if draft else None
        return cls(model, tokenizer, cfg.task, name or os.path.basename(os.path.normpath(path)), draft_model, k)

    def _tokens(self, ids: list[int], max_tokens: int, temperature: float, top_p: float, seed):
        """The next token ids one by one: the decoder alone, or the draft's rounds checked by the model."""
        if self.draft is None:
            yield from (int(t[0]) for t in tokens(self.model, np.array([ids], np.int32), max_tokens,
                                                  temperature=temperature, top_p=top_p, seed=seed))
            return
        for round_ in speculative_tokens(self.model, self.draft, ids, max_tokens, k=self.k, temperature=temperature,
                                         top_p=top_p, seed=seed):
            yield from round_

    def render(self, messages: list[dict]) -> str:
        """The conversation as the text the model continues."""
        return render_chat(messages, self.eos_text)

    def prompt(self, messages: list[dict], crop: bool = False) -> tuple[list[int], int]:
        """(token ids, turns dropped): the conversation fitted into the context window (fit_history). When the
        newest turn alone is too long, `crop` keeps its last block_size tokens, else PromptTooLong."""
        check_messages(messages)
        kept = fit_history(messages, lambda m: len(self.encode(self.render(m))), self.block)
        return self.fit(self.encode(self.render(kept)), crop), len(messages) - len(kept)

    def fit(self, ids: list[int], crop: bool = False) -> list[int]:
        """`ids` if they fit the context window; else their last block_size (crop) or PromptTooLong."""
        if len(ids) <= self.block:
            return ids
        if not crop:
            raise PromptTooLong(f"the prompt has {len(ids)} tokens; this model's context window is {self.block}")
        return ids[-self.block:]

    def encode(self, text: str) -> list[int]:
        if not text:
            raise UserError("the prompt is empty")
        return self.tokenizer.encode(text)

    def stream(self, ids: list[int], max_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
               seed: int | None = None, stop: tuple[str, ...] = (), cancel: threading.Event | None = None
               ) -> Iterator[str]:
        """Yield the answer's text piece by piece; afterwards `finish_reason` and `completion_tokens` say how it
        ended. Setting `cancel` stops after the current token (a client that left)."""
        text = TextStream(self.tokenizer, stop)
        self.finish_reason, self.completion_tokens = "length", 0
        for nxt in self._tokens(ids, max_tokens, temperature, top_p, seed):
            self.completion_tokens += 1
            if self.instruct and nxt == self.eos:
                self.finish_reason = "stop"
                break
            piece = text.push(nxt)
            if piece:
                yield piece
            if text.stopped:
                self.finish_reason = "stop"
                break
            if cancel is not None and cancel.is_set():
                self.finish_reason = "cancelled"
                break
        rest = text.flush()
        if rest:
            yield rest

    def answer(self, messages: list[dict], max_tokens: int, **rules) -> str:
        ids, _ = self.prompt(messages)
        return "".join(self.stream(ids, max_tokens, **rules))


def render_chat(messages: list[dict], eos_text: str | None) -> str:
    """The text a model continues. A base model (eos_text None) reads the turns as one running text; an
    instruction-tuned one reads them in its training template: every user turn an `### Instruction:` block ending
    in `### Response:\n`, every assistant turn its answer and the end-of-answer text; system text goes first."""
    if eos_text is None:
        return "".join(m["content"] for m in messages)
    text = "".join(m["content"] + "\n\n" for m in messages if m["role"] == "system")
    for m in messages:
        if m["role"] == "user":
            text += prompt_text({"instruction": m["content"], "input": ""})
        elif m["role"] == "assistant":
            text += m["content"] + eos_text
    return text


def fit_history(messages: list[dict], count, block: int) -> list[dict]:
    """Drop the oldest user/assistant turns (system messages stay) until `count(messages)` tokens fit in `block`;
    the newest turn always stays, even when it alone is too long (the caller decides: crop or refuse)."""
    kept = list(messages)
    while count(kept) > block:
        turns = [i for i, m in enumerate(kept) if m["role"] != "system"]
        if len(turns) <= 1:
            break
        kept.pop(turns[0])
        if len(turns) > 2 and kept[turns[1] - 1]["role"] == "assistant":  # an answer goes with its question
            kept.pop(turns[1] - 1)
    return kept


def check_messages(messages) -> None:
    """OpenAI's chat format: a non-empty list of {"role": system|user|assistant, "content": str}."""
    if not isinstance(messages, list) or not messages:
        raise UserError("'messages' must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise UserError(f"messages[{i}] must be {{\"role\": one of {', '.join(ROLES)}, \"content\": a string}}")

