"""Reading a notebook file, with one clear error for a missing or broken one (slides, grading, editions)."""
from __future__ import annotations

import os

import nbformat

from .errors import UserError


def read_notebook(path: str) -> nbformat.NotebookNode:
    if not os.path.isfile(path):
        raise UserError(f"notebook not found: {path}")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as e:  # nbformat raises many types (JSON, schema, version); all mean "not a notebook"
        raise UserError(f"{path} is not a Jupyter notebook ({type(e).__name__}): pass an .ipynb file") from None
