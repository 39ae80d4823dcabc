"""`python -m mindllm.align.compare RUN [RUN ...]`: the alignment table, one row per method, from the runs'
summary.json files. Runs of the same method and settings but another seed are one row: mean ± standard deviation
over the seeds (and how many), so a difference smaller than the spread reads as what it is. An SFT run adds the
row of its start, the pretrained GPT, which it scored on the same held-out problems.

    python -m mindllm.align.compare runs/align/sft runs/align/ppo_s* runs/align/grpo_s* --markdown
"""
from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

import numpy as np

from .. import runs
from ..errors import ArgumentParser, UserError, cli

COLUMNS = (("exact match", "exact_match", "{:.1%}"), ("task reward", "reward", "{:.3f}"),
           ("reward-model score", "reward_model_score", "{:.3f}"),
           ("KL from SFT (nats/answer)", "kl_from_sft", "{:.3f}"), ("answer length (chars)", "answer_chars", "{:.2f}"),
           ("wall time (s)", "wall_seconds", "{:.0f}"))


def method(cfg) -> str:
    """The row a run belongs to: its task and the settings that make it differ from its siblings (not the seed)."""
    o = cfg.options
    if cfg.task == "ppo":
        return f"PPO ({'reward model' if o.reward == 'model' else o.reward} reward, KL {o.kl_coef})"
    if cfg.task == "dpo":
        return f"DPO (beta {o.beta}" + (f", NLL {o.nll_weight})" if o.nll_weight else ")")
    if cfg.task == "grpo":
        return f"GRPO ({o.group_size} per problem, beta {o.beta})"
    return cfg.task.upper()


def row_of(path: str) -> tuple[str, dict]:
    cfg = runs.read_config(path)
    summary_path = os.path.join(path, "summary.json")
    if cfg.task not in ("sft", "ppo", "dpo", "grpo") or not os.path.isfile(summary_path):
        raise UserError(f"'{path}' is not a finished alignment run (sft, ppo, dpo or grpo with a summary.json)")
    with open(summary_path, encoding="utf-8") as fh:
        s = json.load(fh)
    if cfg.task == "sft":
        s["kl_from_sft"] = 0.0
    return method(cfg), s


def table(paths: list[str]) -> str:
    rows = defaultdict(list)
    for p in paths:
        name, s = row_of(p)
        rows[name].append(s)
    first = next(iter(rows.values()))[0]  # every alignment run states the trivial baselines
    if "SFT" in rows:  # the start of SFT, the pretrained GPT, was scored on the same problems by the SFT run
        rows = {"pretrained GPT (before SFT)": [{"exact_match": s["start_exact_match"], "reward": s["start_reward"]}
                                                for s in rows["SFT"]], **rows}
    out = ["| method | runs | " + " | ".join(c for c, _, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name, items in rows.items():
        cells = []
        for _, key, fmt in COLUMNS:
            values = [s[key] for s in items if key in s]
            cell = fmt.format(np.mean(values)) if values else ""
            if len(values) > 1:
                cell += " ± " + fmt.format(np.std(values, ddof=1)).rstrip("%") + ("%" if "%" in fmt else "")
            cells.append(cell)
        out.append(f"| {name} | {len(items)} | " + " | ".join(cells) + " |")
    blank = " |" * (len(COLUMNS) - 1)
    out.append(f"| always the most frequent answer | - | {first['frequent_answer_exact_match']:.1%} |{blank}")
    out.append(f"| a random training answer | - | {first['random_answer_exact_match']:.1%} |{blank}")
    return "\n".join(out)


@cli
def main(argv=None):
    ap = ArgumentParser(prog="python -m mindllm.align.compare", description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="finished sft / ppo / dpo / grpo runs (several seeds of one method "
                                            "make one row)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    print(table(args.runs))


if __name__ == "__main__":
    main()
