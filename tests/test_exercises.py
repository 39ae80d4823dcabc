"""Exercises: every notebook has checked exercises; the instructor edition (the notebooks as committed) passes every
check, the student edition (solutions blanked) fails every one with a message, and `python -m mindllm.grade` scores
both (100% and 0%), catches a planted wrong answer, and grades a folder into a CSV."""
import csv
import json
import os
import re

import nbformat
import pytest

from mindllm import exercises
from mindllm.exercises.editions import BEGIN, END, student_edition, tags
from mindllm.grade import expected, main, run_checks
from mindllm.translate import english_notebooks
from test_cli import assert_clean_error, call

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = english_notebooks(ROOT)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_every_notebook_has_checked_exercises(path):
    nb = nbformat.read(path, as_version=4)
    exercise_cells = [c for c in nb.cells if "exercise" in tags(c)]
    names = expected(nb)
    assert len(exercise_cells) >= 3 and len(names) >= 3, (len(exercise_cells), names)
    week = "week" + os.path.basename(path)[:2]
    for cell in exercise_cells:
        assert BEGIN in cell.source and END in cell.source, cell.source[:80]
        assert cell.metadata["slideshow"]["slide_type"] == "skip"  # the deck shows the task, not the answer
    for name in names:
        assert name.startswith(week + "."), name
        check = getattr(getattr(exercises.check, week), name.split(".")[1])
        assert check.exercise == name
    assert any("setup" in tags(c) for c in nb.cells)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_student_edition_blanks_every_solution(path):
    nb = nbformat.read(path, as_version=4)
    student = student_edition(nb)
    for before, after in zip(nb.cells, student.cells):
        if "exercise" in tags(before):
            assert BEGIN not in after.source and "raise NotImplementedError" in after.source
            solution = re.search(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), before.source, re.S).group(1)
            assert solution.strip() not in after.source
            assert after.outputs == []
        else:
            assert after.source == before.source


def _editions(path, tmp_path):
    """(instructor, student) editions of a notebook, written into tmp_path."""
    nb = nbformat.read(path, as_version=4)
    solved, student = tmp_path / os.path.basename(path), tmp_path / ("student_" + os.path.basename(path))
    nbformat.write(nb, str(solved))
    nbformat.write(student_edition(nb), str(student))
    return str(solved), str(student)


def _grade(path, tmp_path):
    solved, student = _editions(path, tmp_path)
    good, blank = run_checks(solved), run_checks(student)
    assert good and all(r["passed"] for r in good), [r for r in good if not r["passed"]]
    assert blank and not any(r["passed"] for r in blank)
    assert all("not done yet" in r["message"] for r in blank), blank


def test_grading_week01_gives_100_and_0_percent(tmp_path):
    _grade(NOTEBOOKS[0], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS[1:], ids=os.path.basename)
def test_grading_gives_100_and_0_percent(path, tmp_path):
    _grade(path, tmp_path)


def test_a_planted_wrong_answer_is_caught_and_located(tmp_path):
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    for cell in nb.cells:
        if "exercise" in tags(cell) and "def my_output_gradient" in cell.source:
            cell.source = cell.source.replace("o * (1 - o)", "h.mean() * (1 - h.mean())")  # the seed's slip
    wrong = tmp_path / "wrong.ipynb"
    nbformat.write(nb, str(wrong))
    assert_clean_error(call("mindllm.grade", str(tmp_path / "none.ipynb")), "notebook not found")
    assert call("mindllm.grade", str(wrong), "--json").returncode == 0
    results = {r["name"]: r for r in run_checks(str(wrong))}
    bad = results["week01.output_gradient"]
    assert not bad["passed"] and "expected" in bad["message"] and "hint" in bad["message"], bad
    assert sum(r["passed"] for r in results.values()) == len(results) - 1


def test_grade_cli_table_json_and_a_folder(tmp_path, capsys):
    solved, student = _editions(NOTEBOOKS[0], tmp_path)
    main([student])
    out = capsys.readouterr().out
    assert "score: 0/5 (0%)" in out and "not done yet" in out
    main([solved, "--json"])
    assert all(r["passed"] for r in json.loads(capsys.readouterr().out))
    (tmp_path / "broken.ipynb").write_text("{}")
    main(["--all", str(tmp_path), "--csv", str(tmp_path / "grades.csv")])
    rows = {os.path.basename(r["notebook"]): r for r in csv.DictReader(open(tmp_path / "grades.csv"))}
    assert float(rows[os.path.basename(solved)]["score"]) == 1.0
    assert float(rows[os.path.basename(student)]["score"]) == 0.0
    assert "not a Jupyter notebook" in rows["broken.ipynb"]["error"]
    assert_clean_error(call("mindllm.grade"), "give one notebook, or --all DIR")
