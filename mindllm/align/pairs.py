"""`python -m mindllm.align.pairs SFT_RUN --out pairs.jsonl`: preference pairs (偏好数据) from the model itself.

For each problem the SFT model answers several times at temperature 1; an answer the reward ranks higher is
"chosen", a lower one "rejected" (on-policy pairs, as InstructGPT's labellers ranked the model's own samples; here
the ranking is the problem's exact answer, so it needs no labeller). Problems whose samples all score the same give
no pair. Pairs from training problems train the reward model and DPO; pairs from held-out problems test them.

    {"split": "train", "prompt": "37 plus 48 is ", "chosen": "85\\n", "rejected": "75\\n", "answer": "85"}
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from .. import runs
from ..data import arithmetic
from ..errors import ArgumentParser, UserError, cli
from . import problems
from .rollout import sample_responses


def collect(model, tokenizer, items: list[dict], *, split: str, samples: int, reward: str, seed: int,
            batch_size: int = 100) -> list[dict]:
    """One pair per problem whose `samples` answers do not all score the same: its best and worst answer."""
    eos_text, eos = problems.eos_id(tokenizer)
    prompts = problems.encode_prompts(items, tokenizer)
    responses = sample_responses(model, [p for p in prompts for _ in range(samples)], eos=eos, temperature=1.0,
                                 max_new_tokens=problems.answer_length(items, tokenizer), seed=seed,
                                 batch_size=batch_size)
    pairs = []
    for i, item in enumerate(items):
        texts = [tokenizer.decode(r) for r in responses[i * samples:(i + 1) * samples]]
        scores = [arithmetic.REWARDS[reward](t, item["answer"], eos=eos_text) for t in texts]
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
        if scores[best] > scores[worst]:
            pairs.append({"split": split, "prompt": item["prompt"], "chosen": texts[best], "rejected": texts[worst],
                          "answer": item["answer"], "chosen_reward": scores[best], "rejected_reward": scores[worst]})
    return pairs


def read(path: str) -> list[dict]:
    """The pairs of a pairs.jsonl; refuses a missing, empty or foreign file with the reason."""
    if not os.path.isfile(path):
        raise UserError(f"pairs file '{path}' not found; write it with python -m mindllm.align.pairs SFT_RUN "
                        f"--out {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            pairs = [json.loads(line) for line in fh if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"'{path}' is not a pairs file written by python -m mindllm.align.pairs ({e})") from None
    keys = {"split", "prompt", "chosen", "rejected"}
    if not pairs or not all(isinstance(p, dict) and keys <= p.keys() for p in pairs):
        raise UserError(f"'{path}' holds no preference pairs ({', '.join(sorted(keys))} on every line)")
    return pairs


def split(pairs: list[dict], name: str, path: str) -> list[dict]:
    out = [p for p in pairs if p["split"] == name]
    if not out:
        raise UserError(f"'{path}' has no {name} pairs; collect more problems or samples per problem")
    return out


def main_args(argv):
    ap = ArgumentParser(prog="python -m mindllm.align.pairs", description=__doc__.split("\n")[0])
    ap.add_argument("run", help="the SFT run whose answers are ranked")
    ap.add_argument("--out", required=True, help="the pairs.jsonl to write")
    ap.add_argument("--train-problems", type=int, default=6000, help="training problems to sample (default 6000)")
    ap.add_argument("--test-problems", type=int, default=200, help="held-out problems to sample (default 200)")
    ap.add_argument("--samples", type=int, default=8, help="answers per problem (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="overwrite --out")
    args = ap.parse_args(argv)
    if args.samples < 2 or min(args.train_problems, args.test_problems) < 1:
        raise UserError("--samples must be at least 2 and the problem counts at least 1")
    if os.path.exists(args.out) and not args.force:
        raise UserError(f"'{args.out}' exists; choose another --out or pass --force")
    return args


@cli
def main(argv=None):
    args = main_args(sys.argv[1:] if argv is None else argv)
    options, seed = problems.settings(args.run)
    model, tokenizer, _ = runs.load_model(args.run)
    train, test = problems.load(options, seed)
    pairs = []
    for name, items in (("train", train[:args.train_problems]), ("test", test[:args.test_problems])):
        got = collect(model, tokenizer, items, split=name, samples=args.samples, reward=options.reward,
                      seed=args.seed + (name == "test"))
        print(f"{name}: {len(got)} pairs from {len(items)} problems x {args.samples} answers")
        pairs += got
    if not pairs:
        raise UserError(f"no pairs: every answer of '{args.run}' scored the same (all wrong, or all right); sample "
                        f"more answers per problem (--samples), or train the SFT run further")
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
    os.replace(tmp, args.out)
    print(f"wrote {len(pairs)} pairs to {args.out}")


if __name__ == "__main__":
    main()
