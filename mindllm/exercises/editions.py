"""Student and instructor editions of the notebooks, from one source.

The notebooks in notebooks/ are the instructor edition: each exercise cell (tag `exercise`) holds its solution between
`### BEGIN SOLUTION` and `### END SOLUTION` lines, and CI runs them, so every check passes there. The student edition
replaces each solution region by `raise NotImplementedError(...)` at the same indentation and clears the outputs of
the exercise and check cells; everything else (the lesson, its outputs) stays.

    python -m mindllm.exercises.editions notebooks/*.ipynb --out student/
"""
from __future__ import annotations

import os
import re
import sys

import nbformat

from ..errors import ArgumentParser, UserError, cli
from ..nbfile import read_notebook

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
EXERCISE, CHECK, SETUP = "exercise", "check", "setup"  # cell tags
_REGION = re.compile(r"^([ \t]*)" + re.escape(BEGIN) + r"[^\n]*\n.*?^[ \t]*" + re.escape(END) + r"[^\n]*(\n|$)",
                     re.M | re.S)


def tags(cell) -> list:
    return cell.get("metadata", {}).get("tags", [])


def blank(source: str) -> str:
    """An exercise cell's source with each solution region replaced by `raise NotImplementedError`."""
    if BEGIN not in source:
        raise ValueError(f"an exercise cell without a '{BEGIN}' region: {source.splitlines()[0][:60]!r}")
    return _REGION.sub(lambda m: f"{m.group(1)}raise NotImplementedError(\"your code here\")\n", source)


def student_edition(nb):
    """A copy of notebook `nb` with the exercises blank (see the module docstring)."""
    nb = nbformat.from_dict(nb)
    for cell in nb.cells:
        if EXERCISE in tags(cell):
            cell.source = blank(cell.source)
        if cell.cell_type == "code" and (EXERCISE in tags(cell) or CHECK in tags(cell)):
            cell.outputs, cell.execution_count = [], None
    return nb


@cli
def main(argv=None):
    ap = ArgumentParser(prog="python -m mindllm.exercises.editions", description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="+", help="instructor-edition notebooks (.ipynb)")
    ap.add_argument("--out", required=True, help="folder for the student editions")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out '{args.out}' cannot be made a folder ({e.strerror})") from None
    for path in args.notebooks:
        nb = read_notebook(path)
        try:
            student = student_edition(nb)
        except ValueError as e:
            raise UserError(f"{path}: {e}") from None
        out = os.path.join(args.out, os.path.basename(path))
        nbformat.write(student, out)
        print(f"{out}: {sum(EXERCISE in tags(c) for c in nb.cells)} exercises left blank")


if __name__ == "__main__":
    main()
