"""The report card on disk (RUN/eval.md for people, RUN/eval.json for programs) and several runs side by side."""
from __future__ import annotations

import json
import os

from ..files import write_text_atomic

LEGEND = ("↑/↓: higher/lower is better. untrained: the weights training started from (the run's config built "
          "afresh, seeded; for a fine-tuning run, the model it tuned); uniform: every token equally likely; unigram: "
          "training-split token frequencies, no context; chance: one option of the multiple choice at random; other "
          "columns: the task's own trivial answers.")


def fmt(value) -> str:
    """Numbers as a reader compares them: 4 significant digits, large ones whole."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def card_markdown(card: dict) -> str:
    """eval.md: one row per metric, its baselines beside it."""
    names = list(dict.fromkeys(b for m in card["metrics"] for b in m["baselines"]))
    head = ["metric", "this run", *names]
    lines = [f"# Report card: {card['run']}", "",
             f"task `{card['task']}`, checkpoint `{card['checkpoint']}` | {card['describe']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in card["metrics"]:
        arrow = "↑" if m["better"] == "higher" else "↓"
        cells = [f"{m['name']} {arrow}", f"**{fmt(m['value'])}**", *(fmt(m["baselines"].get(b)) for b in names)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", LEGEND]
    example = card["details"].get("cloze", {}).get("example")
    if example:
        opts = ", ".join(f"{'**' if i == example['answer'] else ''}{o!r}{'**' if i == example['answer'] else ''}"
                         for i, o in enumerate(example["options"]))
        lines += ["", f"A cloze item: …{example['context']!r} → {opts}"]
    return "\n".join(lines) + "\n"


def write_card(card: dict, out_name: str) -> tuple[str, str]:
    """RUN/<out_name>.md and .json (the run directory the card is of)."""
    base = os.path.join(card["run"], out_name)
    write_text_atomic(base + ".json", json.dumps(card, ensure_ascii=False, indent=1, default=str) + "\n")
    write_text_atomic(base + ".md", card_markdown(card))
    return base + ".md", base + ".json"


def side_by_side(cards: list[dict]) -> str:
    """One Markdown table, a column per run: a metric only some runs have is blank for the others."""
    names = list(dict.fromkeys(m["name"] for c in cards for m in c["metrics"]))
    values = [{m["name"]: m["value"] for m in c["metrics"]} for c in cards]
    head = ["metric", *(f"{os.path.basename(c['run'].rstrip('/'))} ({c['task']})" for c in cards)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        lines.append("| " + " | ".join([name, *(fmt(v.get(name)) for v in values)]) + " |")
    return "\n".join(lines)
