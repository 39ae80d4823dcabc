"""A notebook's figures, kept so that they can be drawn again with their text in another language.

The Chinese edition (mindllm.translate, docs/translation.md) shows the English run's outputs with Chinese words.
Printed lines can be translated after the run; a PNG cannot. So in a notebook kernel every figure that is shown is
also stored in its output, pickled, beside the PNG, under a MIME type no front end displays. `translate build`
unpickles it, replaces its text line by line and renders it as the inline backend did: the same data, the same run.

    keep_shown_figures()   # in a kernel: called by fonts.use_in_matplotlib(), which every notebook calls first
    redraw(stored, translate) -> base64 PNG
"""
from __future__ import annotations

import base64
import io
import lzma
import pickle
import re

from .errors import UserError

CJK = re.compile(r"[\u3000-\u9fff\uff00-\uffef]")
MATH = re.compile(r"(?<!\\)\$.*(?<!\\)\$")  # mathtext: a text between unescaped dollar signs
MIME = "application/vnd.mindllm.figure+pickle"  # base64 of the xz-compressed pickle of a matplotlib Figure


def stored(fig) -> str | None:
    """A figure as its output keeps it, or None when it cannot be pickled (then it stays in its first language)."""
    try:
        # xz, not zlib: a pickled line holds its data several times over, and xz's window sees the repeats
        return base64.b64encode(lzma.compress(pickle.dumps(fig), preset=9)).decode("ascii")
    except Exception:  # noqa: BLE001 - a figure with e.g. a lambda formatter: keep the PNG only, never fail a cell
        return None


def keep_shown_figures() -> None:
    """Register a display formatter that stores each displayed Figure under MIME (no-op outside IPython)."""
    try:
        from IPython import get_ipython
        from IPython.core.formatters import BaseFormatter
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or MIME in shell.display_formatter.formatters:
        return
    from matplotlib.figure import Figure
    from traitlets import Unicode

    class Kept(BaseFormatter):
        format_type = Unicode(MIME)

        def __call__(self, obj):  # not for_type(): the inline backend pops Figure from every formatter's table
            return stored(obj) if isinstance(obj, Figure) else None

    shell.display_formatter.formatters[MIME] = Kept(parent=shell.display_formatter)


def redraw(data: str, translate, font: str = "") -> str:
    """The stored figure with every text (titles, labels, legends, annotations, tick labels) passed through
    `translate(str) -> str`, rendered to PNG as matplotlib's inline backend renders (bbox_inches='tight');
    returns base64 PNG. `font`: a family (already registered with matplotlib) that Chinese text falls back to."""
    fig = translated(data, translate, font)
    buf = io.BytesIO()
    fig.canvas.print_figure(buf, format="png", facecolor=fig.get_facecolor(), edgecolor=fig.get_edgecolor(),
                            dpi=fig.dpi, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def translated(data: str, translate, font: str = ""):
    """The stored figure, unpickled, on an Agg canvas, each of its texts replaced by translate(text)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    try:
        fig = pickle.loads(lzma.decompress(base64.b64decode(data)))
    except (ValueError, EOFError, lzma.LZMAError, pickle.UnpicklingError, AttributeError, ImportError) as e:
        raise UserError(f"a kept figure cannot be read ({type(e).__name__}: {e}); run its notebook again") from None
    FigureCanvasAgg(fig)
    fig.canvas.draw()  # makes the tick labels, so that fixed (categorical) ones can be translated
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t.get_text() for t in axis.get_ticklabels()]
            if any(translate(s) != s for s in labels):
                axis.set_ticks(axis.get_ticklocs(), labels=[translate(s) for s in labels])
    for text in fig.findobj(Text):
        if text.get_text() and translate(text.get_text()) != text.get_text():
            text.set_text(translate(text.get_text()))
        if not (font and CJK.search(text.get_text())):
            continue
        if MATH.search(text.get_text()):
            # mathtext draws the words around the math in the text's first font, without falling back per glyph
            text.set_fontfamily([font, *(f for f in text.get_fontfamily() if f != font)])
        elif font not in text.get_fontfamily():
            text.set_fontfamily([*text.get_fontfamily(), font])  # a text made before the font was: fall back too
    return fig


def texts(data: str) -> list[str]:
    """Every text a stored figure draws (tick labels included), in drawing order, without repeats."""
    seen = []
    translated(data, lambda s: seen.append(s) or s)
    return list(dict.fromkeys(seen))
