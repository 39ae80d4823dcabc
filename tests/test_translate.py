"""The Chinese edition (python -m mindllm.translate): every English unit has its Chinese, in step with the English
(hash), with the same numbers and the glossary's terms; the Chinese notebooks are generated from the English ones
and share their code and outputs byte for byte. The rules are tested on a small hand-made course first."""
import os
import re
import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from mindllm import figures, fonts, translate
from mindllm import translate_outputs as outputs
from mindllm.translate import (Pair, blocks, chinese_edition, chinese_notebook, digest, english_notebooks, glossary,
                               numerals, pair_problems, pairs, sections, skeleton)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = english_notebooks(ROOT)


def test_sections_split_at_headings_outside_code_fences():
    text = "intro line\n# Week 1 — Backprop\nbody\n```\n# not a heading\n```\n## Terms (术语)\nrow\n## Terms (术语)\nx"
    assert [k for k, _ in sections(text)] == ["top", "week-1-backprop", "terms", "terms-2"]
    assert sections(text)[1][1] == "# Week 1 — Backprop\nbody\n```\n# not a heading\n```"
    assert translate.slug("Results to expect (full run: about 5 min on a quiet 2-core CPU)") == \
        "results-to-expect-full-run-about-5-min"  # at most 40 characters, whole words


def test_numerals_drop_thousands_separators_and_keep_decimals():
    assert numerals("val loss 1.891 after 2,000 steps in fp16, 1,234,567 tokens; 3, 4") == \
        sorted(["1.891", "2000", "16", "1234567", "3", "4"])
    assert numerals("第 6 周：2000 步后验证损失 1.891") == sorted(["6", "2000", "1.891"])
    # scale words: each language writes large numbers its own way
    assert numerals("5 million characters, a 1.3M-parameter model, 4k-token chats, 128 billion") == \
        numerals("500 万个字符，1.3M 参数的模型，4k 词元的对话，1280 亿") == \
        sorted(["5000000", "1300000", "4000", "128000000000"])
    assert numerals("k-means with 8 k-means clusters") == ["8"]


def test_blocks_read_markers_keys_hashes_and_links():
    text = "preamble\n<!-- en abc 0123abcd -->\n中文一\n\n<!-- en sec-two 89abcdef link -->\n## 第二节\n"
    found = blocks(text)
    assert [(b.key, b.hash, b.text, b.link) for b in found] == [("abc", "0123abcd", "中文一", False),
                                                                ("sec-two", "89abcdef", "## 第二节", True)]


GLOSSARY = """# Glossary
## Checked terms (检查的术语)
| English | 中文 | week |
|---|---|---|
| causal mask | 因果掩码 | 4 |
| nucleus (top-p) sampling | 核采样 / Top-p 采样 | 6 |
## Words with more than one sense (not checked)
| English | 中文 | week |
|---|---|---|
| mask | 掩码 | 4 |
"""


@pytest.fixture
def course(tmp_path):
    """A one-notebook course: two markdown cells (one with numbers and a glossary term), one code cell."""
    (tmp_path / "notebooks" / "zh").mkdir(parents=True)
    (tmp_path / "lessons").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "glossary.md").write_text(GLOSSARY, encoding="utf-8")
    nb = new_notebook(cells=[new_markdown_cell("# Week 6 — GPT", id="title"),
                             new_code_cell("print(2 + 2)", id="code1",
                                           outputs=[new_output("stream", name="stdout", text="4\n")]),
                             new_markdown_cell("The causal mask hides 3 of 4 positions for the first one.",
                                               id="notes1")])
    nbformat.write(nb, str(tmp_path / "notebooks" / "06_gpt.ipynb"))
    return tmp_path


def write_translation(course, title="# 第 6 周 — GPT", notes="因果掩码对第一个位置遮住 4 个位置中的 3 个。"):
    en = nbformat.read(str(course / "notebooks" / "06_gpt.ipynb"), as_version=4).cells
    text = f"<!-- en title {digest(en[0].source)} -->\n{title}\n\n<!-- en notes1 {digest(en[2].source)} -->\n{notes}\n"
    (course / "notebooks" / "zh" / "06_gpt.md").write_text(text, encoding="utf-8")


COURSE_PAIR = Pair("notebooks/06_gpt.ipynb", "notebooks/zh/06_gpt.md")


def problems_of(course):
    return pair_problems(COURSE_PAIR, str(course), glossary(str(course)))


def test_a_faithful_translation_has_no_problems_and_builds_a_notebook_with_the_same_code(course):
    write_translation(course)
    assert problems_of(course) == []
    zh = chinese_edition(COURSE_PAIR, str(course))
    assert [c.source for c in zh.cells] == ["# 第 6 周 — GPT", "print(2 + 2)", "因果掩码对第一个位置遮住 4 个位置中的 3 个。"]
    assert zh.cells[1].outputs[0].text == "4\n" and zh.metadata["mindllm"]["language"] == "zh"


def test_each_kind_of_drift_is_named(course):
    write_translation(course, notes="掩码对第一个位置遮住 4 个位置中的 5 个。")  # wrong number, term not used
    found = problems_of(course)
    assert any("numbers differ" in p and "missing 3" in p and "not in the English 5" in p for p in found), found
    assert any("glossary: 'causal mask' is 因果掩码" in p for p in found), found
    write_translation(course, notes="The causal mask hides 3 of 4 positions for the first one.")
    assert any("no Chinese in the translation" in p for p in problems_of(course))

    write_translation(course)
    path = course / "notebooks" / "06_gpt.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[2].source = nb.cells[2].source.replace("3 of 4", "2 of 4")  # the English changes after translation
    nb.cells.append(new_markdown_cell("## A new slide", id="new1"))
    nbformat.write(nb, str(path))
    found = problems_of(course)
    assert any(p.startswith("notebooks/zh/06_gpt.md: notes1: stale: the English changed") for p in found), found
    assert "notebooks/zh/06_gpt.md: new1: missing (no block for this markdown cell)" in found

    nb.cells = nb.cells[1:]  # the title cell is deleted from the English
    nbformat.write(nb, str(path))
    assert any("title: no such markdown cell" in p for p in problems_of(course))


def test_skeleton_adds_the_missing_blocks_in_order_and_keeps_the_translated_ones(course):
    write_translation(course)
    path = course / "notebooks" / "06_gpt.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    nb.cells.insert(1, new_markdown_cell("## Tokens per second", id="mid"))
    nbformat.write(nb, str(path))
    assert skeleton(COURSE_PAIR, str(course)) == 1
    found = blocks((course / "notebooks" / "zh" / "06_gpt.md").read_text(encoding="utf-8"))
    assert [b.key for b in found] == ["title", "mid", "notes1"]
    assert found[0].text == "# 第 6 周 — GPT" and found[1].text.startswith(translate.TODO)
    assert any("mid: not translated yet" in p for p in problems_of(course))


def test_an_output_line_is_translated_with_the_runs_numbers():
    catalog = outputs.Catalog([outputs.Entry("val loss {} (perplexity {}) after {} steps", "验证损失 {}（困惑度 {}），共 {} 步"),
                               outputs.Entry("sample: {} tokens", outputs.KEEP)])
    assert outputs.template("  val loss 1.891 (perplexity 6.62) after 2,000 steps \n") == \
        "val loss {} (perplexity {}) after {} steps"
    assert catalog.text("  val loss 1.891 (perplexity 6.62) after 2,000 steps\nsample: 5 tokens\nother 3\n") == \
        "  验证损失 1.891（困惑度 6.62），共 2,000 步\nsample: 5 tokens\nother 3\n"
    assert catalog.line("val loss 2.5e-03 (perplexity 7) after 10 steps") == "验证损失 2.5e-03（困惑度 7），共 10 步"
    wide = outputs.Catalog([outputs.Entry("Llama block     {}   {}", "Llama 块     {}   {}")])
    assert wide.line("Llama block  747,648  1.952") == "Llama 块     747,648   1.952"  # padding of another run
    assert outputs.template("digest, rank 1: 3b2d7ae1fc9d0a11 in week06 (float32)") == \
        "digest, rank {}: {} in week{} (float{})"  # a hex digest is one hole, not a run of numbers
    # data lines (numbers, identifiers, calls, quoted text, math) need no entry; a line with a word does
    for data in ("x 'ROMEO was here' y 'W'", "transformer.h (4)   793,088", "$\\mathdefault{10^{-2}}$",
                 "mask(6) == 1e-9", "[CLS] 我 [MASK] [SEP] <|endoftext|>"):
        assert not outputs.needs_translation(outputs.template(data)), data
    for words in ("total  812,288", "context 'R' -> target 'O'", "no separate output matrix: the LM head reuses wte"):
        assert outputs.needs_translation(outputs.template(words)), words


def add_output(course, text):
    path = course / "notebooks" / "06_gpt.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[1].outputs.append(new_output("stream", name="stdout", text=text))
    nbformat.write(nb, str(path))


def write_catalog(course, *entries):
    (course / "notebooks" / "zh" / "06_gpt.outputs.txt").write_text(
        outputs.write_catalog("06_gpt.ipynb", [outputs.Entry(en, zh) for en, zh in entries]), encoding="utf-8")


def test_each_kind_of_output_drift_is_named_and_skeleton_adds_the_missing_lines(course):
    write_translation(course)
    add_output(course, "val loss 1.891 after 2000 steps of 12 x 64 tokens\n")
    assert problems_of(course) == ["notebooks/zh/06_gpt.outputs.txt: missing (what notebooks/06_gpt.ipynb prints "
                                   "and draws, in Chinese)"]
    assert skeleton(COURSE_PAIR, str(course)) == 1  # the markdown is translated: one output line to do
    assert problems_of(course) == ["notebooks/zh/06_gpt.outputs.txt: val loss {} after {} steps of {} x {} tokens: "
                                   f"not translated yet ({translate.TODO})"]
    tmpl = "val loss {} after {} steps of {} x {} tokens"
    for zh, fragment in (("验证损失 {}，训练 {} 步，每步 {}×{} 个词元", None),
                         ("验证损失 {}，训练 {} 步", "4 {} in the English, 2 in the Chinese"),
                         ("验证损失 {}，训练 {} 步，每步 {}×{} 个词元（共 8 轮）", "not in the English 8"),
                         ("val loss {} after {} steps of {} x {} tokens", "no Chinese"),
                         (outputs.KEEP, None)):
        write_catalog(course, (tmpl, zh))
        found = problems_of(course)
        assert (found == []) if fragment is None else any(fragment in p for p in found), (zh, found)
    write_catalog(course, (tmpl, "验证损失 {}，训练 {} 步，每步 {}×{} 个词元"), ("train loss {} at step {}", "训练损失"))
    assert problems_of(course)[-2:] == [
        "notebooks/zh/06_gpt.outputs.txt: not in the outputs any more: train loss {} at step {}",
        "notebooks/zh/06_gpt.outputs.txt: train loss {} at step {}: 2 {} in the English, 0 in the Chinese"]
    assert skeleton(COURSE_PAIR, str(course)) == 0  # nothing to add; the line the outputs lost goes, the rest stays
    assert problems_of(course) == []
    zh = chinese_edition(COURSE_PAIR, str(course))
    assert [o.text for o in zh.cells[1].outputs] == ["4\n", "验证损失 1.891，训练 2000 步，每步 12×64 个词元\n"]
    assert zh.metadata["mindllm"]["generated_from"] == ["06_gpt.ipynb", "zh/06_gpt.md", "zh/06_gpt.outputs.txt"]


def a_kept_figure():
    """A figure as a notebook run keeps it: its PNG (drawn as the inline backend draws) and the kept figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    ax.plot(range(50), [0.1 * i for i in range(50)], label="train loss")
    ax.bar(["greedy", "top-k"], [1, 2])
    ax.set_xlabel("step")
    ax.set_title("val loss 1.891 at step 2000")
    ax.legend()
    kept = figures.stored(fig)
    return kept, figures.redraw(kept, lambda s: s)


def test_a_kept_figure_is_drawn_again_with_its_text_through_the_catalog():
    kept, png = a_kept_figure()
    assert {"greedy", "step", "val loss 1.891 at step 2000", "train loss"} <= set(figures.texts(kept))
    catalog = outputs.Catalog([outputs.Entry("val loss {} at step {}", "第 {} 步的验证损失 {}"),
                               outputs.Entry("step", "步数"), outputs.Entry("greedy", "贪心解码"),
                               outputs.Entry("train loss", "训练损失")])
    fonts.use_in_matplotlib()
    drawn = figures.translated(kept, catalog.text, font=fonts.FAMILY)
    said = {t.get_text() for t in drawn.findobj(lambda a: hasattr(a, "get_text"))}
    assert {"步数", "训练损失", "第 1.891 步的验证损失 2000"} <= said and "step" not in said
    assert {t.get_text() for t in drawn.axes[0].get_xticklabels()} == {"贪心解码", "top-k"}
    zh_png = figures.redraw(kept, catalog.text, font=fonts.FAMILY)
    assert zh_png != png and figures.redraw(kept, lambda s: s) == png  # the same drawing, but for its words


def test_chinese_words_around_math_in_a_figure_get_the_chinese_font(caplog):
    """Mathtext draws a label with $...$ whole, the words around the math in the text's first font and without
    falling back per glyph: the Chinese of 'exact, $\\beta$ 0.05' came out as boxes until the CJK font led."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    fig.add_subplot().plot([0, 1], label=r"exact, $\beta$ 0.05")
    fig.axes[0].legend()
    catalog = outputs.Catalog([outputs.Entry(r"exact, $\beta$ {}", r"精确匹配，$\beta$ {}")])
    fonts.use_in_matplotlib()
    with caplog.at_level("WARNING"):
        figures.redraw(figures.stored(fig), catalog.text, font=fonts.FAMILY)
    assert not [r for r in caplog.records if "does not have a glyph" in r.getMessage()]
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == r"exact, $\beta$ 0.05"  # the kept figure is unchanged


def test_status_counts_the_figures_a_run_did_not_keep():
    kept, png = a_kept_figure()
    nb = new_notebook(cells=[new_code_cell("", outputs=[
        new_output("display_data", data={"image/png": png, figures.MIME: kept, "text/plain": "<Figure size 4x3>"}),
        new_output("display_data", data={"image/png": png, "text/plain": "<Figure size 400x300 with 1 Axes>"}),
        new_output("display_data", data={"image/png": png, "text/plain": "<IPython.core.display.Image object>"})])])
    assert outputs.figure_counts(nb) == (1, 1)  # a screenshot has no text to translate: not counted


def test_a_kept_figure_that_cannot_be_read_is_one_clear_error(course):
    from mindllm.errors import UserError

    write_translation(course)
    path = course / "notebooks" / "06_gpt.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[1].outputs.append(new_output("display_data", data={"image/png": "iVBO", figures.MIME: "bm90IHh6"}))
    nbformat.write(nb, str(path))
    with pytest.raises(UserError, match="a kept figure cannot be read .*run its notebook again"):
        problems_of(course)


def test_a_notebook_kernel_keeps_every_shown_figure(tmp_path):
    """fonts.use_in_matplotlib() (the first cell of every notebook) makes the kernel keep each figure it shows, beside
    the PNG that front ends display; redrawing it unchanged gives that PNG."""
    from nbclient import NotebookClient

    nb = new_notebook(cells=[new_code_cell("import matplotlib.pyplot as plt\nfrom mindllm import fonts\n"
                                           "fonts.use_in_matplotlib()"),
                             new_code_cell("plt.plot([1, 3, 2], label='val loss'); plt.xlabel('step'); plt.legend()\n"
                                           "plt.show()")])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = [o for o in nb.cells[1].outputs if o.output_type == "display_data"]
    assert len(shown) == 1 and {"image/png", figures.MIME} <= set(shown[0].data)
    assert {"step", "val loss"} <= set(figures.texts(shown[0].data[figures.MIME]))
    assert figures.redraw(shown[0].data[figures.MIME], lambda s: s) == shown[0].data["image/png"].replace("\n", "")


def test_the_whole_course_has_its_chinese_in_step():
    """Every notebook's markdown cells, every lesson plan and solutions section, the lessons' README and the README:
    translated, not stale, same numbers, glossary terms used (python -m mindllm.translate check prints the same)."""
    terms = glossary(ROOT)
    assert len(terms) > 100
    found = [line for pair in pairs(ROOT) for line in pair_problems(pair, ROOT, terms)]
    assert found == [], f"{len(found)} problem(s), e.g.\n" + "\n".join(found[:30])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_the_chinese_notebook_is_generated_and_shares_code_and_outputs(path):
    zh_path = chinese_notebook(path)
    assert os.path.isfile(zh_path), "run python -m mindllm.translate build"
    pair = next(p for p in pairs(ROOT) if p.english == os.path.relpath(path, ROOT))
    committed = nbformat.read(zh_path, as_version=4)
    assert committed == chinese_edition(pair, ROOT), "out of date: run python -m mindllm.translate build"
    english = nbformat.read(path, as_version=4)
    assert [c.id for c in committed.cells] == [c.id for c in english.cells]
    for en, zh in zip(english.cells, committed.cells):
        if en.cell_type == "code":
            assert (zh.source, zh.execution_count) == (en.source, en.execution_count)
            assert_same_run(en.outputs, zh.outputs)
        else:
            assert re.search(r"[\u4e00-\u9fff]", zh.source) or not re.search(r"[A-Za-z]{3,}", en.source), zh.id


def assert_same_run(english, chinese):
    """The Chinese outputs are the English run's: the same outputs, line for line the same numbers; a figure is
    the run's PNG or, where the run kept the figure, a new drawing of it (and the kept pickle is not copied)."""
    assert [o.output_type for o in chinese] == [o.output_type for o in english]
    for en, zh in zip(english, chinese):
        en_lines, zh_lines = outputs.printed(en), outputs.printed(zh)
        assert len(en_lines) == len(zh_lines)
        for a, b in zip(en_lines, zh_lines):
            assert outputs.NUMBER.findall(a.strip()) == outputs.NUMBER.findall(b.strip()), (a, b)
        data = en.get("data", {})
        assert figures.MIME not in zh.get("data", {})
        if "image/png" in data and figures.MIME not in data:
            assert zh.data["image/png"] == data["image/png"]


def terms_tables(path):
    text = open(path, encoding="utf-8").read()
    section = re.search(r"\n## (?:Terms|术语)[^\n]*\n(.*?)(?:\n## |\Z)", text, re.S).group(1)
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


@pytest.mark.parametrize("week", range(1, 13))
def test_every_lesson_terms_table_agrees_with_the_glossary(week):
    """Every Chinese term a week's plan teaches is in docs/glossary.md, and the Chinese plan's table is the same."""
    glossary_text = open(os.path.join(ROOT, translate.GLOSSARY), encoding="utf-8").read()
    table = terms_tables(os.path.join(ROOT, "lessons", f"week{week:02d}.md"))
    for row in table.splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        if row.startswith("|") and len(cells) > 1 and not set(cells[1]) <= set("-: ") and cells[1] != "中文":
            for form in re.split(r"\s*(?:/|,|，|\(|\)|（|）)\s*", cells[1]):
                assert not form or form in glossary_text, f"week {week}: {form} ({cells[0]}) is not in the glossary"
    zh_plan = os.path.join(ROOT, "lessons", "zh", f"week{week:02d}.md")
    assert terms_tables(zh_plan).strip() == table.strip()


@pytest.mark.parametrize("week", range(1, 13))
def test_every_chinese_lesson_plan_has_the_sections_of_a_plan(week):
    text = open(os.path.join(ROOT, "lessons", "zh", f"week{week:02d}.md"), encoding="utf-8").read()
    for heading in ("## 学习目标", "## 课堂安排（90 分钟）", "## 核心公式", "## 术语", "## 练习", "## 延伸阅读"):
        assert heading in text, f"lessons/zh/week{week:02d}.md lacks {heading}"
    assert os.path.isfile(os.path.join(ROOT, "lessons", "zh", "solutions", f"week{week:02d}.md"))


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "mindllm.translate", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_cli_bad_input_is_one_line_and_status_2(tmp_path):
    for args, cwd, fragment in ((["check", "setup.cfg"], ROOT, "neither an English course file"),
                                (["skeleton"], ROOT, "skeleton needs the files"),
                                (["status"], str(tmp_path), "from the repository root"),
                                (["translate-all"], ROOT, "invalid choice")):
        p = run(*args, cwd=cwd)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and fragment in lines[-1], (args, p.stderr)


def test_cli_check_and_status_on_the_course():
    p = run("check", "notebooks/06_gpt.ipynb", "lessons/zh/week06.md", "notebooks/zh/01_backprop_by_hand.outputs.txt")
    assert p.returncode == 0 and "3 file(s): every unit translated and in step" in p.stdout, p.stdout + p.stderr
    p = run("status")
    assert p.returncode == 0
    rows = [line for line in p.stdout.splitlines() if "units in step" in line]
    assert len(rows) == len(pairs(ROOT)) and all("problem" not in row for row in rows), p.stdout
