"""The CJK font the course ships: Noto Sans CJK (SIL Open Font License 1.1), from the PyPI package
cvttf-notosanscjk-regular (requirements-data.txt), so Chinese renders in plots and slide decks on a machine with no
Chinese font of its own.

    fonts.use_in_matplotlib()      # Chinese axis labels and titles: the bundled font fills in what DejaVu lacks
    fonts.subset(text, "x.woff")   # a web font with just the glyphs of `text` (slide decks carry a few hundred kB)
"""
from __future__ import annotations

import importlib.util
import os

from fontTools import subset as ft_subset

from .data.corpus import INSTALL_LINE
from .errors import UserError

PACKAGE, FILE = "cvttf_NotoSansCJK_Regular", "NotoSansCJKtc-Regular.otf"
FAMILY = "Noto Sans CJK TC"  # the Traditional-Chinese cut; it holds every simplified character too (44,683 glyphs)


def cjk_font() -> str:
    """The font file's path (found without importing its package)."""
    spec = importlib.util.find_spec(PACKAGE)
    path = os.path.join(list(spec.submodule_search_locations)[0], FILE) if spec else ""
    if not os.path.isfile(path):
        raise UserError(f"the course's Chinese font (PyPI cvttf-notosanscjk-regular) is not installed: {INSTALL_LINE}")
    return path


def use_in_matplotlib() -> None:
    """Plots draw Latin text in DejaVu Sans (matplotlib's default) and fall back to the bundled CJK font per glyph.
    In a notebook kernel, shown figures are also kept for the Chinese edition to draw again (mindllm.figures)."""
    from matplotlib import font_manager, rcParams  # (the slides use this module too, without matplotlib)

    from .figures import keep_shown_figures

    path = cjk_font()
    if FAMILY not in {f.name for f in font_manager.fontManager.ttflist}:
        font_manager.fontManager.addfont(path)
    rcParams["font.family"] = ["DejaVu Sans", FAMILY]
    keep_shown_figures()


def subset(text: str, out_path: str) -> str:
    """Write a WOFF font with the glyphs of `text` (plus ASCII); returns out_path."""
    options = ft_subset.Options()
    options.flavor = "woff"
    options.layout_features = ["*"]
    font = ft_subset.load_font(cjk_font(), options)
    subsetter = ft_subset.Subsetter(options)
    subsetter.populate(text="".join(sorted(set(text))) + "".join(map(chr, range(32, 127))))
    subsetter.subset(font)
    tmp = f"{out_path}.tmp{os.getpid()}"
    ft_subset.save_font(font, tmp, options)
    os.replace(tmp, out_path)
    return out_path
