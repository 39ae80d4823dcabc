"""`python -m mindllm.align.compare RUN [RUN ...]`: the alignment table, one row per method, from the runs'
summary.json files. Runs of the same method and settings but another seed are one row: mean ± standard deviation
over the seeds (and how many), so a difference smaller than the spread reads as what it is. An SFT run adds the
row of its start, the pretrained GPT, which it scored on the same held-out problems.

    python -m mindllm.align.compare runs/align/sft runs/align/ppo_s* runs/align/grpo_s* --plot curves.png

`--plot` draws the runs' curves: held-out exact match, KL from SFT of the rollouts, and the reward model's score of
the sampled answers (PPO against a reward model): reward hacking is the third rising while the first falls.
"""
from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

import numpy as np

from matplotlib.figure import Figure  # no pyplot: drawing a file must not change a notebook's plotting backend

from .. import fonts, runs
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
    rm_of_sft = [s["sft_reward_model_score"] for items in rows.values() for s in items if "sft_reward_model_score" in s]
    if rm_of_sft and "SFT" in rows:  # PPO against a reward model scored the SFT model's answers too
        rows["SFT"] = [{**s, "reward_model_score": rm_of_sft[0]} for s in rows["SFT"]]
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


def plot(paths: list[str], out: str) -> None:
    """One line per run (a colour per method, its seeds alike) in three panels; the SFT run is the dashed line."""
    fonts.use_in_matplotlib()
    fig = Figure(figsize=(11, 3.4))
    ax_em, ax_kl, ax_rm = fig.subplots(1, 3)
    colors, sft = {}, None
    for p in paths:
        cfg = runs.read_config(p)
        name, summary = row_of(p)
        if cfg.task == "sft":
            sft = summary["exact_match"]
            continue
        with open(os.path.join(p, "metrics.jsonl"), encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        label = None if name in colors else name
        color = colors.setdefault(name, f"C{len(colors)}")
        points = {k: np.array([(r["step"], r[k]) for r in rows if k in r]).T for k in ("exact_match", "kl", "reward")}
        ax_em.plot(*points["exact_match"], "o-", ms=3, color=color, label=label)
        if points["kl"].size:  # PPO and GRPO: per rollout
            ax_kl.plot(*points["kl"], color=color, lw=1)
        if cfg.task == "ppo" and cfg.options.reward == "model":
            ax_rm.plot(*points["reward"], color=color, lw=1)
    if sft is not None:
        ax_em.axhline(sft, color="gray", ls="--", lw=1, label=f"SFT {sft:.1%}")
    for ax, title in ((ax_em, "held-out exact match (greedy, every evaluation)"),
                      (ax_kl, "KL from SFT of the rollouts (nats/answer)"),
                      (ax_rm, "reward model's score of the rollouts")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    handles, labels = ax_em.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    rows = -(-len(labels) // 4)
    fig.tight_layout(rect=(0, 0.03 + 0.055 * rows, 1, 1))  # room for the legend's rows below the axes' labels
    try:
        fig.savefig(out, dpi=110)
    except OSError as e:
        raise UserError(f"cannot write the plot to '{out}': {e.strerror}") from None


@cli
def main(argv=None):
    ap = ArgumentParser(prog="python -m mindllm.align.compare", description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="finished sft / ppo / dpo / grpo runs (several seeds of one method "
                                            "make one row)")
    ap.add_argument("--plot", metavar="PNG", help="also draw the runs' curves into this file")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    print(table(args.runs))
    if args.plot:
        plot(args.runs, args.plot)
        print(f"curves in {args.plot}")


if __name__ == "__main__":
    main()
