"""Training curves as a PNG: what students look at instead of reading metrics.jsonl."""
from __future__ import annotations

from matplotlib.figure import Figure  # no pyplot: drawing a file must not change a notebook's plotting backend


def plot_metrics(records: list[dict], baselines: dict, path: str) -> None:
    """Train loss (per log interval) and val loss (per eval) against step, with the context-free baselines."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, alpha=0.7, label="train loss")
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss")
    styles = {"uniform": ":", "unigram": "--"}
    for name, value in baselines.items():
        ax.axhline(value, color="gray", ls=styles.get(name, "-."), lw=1, label=f"{name} baseline {value:.2f}")
    if val:
        ax.set_title(f"val loss {val[-1]['val_loss']:.3f} at step {val[-1]['step']} "
                     f"(untrained {val[0]['val_loss']:.3f})" if val[0]["step"] == 0 else "")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
