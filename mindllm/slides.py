"""Notebooks -> reveal.js slide decks that open offline.

    python -m mindllm.slides notebooks/01_backprop_by_hand.ipynb [more.ipynb ...] [--all] [--lang zh] [--out DIR]
                             [--pdf] [--check]

Each notebook becomes DIR/<name>.html; with --lang zh, its Chinese edition (notebooks/<name>.zh.ipynb, made by
python -m mindllm.translate build) becomes DIR/<name>.zh.html. reveal.js and MathJax are copied from installed PyPI packages into
DIR/_assets/, so a deck (or the whole DIR, zipped) works with no network. Author guide: docs/slides.md.
"""
import html as html_module
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata

from jinja2 import DictLoader
from nbconvert import SlidesExporter
from traitlets.config import Config

from . import fonts
from .browser import FLAGS, find_chromium
from .nbfile import read_notebook
from .errors import ArgumentParser, UserError, cli
from .translate import chinese_notebook, english_notebooks

ASSETS = "_assets"
THEME = "white"  # the only theme copied: most other reveal.js themes @import Google Fonts
# (PyPI distribution, folder inside it, files or folders to copy (None: all), name under DIR/_assets).
# sphinx-revealjs ships reveal.js 5 as plain files; jupyter-server-mathjax ships MathJax 2.7 with STIX-Web fonts.
# MathJax's a11y extensions are left out: only its (disabled) menu loads them, and they name a CDN fallback.
BUNDLES = [("sphinx-revealjs", "sphinx_revealjs/_static/revealjs",
            ("LICENSE", "dist/reveal.css", "dist/reveal.js", f"dist/theme/{THEME}.css",
             "dist/theme/fonts/source-sans-pro", "plugin/notes/notes.js"), "reveal.js"),
           ("jupyter-server-mathjax", "jupyter_server_mathjax/static", None, "mathjax")]
TAGS = {"hide-cell": "drop the cell", "hide-input": "show only the outputs", "hide-output": "show only the code"}

# nbconvert's reveal template, minus everything it loads from a CDN (jQuery, require.js, mermaid, widgets,
# MathJax, reveal.js), plus local reveal.js, its notes plugin and MathJax.
TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{% block html_head_js %}{% endblock %}
{% block jupyter_widgets %}{% endblock %}
{% block html_head_css %}
<style>
/* the deck's Chinese glyphs, cut from the bundled Noto Sans CJK: no system font needed */
@font-face { font-family: "mindllm CJK"; src: url("{{ resources.assets }}/fonts/{{ resources.font }}") format("woff"); }
html:root {
  --r-heading-text-transform: none;  /* the theme's capitals mangle names like MindSpore */
  --r-main-font: "Source Sans Pro", "mindllm CJK", Helvetica, sans-serif;
  --r-heading-font: "Source Sans Pro", "mindllm CJK", Helvetica, sans-serif;
  --r-code-font: "DejaVu Sans Mono", monospace, "mindllm CJK";
  --r-main-font-size: 30px;
  /* nbconvert's markdown and output areas name fonts of their own (system-ui for prose): the same stacks here */
  --jp-content-font-family: var(--r-main-font);
  --jp-ui-font-family: var(--r-main-font);
  --jp-code-font-family: var(--r-code-font);
}
/* A slide shows what fits on a 1280x720 screen: nothing scrolls. What does not fit is an authoring error that
   python -m mindllm.slides --check names (docs/slides.md). */
.reveal .slides section { text-align: left; }
.reveal .slides section h1, .reveal .slides section h2 { text-align: left; margin-bottom: 0.4em; }
.reveal .slides section pre, .reveal .slides section .jp-Cell pre { font-size: 16px; line-height: 1.3; margin: 6px 0;
  width: 100%; box-shadow: none; white-space: pre; overflow: hidden; }
.reveal .slides section .jp-InputArea-editor pre { background: #f6f8fa; padding: 6px 10px; }
.reveal .jp-InputPrompt, .reveal .jp-OutputPrompt { display: none; }  /* In [12]: takes width, says nothing */
.reveal .jp-OutputArea-output img { max-height: 500px; width: auto; margin: 4px 0; }
.reveal table { font-size: 22px; }
.reveal .anchor-link { display: none; }
</style>
{% endblock %}
{% block html_head_js_mathjax %}
<script>
window.MathJax = {
  tex2jax: {inlineMath: [["$", "$"], ["\\(", "\\)"]], processEscapes: true, processEnvironments: true},
  // only STIX-Web ships in the package: never look for local TeX fonts or image fonts
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null},
  // no right-click menu: its accessibility items would load the a11y extensions, which are not copied
  showMathMenu: false, messageStyle: "none",
  // typesetting changes slide heights: let reveal.js lay out again
  AuthorInit: function () { MathJax.Hub.Register.StartupHook("End", function () { Reveal.layout(); }); }
};
</script>
<script src="{{ resources.assets }}/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"></script>
{% endblock %}
{% block footer_js %}
<script src="{{ resources.assets }}/reveal.js/dist/reveal.js"></script>
<script src="{{ resources.assets }}/reveal.js/plugin/notes/notes.js"></script>
<script>
// one PDF page per slide, not one per fragment step
Reveal.initialize({hash: true, slideNumber: "c/t", width: 1280, height: 720, margin: 0.03, center: false,
                   pdfSeparateFragments: false, plugins: [RevealNotes]});
</script>
{% endblock %}
"""


def package_dir(dist: str, folder: str) -> str:
    """A folder inside an installed distribution, found without importing it (sphinx_revealjs imports Sphinx,
    which is not needed here and not installed)."""
    try:
        path = str(metadata.distribution(dist).locate_file(folder))
    except metadata.PackageNotFoundError:
        path = ""
    if not os.path.isdir(path):
        raise UserError(f"{dist} is not installed (the slides copy their assets from it): "
                        "run the set-up line at the top of requirements.txt")
    return path


def copy_assets(out_dir: str) -> None:
    for dist, folder, parts, name in BUNDLES:
        src, dst = package_dir(dist, folder), os.path.join(out_dir, ASSETS, name)
        for part in parts or [""]:
            s, d = os.path.join(src, part), os.path.join(dst, part)
            if os.path.isdir(s):
                shutil.copytree(s, d, dirs_exist_ok=True, ignore=shutil.ignore_patterns("a11y", "*.map", "*.scss"))
            else:
                os.makedirs(os.path.dirname(d), exist_ok=True)
                shutil.copy2(s, d)


def exporter() -> SlidesExporter:
    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_cell_tags = {"hide-cell"}
    c.TagRemovePreprocessor.remove_input_tags = {"hide-input"}
    c.TagRemovePreprocessor.remove_all_outputs_tags = {"hide-output"}
    # a long cell's prints arrive as several stream outputs (nbclient flushes during the run); Jupyter shows them as
    # one block, and so does the deck (each would otherwise be its own <pre>, with its own margins)
    c.CoalesceStreamsPreprocessor.enabled = True
    c.SlidesExporter.reveal_url_prefix = f"{ASSETS}/reveal.js"
    c.SlidesExporter.reveal_theme = THEME
    return SlidesExporter(config=c, extra_loaders=[DictLoader({"mindllm_slides.html.j2": TEMPLATE})],
                          template_file="mindllm_slides.html.j2")


def build(path: str, out_dir: str) -> str:
    """Write OUT_DIR/<notebook name>.html (plus the shared OUT_DIR/_assets) and return its path."""
    nb = read_notebook(path)
    name = os.path.splitext(os.path.basename(path))[0]
    font = f"{name}.woff"
    try:
        html, _ = exporter().from_notebook_node(nb, resources={"assets": ASSETS, "font": font,
                                                               "metadata": {"name": name}})
    except ValueError as e:  # nbconvert: "All cells are hidden, cannot create slideshow"
        raise UserError(f"{path}: {e}; give at least one cell a slide type other than skip or notes") from None
    os.makedirs(os.path.join(out_dir, ASSETS, "fonts"), exist_ok=True)
    copy_assets(out_dir)
    fonts.subset(html, os.path.join(out_dir, ASSETS, "fonts", font))  # every character the deck may show
    out = os.path.join(out_dir, name + ".html")
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(html)
    return out


MAX_CODE_LINES = 12  # code on a slide is the idea, not the plumbing (docs/slides.md)

# Injected into a copy of a deck: once reveal.js is ready, MathJax has typeset and the fonts have loaded, show each
# slide with all its fragments and measure it (reveal.js lays slides out at 1280x720 before scaling them).
AUDIT = """<script>Reveal.on("ready", () => MathJax.Hub.Queue(() => document.fonts.ready.then(() => {
  const config = Reveal.getConfig(), slides = [];
  Reveal.getSlides().forEach(s => {
    const at = Reveal.getIndices(s);
    Reveal.slide(at.h, at.v, 999);
    const heading = s.querySelector("h1, h2, h3");
    const code = [...s.querySelectorAll(".jp-InputArea-editor pre")]
      .reduce((n, p) => n + p.textContent.replace(/\\n+$/, "").split("\\n").length, 0);
    slides.push({h: at.h, v: at.v, title: heading ? heading.textContent.replace("\u00b6", "").trim() : "",
      height: s.scrollHeight, code: code,
      hiddenCode: [...s.querySelectorAll(".fragment .jp-InputArea-editor pre, .fragment.jp-CodeCell")].length,
      cut: [...s.querySelectorAll("pre")].filter(p => p.scrollWidth > p.clientWidth + 2)
             .map(p => [p.scrollWidth, p.clientWidth, p.textContent.split("\\n").find(l => l.length > 0) || ""]),
      notes: [...s.querySelectorAll("aside.notes")].map(a => a.textContent.trim()).join(" ").length});
  });
  const cjk = [...document.fonts].find(f => f.family.replace(/"/g, "") === "mindllm CJK");
  // Chinese text in an element whose fonts do not include the bundled one shows as boxes where no system font has it
  const boxed = [...document.querySelectorAll(".slides *")].filter(e => !e.closest(".MathJax, .MathJax_Display") &&
    [...e.childNodes].some(n => n.nodeType === 3 && /[\u4e00-\u9fff]/.test(n.textContent)) &&
    !getComputedStyle(e).fontFamily.includes("mindllm CJK")).map(e => e.tagName.toLowerCase() + ": " +
    e.textContent.trim().slice(0, 30));
  const report = document.createElement("pre");
  report.id = "mindllm-audit";
  report.textContent = JSON.stringify({width: config.width, height: config.height, slides: slides,
    chinese: /[\\u4e00-\\u9fff]/.test(document.body.innerText), cjkFont: cjk ? cjk.status : "absent", boxed: boxed});
  document.body.appendChild(report);
})));</script>"""


def audit(html: str) -> dict:
    """Every slide of a built deck measured in headless Chromium: {width, height, slides: [{h, v, title, height,
    code, hiddenCode, cut, notes}], chinese, cjkFont}."""
    probe = os.path.splitext(html)[0] + ".audit.html"  # beside the deck, so its assets resolve
    with open(html, encoding="utf-8") as fh:
        page = fh.read()
    with open(probe, "w", encoding="utf-8") as fh:
        fh.write(page.replace("</html>", AUDIT + "</html>", 1))
    try:
        for _ in range(2):  # on a loaded machine Chromium now and then exits without the page: once more
            p = chromium("--window-size=1280,720", "--virtual-time-budget=60000", "--dump-dom",
                         "file://" + os.path.abspath(probe), timeout=180)
            found = re.search(r'<pre id="mindllm-audit">(.*?)</pre>', p.stdout, re.S)
            if found:
                return json.loads(html_module.unescape(found.group(1)))
    finally:
        os.remove(probe)
    raise UserError(f"Chromium could not measure {html} (exit status {p.returncode}, twice): "
                    f"{(p.stderr.strip().splitlines() or ['no output'])[-1]}")


def problems(report: dict) -> list[str]:
    """What an instructor would have to fix before presenting: one line per problem, naming the slide."""
    out = []
    for n, s in enumerate(report["slides"], 1):
        where = f"slide {n} ({s['h'] + 1}.{s['v'] + 1}) '{s['title'][:50]}'"
        if s["height"] > report["height"]:
            out.append(f"{where}: {s['height']} px tall, the screen holds {report['height']}: split it, move prose "
                       f"to notes, hide-input plumbing")
        for width, box, line in s["cut"]:
            out.append(f"{where}: a code line is cut ({width} px in a {box} px box): '{line.strip()[:40]}...'")
        if s["code"] > MAX_CODE_LINES:
            out.append(f"{where}: {s['code']} lines of code (at most {MAX_CODE_LINES}): split the cell or hide-input "
                       f"the plumbing")
        if s.get("hiddenCode"):
            out.append(f"{where}: code arrives as a fragment, so the slide opens bare: make the code cell's slide "
                       f"type '-' (keep fragments for markdown reveals)")
        if n > 1 and not s["notes"]:
            out.append(f"{where}: no speaker notes (a notes cell after the slide's cells)")
    if report["chinese"] and report["cjkFont"] != "loaded":
        out.append(f"the bundled CJK font did not load ({report['cjkFont']}): Chinese falls back to system fonts")
    for where in report.get("boxed", [])[:5]:
        out.append(f"Chinese text in a font stack without the bundled CJK font (boxes without a system font): {where}")
    return out


def chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run headless Chromium in a throw-away profile, with the flags of browser.FLAGS (no calling home, runs as
    root)."""
    exe = find_chromium("it prints the decks to PDF")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"Chromium did not finish within {timeout:.0f} s: {' '.join(args)}") from None


def print_pdf(html: str) -> str:
    """reveal.js lays every slide out as one page when the URL has ?print-pdf; Chromium prints that."""
    pdf = os.path.splitext(html)[0] + ".pdf"
    p = chromium("--no-pdf-header-footer", "--virtual-time-budget=20000", f"--print-to-pdf={pdf}",
                 "file://" + os.path.abspath(html) + "?print-pdf")
    if not os.path.isfile(pdf):
        raise UserError(f"Chromium did not write {pdf}: {(p.stderr.strip().splitlines() or ['no message'])[-1]}")
    return pdf


def in_chinese(path: str) -> str:
    """The Chinese edition of an English notebook (a Chinese one is kept as it is)."""
    zh = path if path.endswith(".zh.ipynb") else chinese_notebook(path)
    if not os.path.isfile(zh):
        raise UserError(f"{path} has no Chinese edition ({zh}): python -m mindllm.translate build writes it from "
                        f"notebooks/zh/")
    return zh


@cli
def main(argv=None):
    ap = ArgumentParser(prog="python -m mindllm.slides", description="Notebooks -> offline reveal.js decks.",
                        epilog="Cell tags: " + "; ".join(f"{t}: {what}" for t, what in TAGS.items()))
    ap.add_argument("notebooks", nargs="*", help=".ipynb files")
    ap.add_argument("--all", action="store_true", help="every notebook in notebooks/")
    ap.add_argument("--lang", choices=["en", "zh"], default="en", help="zh: the decks of the notebooks' Chinese "
                    "editions, with Chinese speaker notes (default: en)")
    ap.add_argument("--out", default="slides", help="output folder (default: slides)")
    ap.add_argument("--pdf", action="store_true", help="also print each deck to PDF with headless Chromium")
    ap.add_argument("--check", action="store_true", help="measure every slide in headless Chromium and list what "
                    "does not fit a 1280x720 screen, code over 12 lines, slides without notes (exit 1 if any)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    paths = args.notebooks + (english_notebooks(".") if args.all else [])
    if not paths:
        raise UserError("no notebooks: give .ipynb paths, or --all from the repository root")
    if args.lang == "zh":
        paths = [in_chinese(p) for p in paths]
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:  # a file in the way, no permission
        raise UserError(f"--out '{args.out}' cannot be made a folder ({e.strerror})") from None
    found = 0
    for path in paths:
        html = build(path, args.out)
        print(html)
        if args.pdf:
            print(print_pdf(html))
        if args.check:
            for line in problems(audit(html)):
                print(f"  {line}")
                found += 1
    if found:
        print(f"{found} problem(s): the decks are not ready to present", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
