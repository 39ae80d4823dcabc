"""`python -m mindllm.grade NOTEBOOK.ipynb`: run a student's notebook's exercises and score them.

    python -m mindllm.grade notebooks/01_backprop_by_hand.ipynb           # a table and a score
    python -m mindllm.grade my_01.ipynb --json                            # for a gradebook
    python -m mindllm.grade --all submissions/ --csv grades.csv           # a folder of notebooks, one row each
    python -m mindllm.grade my_01.ipynb --whole                           # every cell (fast mode), not just exercises

By default only the cells tagged `setup`, `exercise` and `check` run (exercises take their inputs as arguments, so
they need nothing else): seconds, not the lesson's training runs. Every `check.weekNN.name(...)` call in the
notebook is one exercise; one that never reported (its cell raised, or was deleted) counts as failed.
"""
from __future__ import annotations

import csv
import json
import os
import re
import sys
import tempfile

from nbclient import NotebookClient

from .errors import ArgumentParser, UserError, cli
from .exercises.core import GRADE_LOG
from .exercises.editions import CHECK, EXERCISE, SETUP, tags
from .nbfile import read_notebook

_CALL = re.compile(r"check\.(week\d+)\.(\w+)\s*\(")


def expected(nb) -> list[str]:
    """The exercises a notebook's check cells call, in order."""
    names = []
    for cell in nb.cells:
        if cell.cell_type == "code" and CHECK in tags(cell):
            names += [f"{w}.{n}" for w, n in _CALL.findall(cell.source) if f"{w}.{n}" not in names]
    return names


def run_checks(path: str, whole: bool = False, timeout: int = 600) -> list[dict]:
    """[{name, passed, message}] for every exercise of the notebook at `path`."""
    nb = read_notebook(path)
    names = expected(nb)
    if not names:
        raise UserError(f"{path} has no exercise checks (cells tagged '{CHECK}' calling check.weekNN.name(...))")
    if not whole:
        nb.cells = [c for c in nb.cells if c.cell_type == "code" and {SETUP, EXERCISE, CHECK} & set(tags(c))]
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "results.jsonl")
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
        client.execute(env={**os.environ, GRADE_LOG: log, "MINDLLM_FAST": "1"})  # the kernel's environment
        reported = {}
        if os.path.exists(log):
            with open(log, encoding="utf-8") as fh:
                for line in fh:
                    r = json.loads(line)
                    reported[r["name"]] = r  # a check run twice: the last answer counts
    return [reported.get(n, {"name": n, "passed": False, "message": _why_silent(nb, n)}) for n in names]


def _why_silent(nb, name: str) -> str:
    """Why an exercise never reported: the error its check cell (or an earlier cell) showed."""
    for cell in nb.cells:
        if cell.cell_type == "code" and name.split(".")[1] in cell.source:
            for out in cell.get("outputs", []):
                if out.output_type == "error":
                    return f"did not run: {out.ename}: {out.evalue[:150]}"
    return "did not run (its check cell is missing or was not reached)"


def table(results: list[dict]) -> str:
    width = max(len(r["name"]) for r in results)
    lines = [f"{'✔' if r['passed'] else '✘'} {r['name']:<{width}}  {r['message']}" for r in results]
    passed = sum(r["passed"] for r in results)
    return "\n".join(lines + [f"score: {passed}/{len(results)} ({passed / len(results):.0%})"])


def grade_folder(folder: str, out_csv: str, whole: bool) -> str:
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
                   if f.endswith(".ipynb") and ".ipynb_checkpoints" not in d)
    if not paths:
        raise UserError(f"no notebooks under '{folder}'")
    rows = []
    for path in paths:
        try:
            results = run_checks(path, whole)
        except UserError as e:  # one broken submission must not stop the class's grading
            rows.append({"notebook": path, "score": 0.0, "error": str(e)})
            continue
        rows.append({"notebook": path, "score": sum(r["passed"] for r in results) / len(results),
                     **{r["name"]: int(r["passed"]) for r in results}})
    columns = ["notebook", "score"] + sorted({k for r in rows for k in r} - {"notebook", "score", "error"}) + ["error"]
    with open(out_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return f"{len(rows)} notebooks graded -> {out_csv}"


@cli
def main(argv=None):
    ap = ArgumentParser(prog="python -m mindllm.grade", description=__doc__.split("\n\n")[0])
    ap.add_argument("notebook", nargs="?", help="a student's notebook (.ipynb)")
    ap.add_argument("--all", metavar="DIR", help="grade every notebook under DIR into one CSV")
    ap.add_argument("--csv", default="grades.csv", help="with --all: where the CSV goes (default grades.csv)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--whole", action="store_true", help="run every cell (fast mode), not only the exercises")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if bool(args.notebook) == bool(args.all):
        raise UserError("give one notebook, or --all DIR")
    if args.all:
        print(grade_folder(args.all, args.csv, args.whole))
        return
    results = run_checks(args.notebook, args.whole)
    print(json.dumps(results, ensure_ascii=False, indent=1) if args.json else table(results))


if __name__ == "__main__":
    main()
