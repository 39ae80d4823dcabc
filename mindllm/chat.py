"""Talk to a trained run in the terminal, the answer streamed token by token.

    python -m mindllm.chat runs/week11/chat                 # an instruction-tuned run answers in its template
    python -m mindllm.chat runs/gpt_char_shakespeare        # a base model continues what you type

Commands: /reset (forget the conversation), /temperature 0.7 (0 = greedy), /exit (or Ctrl-D). Ctrl-C stops an
answer early. The conversation is kept as long as the context window holds it; older turns are then dropped, with
a notice.
"""
from __future__ import annotations

import sys

from . import device
from .engine import Engine
from .errors import ArgumentParser, UserError, cli
from .sample import unescape

HELP = "commands: /reset, /temperature 0.7, /exit"


def build_parser():
    ap = ArgumentParser(prog="python -m mindllm.chat", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a GPT or Llama run directory (or one of its ckpt/step_* directories)")
    ap.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    ap.add_argument("--max-tokens", type=int, default=128, help="longest answer, in tokens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draft", metavar="RUN", help="speculative decoding with a smaller run of the same tokenizer")
    ap.add_argument("--device", default="CPU", help="CPU, GPU, Ascend or auto")
    return ap


class Chat:
    """The conversation and the settings a command can change."""

    def __init__(self, engine: Engine, args):
        self.engine, self.args, self.history = engine, args, []
        self.temperature, self.turn = args.temperature, 0

    def command(self, line: str) -> bool:
        """Handle a /command; False means exit."""
        name, _, value = line.partition(" ")
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.history = []
            print("(conversation cleared)")
        elif name == "/temperature":
            try:
                t = float(value)
                if not 0 <= t <= 2:
                    raise ValueError
                self.temperature = t
                print(f"(temperature {t:g})")
            except ValueError:
                print("(give a temperature in 0..2, e.g. /temperature 0.7; 0 = greedy)")
        else:
            print(f"(unknown command {name}; {HELP})")
        return True

    def say(self, text: str) -> None:
        """One turn: the user's text in, the answer streamed out and kept in the history."""
        messages = self.history + [{"role": "user", "content": text}]
        ids, dropped = self.engine.prompt(messages, crop=True)
        if dropped:
            print(f"(the conversation is longer than the context window of {self.engine.block} tokens: "
                  f"the oldest {dropped} turn{'s' * (dropped > 1)} no longer reach the model)")
        self.turn += 1
        answer = ""
        print(f"{self.engine.name}> ", end="", flush=True)
        try:
            for piece in self.engine.stream(ids, self.args.max_tokens, temperature=self.temperature,
                                            top_p=self.args.top_p, seed=self.args.seed + self.turn):
                answer += piece
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            print(" [stopped]", end="")
        print(flush=True)
        self.history = messages + [{"role": "assistant", "content": answer}]


def check_args(args) -> None:
    if not 0 <= args.temperature <= 2 or not 0 < args.top_p <= 1 or args.max_tokens < 1:
        raise UserError("--temperature must be in 0..2, --top-p in (0, 1] and --max-tokens >= 1")


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    device.setup(device.context_for(args.device), args.seed)
    chat = Chat(Engine.load(args.run, draft=args.draft), args)
    kind = "instruction-tuned: it answers" if chat.engine.instruct else "a base model: it continues your text"
    print(f"chatting with '{args.run}' ({kind}; context {chat.engine.block} tokens). {HELP}")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            break
        except KeyboardInterrupt:
            print()
            break
        line = unescape(line.strip())
        if not line:
            continue
        if line.startswith("/"):
            if not chat.command(line):
                break
            continue
        try:
            chat.say(line)
        except UserError as e:  # e.g. a character a character-level vocabulary lacks: say so, keep chatting
            print(f"(cannot answer that: {e})", file=sys.stderr)


if __name__ == "__main__":
    main()
