"""python -m mindllm.eval RUN [RUN ...] [--tasks perplexity,cloze,task] [--limit N] [--out-name eval]

Writes RUN/eval.md and RUN/eval.json for each run; with two or more runs also prints them side by side."""
from __future__ import annotations

import os

from .. import device
from ..errors import ArgumentParser, UserError, cli, ctrl_c
from . import PARTS
from .card import evaluate_run
from .report import card_markdown, side_by_side, write_card


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m mindllm.eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN", help="training out_dir (its latest checkpoint) or a ckpt dir")
    ap.add_argument("--tasks", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}")
    ap.add_argument("--limit", type=int, default=200, help="cloze items (default 200)")
    ap.add_argument("--out-name", default="eval", help="file names in the run: <name>.md and <name>.json")
    ap.add_argument("--device", default="CPU", help="CPU, GPU, Ascend or auto")
    return ap


def parse_parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise UserError(f"--tasks: unknown part '{unknown[0] if unknown else text}'; choose from {', '.join(PARTS)}")
    return parts


def check_args(args) -> None:
    if args.limit < 1:
        raise UserError("--limit must be >= 1")
    if not args.out_name or os.sep in args.out_name or args.out_name.startswith("."):
        raise UserError(f"--out-name '{args.out_name}' must be a plain file name such as eval")
    for run in args.runs:
        if not os.path.exists(run):
            raise UserError(f"run '{run}' not found: give a training out_dir or one of its ckpt/step_* directories")


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    parts = parse_parts(args.tasks)
    check_args(args)
    device.setup(device.context_for(args.device), 0)
    cards = []
    with ctrl_c(lambda: f"interrupted after {len(cards)} of {len(args.runs)} runs (their cards are written)"):
        for run in args.runs:
            card = evaluate_run(run, parts, args.limit)
            md, _ = write_card(card, args.out_name)
            cards.append(card)
            print(card_markdown(card) if len(args.runs) == 1 else f"wrote {md}")
    if len(cards) > 1:
        print(side_by_side(cards))


if __name__ == "__main__":
    main()
