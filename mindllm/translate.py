"""The Chinese edition, from one source (docs/translation.md).

Code and outputs exist once, in the English files. The prose has a Chinese version kept beside it, cut into units
(a notebook's markdown cell, a markdown file's section). Each Chinese unit starts with a marker naming its English
unit and a hash of that unit's English text:

    <!-- en d9839c34 3f2a9c1b -->          the notebook cell with id d9839c34, as it read when translated
    <!-- en learning-objectives 77aa0012 -->   a markdown section, by its English heading

A translation is stale when the English hash changes; its numbers must equal the English ones; the glossary's terms
must be used. What a notebook prints and draws is translated line by line through its catalog (translate_outputs).
Notebooks are generated: English code, the English run's outputs in Chinese words, Chinese markdown.

    python -m mindllm.translate status            every pair: units translated, missing, stale, problems
    python -m mindllm.translate check [FILE ...]  each problem on one line (exit 1 if any)
    python -m mindllm.translate skeleton FILE     add a block, with the English to translate, for each missing unit
                                                  (and for a notebook, a catalog entry for each new output line)
    python -m mindllm.translate build             write notebooks/NN_*.zh.ipynb from the English + notebooks/zh/
"""
from __future__ import annotations

import dataclasses
import decimal
import glob
import hashlib
import os
import re
import sys

import nbformat

from . import translate_outputs as outputs
from .errors import ArgumentParser, UserError, cli
from .files import write_text_atomic
from .nbfile import read_notebook

MARK = re.compile(r"^<!-- en (?P<key>\S+) (?P<hash>[0-9a-f]{8})(?P<link> link)? -->[ \t]*$", re.M)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
CJK = re.compile(r"[\u4e00-\u9fff]")
TODO = "TODO(翻译)"  # what `skeleton` writes where the Chinese goes: a check fails until it is replaced


def digest(text: str) -> str:
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:8]


def slug(heading: str) -> str:
    """A section's key: its heading's first words (up to 40 characters), lower case, runs of anything but letters
    and digits as one '-'."""
    words = re.sub(r"[^a-z0-9]+", " ", heading.lower()).split()
    key = words[0] if words else "section"
    for word in words[1:]:
        if len(key) + 1 + len(word) > 40:
            break
        key += "-" + word
    return key


def sections(text: str) -> list[tuple[str, str]]:
    """A markdown file as (key, text) units: the part before the first heading ('top'), then one per heading
    (outside code fences). A repeated heading gets -2, -3, ... appended to its key."""
    units, lines, key, fenced, seen = [], [], "top", False, {}
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        found = None if fenced else HEADING.match(line)
        if found:
            if "".join(lines).strip():
                units.append((key, "\n".join(lines)))
            base = slug(found.group(2))
            seen[base] = seen.get(base, 0) + 1
            key, lines = base + (f"-{seen[base]}" if seen[base] > 1 else ""), []
        lines.append(line)
    if "".join(lines).strip():
        units.append((key, "\n".join(lines)))
    return units


def notebook_units(nb) -> list[tuple[str, str]]:
    """A notebook's prose: each markdown cell, by cell id."""
    return [(c.id, c.source) for c in nb.cells if c.cell_type == "markdown"]


@dataclasses.dataclass
class Block:
    key: str
    hash: str
    text: str
    link: bool  # a README section given as a pointer to the English, not translated


def blocks(text: str) -> list[Block]:
    """A translation file's blocks, in order (what precedes the first marker is not a block)."""
    marks = list(MARK.finditer(text))
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [Block(m["key"], m["hash"], text[m.end():end].strip("\n"), bool(m["link"])) for m, end in zip(marks, ends)]


# ---- the English sources and where their Chinese lives -------------------------------------------------------

@dataclasses.dataclass
class Pair:
    english: str  # path, relative to the repository root
    chinese: str
    links_allowed: bool = False  # README.zh.md may point to English reference sections instead of copying them

    @property
    def catalog(self) -> str:
        """A notebook's catalog of its outputs' lines (translate_outputs); '' for other files."""
        return self.chinese[:-len(".md")] + ".outputs.txt" if self.english.endswith(".ipynb") else ""

    def units(self, root: str) -> list[tuple[str, str]]:
        path = os.path.join(root, self.english)
        if path.endswith(".ipynb"):
            return notebook_units(read_notebook(path))
        with open(path, encoding="utf-8") as fh:
            return sections(fh.read())


def pairs(root: str) -> list[Pair]:
    """Every English file of the course with its Chinese counterpart."""
    out = []
    for nb in english_notebooks(root):
        name = os.path.splitext(os.path.basename(nb))[0]
        out.append(Pair(f"notebooks/{name}.ipynb", f"notebooks/zh/{name}.md"))
    for path in sorted(glob.glob(os.path.join(root, "lessons", "**", "*.md"), recursive=True)):
        rel = os.path.relpath(path, root)
        if not rel.startswith(os.path.join("lessons", "zh")):
            out.append(Pair(rel, os.path.join("lessons", "zh", os.path.relpath(rel, "lessons"))))
    out.append(Pair("README.md", "README.zh.md", links_allowed=True))
    return out


def english_notebooks(root: str) -> list[str]:
    """notebooks/*.ipynb without the generated Chinese ones (*.zh.ipynb)."""
    return [p for p in sorted(glob.glob(os.path.join(root, "notebooks", "*.ipynb"))) if not p.endswith(".zh.ipynb")]


def chinese_notebook(english: str) -> str:
    return english[:-len(".ipynb")] + ".zh.ipynb"


# ---- checks --------------------------------------------------------------------------------------------------

NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


# A number with a scale word is its value, so "5 million", "5M", "5,000,000" and "500 万" all read 5000000.
SCALED = re.compile(r"(\d+(?:,\d{3})*(?:\.\d+)?)\s*"
                    r"(?:(million|billion|thousand|M|B|k)(?!\w|-means)|(万亿|百万|亿|万|千))")
SCALE = {"thousand": 3, "k": 3, "million": 6, "M": 6, "billion": 9, "B": 9, "千": 3, "万": 4, "百万": 6, "亿": 8,
         "万亿": 12}


def numerals(text: str) -> list[str]:
    """The numbers a text states, thousands separators dropped (1,891 = 1891) and scale words applied (see SCALED),
    sorted: a translation states the same ones. Digits inside identifiers (week01, fp16, sm_86) count too: they are
    copied unchanged."""
    found = []

    def value(m):
        number = decimal.Decimal(m[1].replace(",", "")).scaleb(SCALE[m[2] or m[3]])
        found.append(f"{number.normalize():f}")
        return " "

    for n in NUMBER.findall(SCALED.sub(value, text)):
        n = re.sub(r"(?<=\d),(?=\d{3}\b)", "", n)
        found.extend(p for p in n.split(",") if p)
    return sorted(found)


def number_problems(english: str, chinese: str) -> str:
    en, zh = numerals(english), numerals(chinese)
    if en == zh:
        return ""
    missing, extra = list(en), []
    for n in zh:
        if n in missing:
            missing.remove(n)
        else:
            extra.append(n)
    return (f"numbers differ from the English: missing {' '.join(missing) or '-'}; "
            f"not in the English {' '.join(extra) or '-'}")


WORDS = re.compile(r"[A-Za-z]{3,}")
PLAIN = re.compile(r"```.*?```|`[^`]*`|\$\$.*?\$\$|\$[^$]*\$|<[^>]*>|\]\([^)]*\)", re.S)


def untranslated(english: str, chinese: str) -> bool:
    """English prose (5+ words outside code, math and links) with no Chinese character in its translation."""
    return len(WORDS.findall(PLAIN.sub(" ", english))) >= 5 and not CJK.search(chinese)


def unit_problems(key: str, english: str, block: Block, terms: list) -> list[str]:
    if block.link:
        return []
    out = []
    if block.hash != digest(english):
        out.append(f"{key}: stale: the English changed (hash now {digest(english)}, translated from {block.hash})")
    if TODO in block.text:
        out.append(f"{key}: not translated yet ({TODO})")
    elif untranslated(english, block.text):
        out.append(f"{key}: no Chinese in the translation")
    if numbers := number_problems(english, block.text):
        out.append(f"{key}: {numbers}")
    out += [f"{key}: glossary: '{en}' is {zh_terms[0]}" for en, zh_terms in missing_terms(english, block.text, terms)]
    return out


def pair_problems(pair: Pair, root: str, terms: list) -> list[str]:
    """One line per problem of one pair (missing file, missing / stale / extra / out-of-order units, numbers,
    glossary)."""
    path = os.path.join(root, pair.chinese)
    if not os.path.isfile(path):
        return [f"{pair.chinese}: missing (the Chinese of {pair.english})"]
    with open(path, encoding="utf-8") as fh:
        found = blocks(fh.read())
    english = pair.units(root)
    by_key = {b.key: b for b in found}
    out = [f"{pair.chinese}: {key}: missing (no block for this {unit_kind(pair)})"
           for key, _ in english if key not in by_key]
    known = {key for key, _ in english}
    out += [f"{pair.chinese}: {b.key}: no such {unit_kind(pair)} in {pair.english} any more" for b in found
            if b.key not in known]
    if [b.key for b in found if b.key in known] != [k for k, _ in english if k in by_key]:
        out.append(f"{pair.chinese}: the blocks are not in the English order")
    if len(by_key) < len(found):
        out.append(f"{pair.chinese}: a key appears twice")
    for b in found:
        if b.link and not pair.links_allowed:
            out.append(f"{pair.chinese}: {b.key}: 'link' blocks are for README.zh.md only")
    for key, text in english:
        if key in by_key:
            out += [f"{pair.chinese}: {line}" for line in unit_problems(key, text, by_key[key], terms)]
    return out + (catalog_problems(pair, root, terms) if pair.catalog else [])


def catalog_problems(pair: Pair, root: str, terms: list) -> list[str]:
    """A notebook's output catalog: an entry for every line that needs one, none for lines the outputs no longer
    have, each translated with the English's {} holes and numbers and the glossary's terms."""
    nb = read_notebook(os.path.join(root, pair.english))
    needed, entries = outputs.templates(nb), read_catalog(root, pair)
    if needed and not os.path.isfile(os.path.join(root, pair.catalog)):
        return [f"{pair.catalog}: missing (what {pair.english} prints and draws, in Chinese)"]
    have, shown = {outputs.key(e.en) for e in entries}, shown_keys(nb)
    out = [f"{pair.catalog}: missing: {t}" for t in needed if outputs.key(t) not in have]
    out += [f"{pair.catalog}: not in the outputs any more: {e.en}" for e in entries if outputs.key(e.en) not in shown]
    if len(have) < len(entries):
        out.append(f"{pair.catalog}: an English line appears twice")
    for e in entries:
        out += [f"{pair.catalog}: {e.en}: {problem}" for problem in entry_problems(e, terms)]
    return out


def shown_keys(nb) -> set[str]:
    """The keys of every line a notebook's outputs print or draw: the entries its catalog may hold (check names the
    others, skeleton drops them)."""
    return set(map(outputs.key, outputs.templates(nb, every=True)))


def entry_problems(e: outputs.Entry, terms: list) -> list[str]:
    if e.zh == outputs.KEEP:
        return []
    if TODO in e.zh:
        return [f"not translated yet ({TODO})"]
    out = [] if CJK.search(e.zh) else ["no Chinese (write = to keep the English)"]
    if e.zh.count(outputs.HOLE) != e.en.count(outputs.HOLE):
        out.append(f"{e.en.count(outputs.HOLE)} {{}} in the English, {e.zh.count(outputs.HOLE)} in the Chinese")
    if numbers := number_problems(e.en, e.zh):
        out.append(numbers)
    return out + [f"glossary: '{en}' is {zh_terms[0]}" for en, zh_terms in missing_terms(e.en, e.zh, terms)]


def read_catalog(root: str, pair: Pair) -> list[outputs.Entry]:
    path = os.path.join(root, pair.catalog)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return outputs.read_catalog(fh.read())


def unit_kind(pair: Pair) -> str:
    return "markdown cell" if pair.english.endswith(".ipynb") else "section"


# ---- the glossary --------------------------------------------------------------------------------------------

GLOSSARY = "docs/glossary.md"
CHECKED = "## Checked terms"


def glossary(root: str) -> list[tuple[list[str], list[str]]]:
    """The rows of docs/glossary.md's checked table as (English forms, Chinese forms). 'nucleus (top-p) sampling' is
    found as 'nucleus sampling'; '低秩适配 (低秩适应)' accepts either; '/' separates alternatives on both sides."""
    path = os.path.join(root, GLOSSARY)
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as fh:
        table = fh.read().split(CHECKED, 1)[-1].split("\n## ", 1)[0]  # only the first table is checked
        for line in table.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not line.startswith("|") or len(cells) < 2 or set(cells[0]) <= set("-: ") or cells[0] == "English":
                continue
            en = [re.sub(r"\s*\([^)]*\)", "", e).strip() for e in cells[0].split(" / ")]
            zh = [z.strip() for part in re.split(r"[()（）/]", cells[1]) for z in [part] if z.strip()]
            rows.append(([e for e in en if e], zh))
    return rows


def missing_terms(english: str, chinese: str, terms: list) -> list[tuple[str, list[str]]]:
    """Glossary terms the English unit uses whose Chinese form the translation lacks."""
    prose = PLAIN.sub(" ", english).lower()
    out = []
    for en_forms, zh_forms in terms:
        used = [e for e in en_forms if re.search(r"(?<![\w-])" + re.escape(e.lower()) + r"(?:s|es)?(?![\w-])", prose)]
        if used and not any(z in chinese for z in zh_forms):
            out.append((used[0], zh_forms))
    return out


# ---- notebooks -----------------------------------------------------------------------------------------------

def chinese_edition(pair: Pair, root: str):
    """The English notebook with each markdown cell's source replaced by its Chinese block, and its outputs' words
    through the catalog (same numbers, figures drawn again); code, ids and the rest of the metadata stay the
    English ones (the source files are named in the notebook's metadata)."""
    nb = read_notebook(os.path.join(root, pair.english))
    with open(os.path.join(root, pair.chinese), encoding="utf-8") as fh:
        by_key = {b.key: b.text for b in blocks(fh.read())}
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.id in by_key:
            cell.source = by_key[cell.id]
    outputs.translate(nb, outputs.Catalog(read_catalog(root, pair)))
    sources = [p for p in (pair.english, pair.chinese, pair.catalog) if os.path.isfile(os.path.join(root, p))]
    nb.metadata["mindllm"] = {"language": "zh", "generated_from": [os.path.relpath(p, "notebooks") for p in sources]}
    return nb


def build(root: str) -> list[str]:
    """Write notebooks/NN_*.zh.ipynb for every notebook with a translation file; returns the paths written."""
    out = []
    for pair in pairs(root):
        if pair.catalog and os.path.isfile(os.path.join(root, pair.chinese)):
            out.append(chinese_notebook(os.path.join(root, pair.english)))
            write_text_atomic(out[-1], nbformat.writes(chinese_edition(pair, root)) + "\n")
    return out


def skeleton(pair: Pair, root: str) -> int:
    """Append a block for each English unit the Chinese file lacks (its marker, then the English under a TODO
    line), in the English order; returns how many were added. Existing blocks are kept as they are."""
    path = os.path.join(root, pair.chinese)
    old = open(path, encoding="utf-8").read() if os.path.isfile(path) else ""
    have = {b.key: b for b in blocks(old)}
    head = old[:MARK.search(old).start()] if MARK.search(old) else old
    units = pair.units(root)
    parts = [head.rstrip("\n")] if head.strip() else []
    new = {key: Block(key, digest(text), f"{TODO}\n{text.strip()}", False) for key, text in units if key not in have}
    parts += [written(have.get(key) or new[key]) for key, _ in units]
    parts += [written(b) for b in have.values() if b.key not in dict(units)]  # orphans stay for `check` to name
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_text_atomic(path, "\n\n".join(parts) + "\n")
    return len(new) + (catalog_skeleton(pair, root) if pair.catalog else 0)


def catalog_skeleton(pair: Pair, root: str) -> int:
    """Bring a catalog in step with its notebook's outputs after a run: add an entry (its Chinese a TODO) for each
    line that needs one and has none, and drop the entries of lines the outputs no longer have (a re-run's new
    samples replace the old ones); returns how many were added."""
    nb = read_notebook(os.path.join(root, pair.english))
    shown, old = shown_keys(nb), read_catalog(root, pair)
    entries = [e for e in old if outputs.key(e.en) in shown]
    have = {outputs.key(e.en) for e in entries}
    new = [outputs.Entry(t, TODO) for t in outputs.templates(nb) if outputs.key(t) not in have]
    if new or len(entries) < len(old):
        write_text_atomic(os.path.join(root, pair.catalog),
                          outputs.write_catalog(os.path.basename(pair.english), entries + new))
    return len(new)


def written(b: Block) -> str:
    """A block as it stands in a translation file: its marker line, then its text."""
    return f"<!-- en {b.key} {b.hash}{' link' if b.link else ''} -->\n{b.text}"


# ---- command line --------------------------------------------------------------------------------------------

def find_pair(path: str, root: str) -> Pair:
    rel = os.path.relpath(os.path.abspath(path), root)
    for pair in pairs(root):
        if rel in (pair.english, pair.chinese, pair.catalog):
            return pair
    raise UserError(f"{path} is neither an English course file nor its Chinese counterpart "
                    f"(see python -m mindllm.translate status)")


def repo_root() -> str:
    root = os.getcwd()
    if not (os.path.isdir(os.path.join(root, "notebooks")) and os.path.isdir(os.path.join(root, "lessons"))):
        raise UserError("run python -m mindllm.translate from the repository root (it reads notebooks/ and lessons/)")
    return root


def status(root: str, terms: list) -> None:
    for pair in pairs(root):
        problems = pair_problems(pair, root, terms)
        keys = [key for key, _ in pair.units(root)]
        units = len(keys)
        bad = set(keys) if not os.path.isfile(os.path.join(root, pair.chinese)) else \
            {key for key in keys for p in problems if p.startswith(f"{pair.chinese}: {key}: ")}
        kept, png_only = outputs.figure_counts(read_notebook(os.path.join(root, pair.english))) if pair.catalog \
            else (0, 0)
        print(f"{pair.chinese:44} {units - len(bad):4}/{units} units in step"
              + (f", {len(problems)} problem(s)" if problems else "")
              + (f"; {png_only} of {kept + png_only} figure(s) in English until the notebook runs again"
                 if png_only else ""))


@cli
def main(argv=None):
    ap = ArgumentParser(prog="python -m mindllm.translate", description="The Chinese edition: check, extend, build.")
    ap.add_argument("command", choices=["status", "check", "skeleton", "build"])
    ap.add_argument("files", nargs="*", help="English or Chinese files (check: default all; skeleton: required)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    root = repo_root()
    terms = glossary(root)
    if args.command == "status":
        status(root, terms)
    elif args.command == "build":
        for path in build(root):
            print(os.path.relpath(path, root))
    elif args.command == "skeleton":
        if not args.files:
            raise UserError("skeleton needs the files to extend, e.g. notebooks/zh/06_gpt.md")
        for path in args.files:
            pair = find_pair(path, root)
            print(f"{pair.chinese}: {skeleton(pair, root)} block(s) to translate added")
    else:
        chosen = [find_pair(p, root) for p in args.files] or pairs(root)
        problems = [line for pair in chosen for line in pair_problems(pair, root, terms)]
        print("\n".join(problems) if problems else f"{len(chosen)} file(s): every unit translated and in step")
        if problems:
            sys.exit(1)


if __name__ == "__main__":
    main()
