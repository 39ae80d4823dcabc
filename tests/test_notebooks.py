"""Every notebook: slide metadata on every cell, a title slide, outputs from one top-to-bottom run, and it executes
in fast mode (MINDLLM_FAST=1 shortens loops) on the CPU."""
import os

import nbformat
import pytest

from mindllm.translate import chinese_notebook, english_notebooks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = english_notebooks(ROOT)
EVERY = NOTEBOOKS + [chinese_notebook(p) for p in NOTEBOOKS if os.path.isfile(chinese_notebook(p))]  # + generated
SLIDE_TYPES = {"slide", "subslide", "fragment", "skip", "notes", "-"}


def names(paths):
    return [os.path.basename(p) for p in paths]


@pytest.mark.parametrize("path", EVERY, ids=names(EVERY))
def test_slide_metadata_and_title(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        kind = cell.metadata.get("slideshow", {}).get("slide_type")
        assert kind in SLIDE_TYPES, f"cell {i} has no slideshow.slide_type"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert first.metadata["slideshow"]["slide_type"] == "slide"


@pytest.mark.parametrize("path", EVERY, ids=names(EVERY))
def test_committed_outputs_come_from_one_full_run(path):
    nb = nbformat.read(path, as_version=4)
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), "re-run the notebook top to bottom before committing"
    for c in nb.cells:
        if c.cell_type == "code":
            assert not [o for o in c.outputs if o.output_type == "error"], "committed with an error output"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=names(NOTEBOOKS))
def test_executes_top_to_bottom(path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("MINDLLM_FAST", "1")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(path)}}).execute()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=names(NOTEBOOKS))
def test_every_notebook_has_a_lesson_plan_and_solutions(path):
    week = os.path.basename(path)[:2]
    plan = os.path.join(ROOT, "lessons", f"week{week}.md")
    assert os.path.isfile(plan) and os.path.isfile(os.path.join(ROOT, "lessons", "solutions", f"week{week}.md"))
    text = open(plan, encoding="utf-8").read()
    for part in ("## Learning objectives", "## Outline (90 minutes)", "## Key formulas", "## Terms (术语)",
                 "## Exercises", "## Further reading", os.path.basename(path)):
        assert part in text, f"{plan} lacks {part}"
    assert f"`{os.path.basename(path)}`" in open(os.path.join(ROOT, "lessons", "README.md"), encoding="utf-8").read()
