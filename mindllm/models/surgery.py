"""Swapping layers of a built model for others that share their Parameters: how LoRA adapters and the fused CPU
kernels enter a model without the model's code knowing about either."""
from __future__ import annotations

from mindspore import nn


def child(cell, name: str):
    """The sub-cell at a dotted path ('transformer.h.0.attn')."""
    for part in name.split(".") if name else ():
        cell = cell[int(part)] if isinstance(cell, nn.CellList) else getattr(cell, part)
    return cell


def replace_cells(model, new_for) -> list[str]:
    """Replace every sub-cell for which `new_for(name, cell)` returns a new Cell (None keeps it), parents before
    their children; returns the replaced names. Every Parameter keeps its full dotted name."""
    replaced = []
    for name, cell in list(model.cells_and_names()):
        if not name:
            continue
        try:
            current = child(model, name)  # a replaced parent may hold this child under the same name...
        except (AttributeError, IndexError):
            continue  # ...or not hold it at all (a SwiGLU MLP in place of GPT's has no c_fc)
        new = new_for(name, current)
        if new is None:
            continue
        parent_name, _, last = name.rpartition(".")
        parent = child(model, parent_name)
        if isinstance(parent, nn.CellList):
            parent[int(last)] = new
        else:
            setattr(parent, last, new)
        replaced.append(name)
    # MindSpore renames a moved Parameter to its short name; give every one its full path back (optimizer
    # state and checkpoints are keyed by it)
    for full, p in model.parameters_and_names():
        p.name = full
    return replaced
