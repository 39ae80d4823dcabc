"""python -m mindllm.slides: notebooks -> reveal.js decks that open offline. The file checks run everywhere; the
browser checks open decks in headless Chromium and are skipped only where it is absent (.ci/run installs it)."""
import glob
import html as html_module
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser

import matplotlib.image
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output


from mindllm.slides import MAX_CODE_LINES, audit, build, chromium, main, problems

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (.ci/run installs it)")
PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
REMOTE = re.compile(r"^\s*(https?:)?//", re.I)
# Quoted URLs in the copied JavaScript that are names, not fetches: XML namespaces and MathJax's "about" links.
NOT_FETCHED = ("http://www.w3.org/", "http://exslt.org/", "http://www.mathjax.org", "http://www.stixfonts.org",
               "https://github.com/mathjax/")


def cell(kind, source, slide_type, tags=(), outputs=()):
    c = new_markdown_cell(source) if kind == "md" else new_code_cell(source, outputs=list(outputs))
    c.metadata = {"slideshow": {"slide_type": slide_type}, "tags": list(tags)}
    return c


def every_feature_notebook(path):
    """One cell per slide type and tag; 3 slides + 1 subslide survive."""
    text = lambda s: new_output("stream", name="stdout", text=s)  # noqa: E731
    nb = new_notebook(cells=[
        cell("md", "# Title 标题", "slide"),
        cell("md", "## Sub $x^2$", "subslide"),
        cell("code", "secret_source = 1", "slide", ["hide-input"],
             [text("only-the-output"), new_output("display_data", data={"image/png": PNG_1PX})]),
        cell("code", "visible_code = 2", "fragment", outputs=[text("visible-output")]),
        cell("code", "skipped_code = 3", "skip"),
        cell("md", "speaker note text", "notes"),
        cell("md", "## dropped-slide", "slide", ["hide-cell"]),
        cell("code", "code_without_output = 4", "-", ["hide-output"], [text("hidden-output")]),
        cell("md", "## Last", "slide"),
    ])
    nbformat.write(nb, path)
    return str(path)


def expected_slides(path):
    """What reveal.js counts: one per slide or subslide cell that survives (not skipped, not tagged hide-cell)."""
    cells = nbformat.read(path, as_version=4).cells
    return sum(c.metadata.get("slideshow", {}).get("slide_type") in ("slide", "subslide")
               and "hide-cell" not in c.metadata.get("tags", []) for c in cells)


class Deck(HTMLParser):
    """Leaf <section>s (what reveal.js counts as slides), and every URL the page would fetch."""
    FETCH = {"src", "poster", "data", "srcset"}

    def __init__(self, html):
        super().__init__()
        self.stack, self.slides, self.fetched, self.inline, self._tag = [], 0, [], [], None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "section":
            if self.stack:
                self.stack[-1] = False  # has a child: a vertical stack, not a slide
            self.stack.append(True)
        for k, v in attrs:
            if v and (k in self.FETCH or (tag == "link" and k == "href")):
                self.fetched.append(v)

    def handle_endtag(self, tag):
        if tag == "section":
            self.slides += self.stack.pop()

    def handle_data(self, data):
        if self._tag in ("style", "script"):
            self.inline.append(data)


def css_urls(css):
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    return re.findall(r"""url\(\s*['"]?([^'")]+)|@import\s+['"]([^'"]+)""", css)


def offline_problems(out_dir):
    """Remote URLs a page of OUT_DIR would fetch, and local ones that are missing."""
    problems = []

    def check(url, base):
        if REMOTE.match(url):
            problems.append(f"{base}: remote {url}")
        elif not re.match(r"(data|about):|#", url):
            local = os.path.join(os.path.dirname(base), re.split(r"[?#]", url)[0])
            if not os.path.exists(local):
                problems.append(f"{base}: missing {url}")

    for path in glob.glob(os.path.join(out_dir, "**", "*.*"), recursive=True):
        ext = os.path.splitext(path)[1]
        if ext not in (".html", ".css", ".js") or not os.path.isfile(path):
            continue
        text = open(path, encoding="utf-8", errors="replace").read()
        if ext == ".html":
            deck = Deck(text)
            for url in deck.fetched:
                check(url, path)
            text = "\n".join(deck.inline)
        if ext in (".html", ".css"):
            for url in [a or b for a, b in css_urls(text)]:
                check(url, path)
        if ext in (".html", ".js"):
            for url in re.findall(r"""["'`](https?://[^"'`\s]+)""", text):
                if not url.startswith(NOT_FETCHED):
                    problems.append(f"{path}: names {url}")
    return problems


def assert_clean_error(capsys, argv, fragment):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_deck_is_offline_and_has_one_slide_per_slide_cell(path, tmp_path):
    html = open(build(path, str(tmp_path)), encoding="utf-8").read()
    assert '<meta charset="utf-8"' in html
    assert Deck(html).slides == expected_slides(path)
    assert offline_problems(str(tmp_path)) == []


def test_slide_types_and_tags(tmp_path):
    nb = every_feature_notebook(tmp_path / "features.ipynb")
    html = open(build(nb, str(tmp_path / "out")), encoding="utf-8").read()
    assert Deck(html).slides == expected_slides(nb) == 4
    assert "标题" in html and "only-the-output" in html and "data:image/png;base64," in html
    assert "visible_code" in html and "visible-output" in html and "code_without_output" in html
    for gone in ("secret_source", "skipped_code", "dropped-slide", "hidden-output"):
        assert gone not in html, gone
    assert re.search(r'<aside class="notes">.*speaker note text', html, re.S)
    assert offline_problems(str(tmp_path / "out")) == []


@pytest.mark.slow
def test_cli_all_writes_every_notebook(tmp_path):
    p = subprocess.run([sys.executable, "-m", "mindllm.slides", "--all", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    names = sorted(os.path.basename(p)[:-6] for p in NOTEBOOKS)
    assert sorted(f[:-5] for f in os.listdir(tmp_path) if f.endswith(".html")) == names


def test_clean_errors(tmp_path, capsys):
    assert_clean_error(capsys, [str(tmp_path / "none.ipynb")], "notebook not found")
    (tmp_path / "notes.txt").write_text("not json")
    assert_clean_error(capsys, [str(tmp_path / "notes.txt")], "is not a Jupyter notebook")
    (tmp_path / "other.ipynb").write_text('{"cells": 3}')
    assert_clean_error(capsys, [str(tmp_path / "other.ipynb")], "is not a Jupyter notebook")
    assert_clean_error(capsys, [], "no notebooks")
    assert_clean_error(capsys, ["--bogus"], "unrecognized arguments")


# Injected into a copy of the deck: record every element whose load fails (script, stylesheet, image; remote
# hosts resolve to nothing, so a remote one fails too), then, once reveal.js is ready and MathJax has finished,
# write what the page sees into the DOM for --dump-dom.
CATCH = """<script>window.failed = [];
addEventListener("error", e => failed.push(e.target.src || e.target.href || String(e.message)), true);</script>"""
REPORT = """<script>Reveal.on("ready", () => MathJax.Hub.Queue(() => {
  const pre = document.createElement("pre"); pre.id = "probe";
  pre.textContent = JSON.stringify({slides: Reveal.getTotalSlides(), charset: document.characterSet,
    h1: document.querySelector("h1").textContent, math: document.querySelectorAll(".MathJax").length,
    mathErrors: document.querySelectorAll(".MathJax_Error, merror").length, failed: failed});
  document.body.appendChild(pre);
}));</script>"""


@needs_chromium
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_deck_renders_in_chromium(path, tmp_path):
    deck = build(path, str(tmp_path))
    html = open(deck, encoding="utf-8").read()
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("<head>", "<head>" + CATCH, 1).replace("</html>", REPORT + "</html>", 1),
                     encoding="utf-8")
    p = chromium("--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=20000", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', p.stdout, re.S)
    assert found, p.stderr[-3000:]
    seen = json.loads(html_module.unescape(found.group(1)))
    title = nbformat.read(path, as_version=4).cells[0].source.splitlines()[0].lstrip("# ")
    assert seen["slides"] == expected_slides(path)
    assert seen["charset"] == "UTF-8" and title in seen["h1"]
    assert seen["failed"] == [] and seen["mathErrors"] == 0
    assert seen["math"] > 0 or "$" not in html

    shot = tmp_path / "deck.png"
    chromium("--window-size=1280,720", "--virtual-time-budget=10000", f"--screenshot={shot}", f"file://{deck}")
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (720, 1280)
    assert pixels[..., :3].std() > 0.02, "blank screenshot"


@needs_chromium
@pytest.mark.slow
def test_pdf(tmp_path):
    nb = every_feature_notebook(tmp_path / "features.ipynb")
    main([nb, "--out", str(tmp_path / "out"), "--pdf"])
    pdf = (tmp_path / "out" / "features.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b", pdf)) == 4


def _cell_nb(path, cells):
    nb = new_notebook(cells=cells)
    nbformat.write(nb, path)
    return str(path)


@needs_chromium
@pytest.mark.slow
def test_the_audit_names_what_an_instructor_would_have_to_fix(tmp_path):
    """Too tall, a code line cut at the edge, too much code, no notes, code hidden behind a key press: each named
    with its slide; Chinese text is drawn with the bundled font."""
    long_code = "\n".join(f"x{i} = {i}" for i in range(40))  # 40 lines: taller than the screen, over 12
    nb = _cell_nb(tmp_path / "bad.ipynb", [
        cell("md", "# Title 标题", "slide"),
        cell("md", "## Tall", "slide"), cell("code", long_code, "-"), cell("md", "talk", "notes"),
        cell("md", "## Wide", "slide"), cell("code", "y = '" + "w" * 200 + "'", "-"), cell("md", "talk", "notes"),
        cell("md", "## 中文 without notes", "slide"),
        cell("md", "## Bare", "slide"), cell("code", "w = 2", "fragment"), cell("md", "talk", "notes"),
        cell("md", "## Fine", "slide"), cell("code", "z = 1", "-"), cell("md", "talk", "notes"),
    ])
    report = audit(build(nb, str(tmp_path / "out")))
    found = problems(report)
    assert report["chinese"] and report["cjkFont"] == "loaded"
    assert any("'Tall'" in p and "px tall" in p for p in found), found
    assert any("'Tall'" in p and f"40 lines of code (at most {MAX_CODE_LINES})" in p for p in found), found
    assert any("'Wide'" in p and "a code line is cut" in p for p in found), found
    assert any("'中文 without notes'" in p and "no speaker notes" in p for p in found), found
    assert any("'Bare'" in p and "code arrives as a fragment" in p for p in found), found
    assert not any("'Fine'" in p or "'Title" in p for p in found), found
    assert len(found) == 5, found


@needs_chromium
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_every_deck_is_ready_to_present(path, tmp_path):
    """At 1280x720 every slide fits, no code line is cut, no slide shows more than 12 lines of code, every slide after
    the title has speaker notes, and Chinese is drawn with the bundled font."""
    assert problems(audit(build(path, str(tmp_path)))) == []


@needs_chromium
@pytest.mark.slow
def test_pdf_handout_has_one_page_per_slide(tmp_path):
    path = NOTEBOOKS[0]
    main([path, "--out", str(tmp_path), "--pdf"])
    pdf = (tmp_path / (os.path.basename(path)[:-6] + ".pdf")).read_bytes()
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == expected_slides(path)
