"""Notebooks -> reveal.js slide decks that open offline.

    python -m mindllm.slides notebooks/01_backprop_by_hand.ipynb [more.ipynb ...] [--all] [--out DIR] [--pdf]

Each notebook becomes DIR/<name>.html. reveal.js and MathJax are copied from installed PyPI packages into
DIR/_assets/, so a deck (or the whole DIR, zipped) works with no network. Author guide: docs/slides.md.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata

import nbformat
from jinja2 import DictLoader
from nbconvert import SlidesExporter
from traitlets.config import Config

from .errors import ArgumentParser, UserError, cli

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
html:root { --r-heading-text-transform: none; }  /* the theme's capitals mangle names like MindSpore */
/* a slide taller than the screen (code + output + plot) scrolls instead of being cut off; PDFs get more pages */
html:not(.reveal-print) .reveal .slides section:not(.stack) { max-height: 100%; overflow-y: auto; }
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
Reveal.initialize({hash: true, slideNumber: "c/t", width: 1280, height: 720, pdfSeparateFragments: false,
                   plugins: [RevealNotes]});
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


def read_notebook(path: str) -> nbformat.NotebookNode:
    if not os.path.isfile(path):
        raise UserError(f"notebook not found: {path}")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as e:  # nbformat raises many types (JSON, schema, version); all mean "not a notebook"
        raise UserError(f"{path} is not a Jupyter notebook ({type(e).__name__}): pass an .ipynb file") from None


def exporter() -> SlidesExporter:
    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_cell_tags = {"hide-cell"}
    c.TagRemovePreprocessor.remove_input_tags = {"hide-input"}
    c.TagRemovePreprocessor.remove_all_outputs_tags = {"hide-output"}
    c.SlidesExporter.reveal_url_prefix = f"{ASSETS}/reveal.js"
    c.SlidesExporter.reveal_theme = THEME
    return SlidesExporter(config=c, extra_loaders=[DictLoader({"mindllm_slides.html.j2": TEMPLATE})],
                          template_file="mindllm_slides.html.j2")


def build(path: str, out_dir: str) -> str:
    """Write OUT_DIR/<notebook name>.html (plus the shared OUT_DIR/_assets) and return its path."""
    nb = read_notebook(path)
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        html, _ = exporter().from_notebook_node(nb, resources={"assets": ASSETS, "metadata": {"name": name}})
    except ValueError as e:  # nbconvert: "All cells are hidden, cannot create slideshow"
        raise UserError(f"{path}: {e}; give at least one cell a slide type other than skip or notes") from None
    os.makedirs(out_dir, exist_ok=True)
    copy_assets(out_dir)
    out = os.path.join(out_dir, name + ".html")
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(html)
    return out


def chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run headless Chromium in a throw-away profile. The background-networking flags stop it from calling
    home, which on a closed network makes it hang or misbehave; --no-sandbox lets it run as root."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not exe:
        raise UserError("Chromium not found: apt-get install chromium (it prints the decks to PDF)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
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


@cli
def main(argv=None):
    ap = ArgumentParser(prog="python -m mindllm.slides", description="Notebooks -> offline reveal.js decks.",
                        epilog="Cell tags: " + "; ".join(f"{t}: {what}" for t, what in TAGS.items()))
    ap.add_argument("notebooks", nargs="*", help=".ipynb files")
    ap.add_argument("--all", action="store_true", help="every notebooks/*.ipynb")
    ap.add_argument("--out", default="slides", help="output folder (default: slides)")
    ap.add_argument("--pdf", action="store_true", help="also print each deck to PDF with headless Chromium")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    paths = args.notebooks + (sorted(glob.glob(os.path.join("notebooks", "*.ipynb"))) if args.all else [])
    if not paths:
        raise UserError("no notebooks: give .ipynb paths, or --all from the repository root")
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:  # a file in the way, no permission
        raise UserError(f"--out '{args.out}' cannot be made a folder ({e.strerror})") from None
    for path in paths:
        html = build(path, args.out)
        print(html)
        if args.pdf:
            print(print_pdf(html))


if __name__ == "__main__":
    main()
