"""What a notebook prints and draws, in Chinese, without a second run (docs/translation.md, "Outputs").

The Chinese notebook shows the English run's outputs. Their words are translated line by line through a catalog,
notebooks/zh/NN_*.outputs.txt; their numbers are copied from the run. A line's template is the line with each
number replaced by {}:

    en: val loss {} (perplexity {}) after {} steps     the English template, as the run printed it
    zh: 验证损失 {}（困惑度 {}），共训练 {} 步           the Chinese: the {} are filled in order
    zh: =                                               (instead) keep the English: a generated sample, a token

Figures are drawn again from the figure the run kept (mindllm.figures), each text line passed through the catalog.
This module is the mechanics; mindllm.translate checks the catalog and builds the notebooks.
"""
from __future__ import annotations

import dataclasses
import functools
import re

from . import figures, fonts

# a hex digest (8+ hex digits, with a letter and a digit) is one number; then decimal numbers, 1,234.5e-3
NUMBER = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{8,}\b|\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")
HOLE = "{}"
KEEP = "="  # zh: = keeps the English line
# quoted text, math and special tokens ([UNK], <|endoftext|>): data, not words
QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"|\$[^$\n]*\$|\[[A-Z]+\]|<\|[a-z_]+\|>")
PROSE_WORD = re.compile(r"(?<![\w.])[A-Za-z]{3,}(?![\w.(])")  # not an identifier, a module path or a call
HEADER = ("# What {name} prints and draws, line by line: en: the English with each number as {{}}; zh: the Chinese,\n"
          "# the same {{}} in the same order (filled from the run), or = to keep the English. docs/translation.md\n")


def template(line: str) -> str:
    """The line without its indentation and trailing space, each number replaced by {}."""
    return NUMBER.sub(HOLE, line.strip())


def key(tmpl: str) -> str:
    """What a template is matched by: runs of spaces count as one, so a table row whose numbers change width in a
    re-run keeps its entry (the Chinese keeps its own padding)."""
    return " ".join(tmpl.split())


def needs_translation(tmpl: str) -> bool:
    """A template with a word in it: not a number, an identifier, a call, quoted text or math."""
    return bool(PROSE_WORD.search(QUOTED.sub(" ", tmpl)))


@dataclasses.dataclass
class Entry:
    en: str
    zh: str


def read_catalog(text: str) -> list[Entry]:
    """The entries of a catalog file: 'en: ' lines, each followed by its 'zh: ' line ('#' lines are comments)."""
    entries, en = [], None
    for line in text.splitlines():
        if line.startswith("en:"):
            en = line[3:].strip()
        elif line.startswith("zh:") and en is not None:
            entries.append(Entry(en, line[3:].strip()))
            en = None
    return entries


def write_catalog(name: str, entries: list[Entry]) -> str:
    return HEADER.format(name=name) + "".join(f"\nen: {e.en}\nzh: {e.zh}\n" for e in entries)


class Catalog:
    def __init__(self, entries: list[Entry]):
        self.zh = {key(e.en): e.zh for e in entries}

    def line(self, line: str) -> str:
        """One line in Chinese: its indentation kept, its numbers copied into the Chinese template's holes."""
        zh = self.zh.get(key(template(line)))
        if not zh or zh == KEEP or zh.count(HOLE) != template(line).count(HOLE):
            return line
        numbers = iter(NUMBER.findall(line.strip()))
        head = line[:len(line) - len(line.lstrip())]
        tail = line[len(line.rstrip()):]
        return head + re.sub(re.escape(HOLE), lambda _: next(numbers), zh) + tail

    def text(self, text: str) -> str:
        return "".join(self.line(line) for line in text.splitlines(keepends=True))


# ---- a notebook's outputs ------------------------------------------------------------------------------------

def printed(output) -> list[str]:
    """The text an output shows as lines: a stream's, or a result's text (markdown or plain; not a figure's)."""
    if output.output_type == "stream":
        return output.text.splitlines() if output.name == "stdout" else []
    data = output.get("data", {})
    if "image/png" in data:
        return []
    return (data.get("text/markdown") or data.get("text/plain") or "").splitlines()


@functools.lru_cache(maxsize=256)
def figure_texts(stored: str) -> tuple[str, ...]:
    fonts.use_in_matplotlib()  # the kept texts name the bundled CJK font, as the kernel that drew them did
    return tuple(line for text in figures.texts(stored) for line in text.splitlines())


def templates(nb, every: bool = False) -> list[str]:
    """The templates in a notebook's outputs that need a Chinese line (every=True: all of them, e.g. numbers
    only), in order of first appearance."""
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            found += map(template, printed(output))
            if figures.MIME in output.get("data", {}):
                found += map(template, figure_texts(output.data[figures.MIME]))
    return [t for t in dict.fromkeys(found) if every or needs_translation(t)]


def figure_counts(nb) -> tuple[int, int]:
    """(figures kept for drawing again, matplotlib figures that are a PNG only: the notebook ran before figures were
    kept). Other images (a screenshot) are not counted: they have no text to translate."""
    data = [o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])]
    drawn = [d for d in data if "image/png" in d and str(d.get("text/plain", "")).startswith("<Figure")]
    return sum(figures.MIME in d for d in data), sum(figures.MIME not in d for d in drawn)


def translate(nb, catalog: Catalog) -> None:
    """The notebook's outputs in Chinese, in place: printed lines through the catalog, kept figures drawn again
    (the kept figure itself is dropped; a figure the run did not keep stays as it was drawn)."""
    fonts.use_in_matplotlib()  # the bundled CJK font, for the figures drawn again
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stdout":
                output.text = catalog.text(output.text)
                continue
            data = output.get("data", {})
            if figures.MIME in data:
                data["image/png"] = figures.redraw(data.pop(figures.MIME), catalog.text, font=fonts.FAMILY)
            elif "image/png" not in data:
                for kind in ("text/markdown", "text/plain"):
                    if kind in data:
                        data[kind] = catalog.text(data[kind])
