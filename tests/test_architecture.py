"""The package's shape: no import circle (top-level or inside functions), every module importable on its own, the
teaching models free of the speed layer, and a task per file behind one registry."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "mindllm")


def modules() -> dict:
    """{'mindllm.x.y': path} of every module of the package (a package is its __init__)."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, f)
    return out


def imports_of(name: str, path: str, known) -> set:
    """The package's modules `name` imports anywhere in its file, with the packages each import runs."""
    is_package = path.endswith("__init__.py")
    base = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                module = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        for t in targets:
            if t in known:
                found.add(t)
            parts = t.split(".")  # importing a.b.c runs a.b's __init__ first
            found |= {".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) in known}
    found.discard(name)
    found.discard("mindllm")
    return {m for m in found if not name.startswith(m + ".")}  # a module's own package is already running


def find_cycle(graph: dict):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_import_graph_has_no_cycle():
    mods = modules()
    graph = {name: imports_of(name, path, mods) for name, path in mods.items()}
    assert graph["mindllm.train"] >= {"mindllm.runs", "mindllm.tasks", "mindllm.steps"}  # the parser sees imports
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # ... and finds a circle
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_every_module_imports_on_its_own():
    """Each module imported first in a fresh interpreter: an import-order dependency would fail here."""
    names = sorted(m for m in modules() if not m.endswith("__main__"))
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    for m in [m for m in sys.modules if m == 'mindllm' or m.startswith('mindllm.')]:\n"
            "        del sys.modules[m]\n"
            "    importlib.import_module(name)\n"
            "print('ok', len(sys.argv) - 1)")
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "GLOG_v": "3"})
    assert out.returncode == 0 and out.stdout.split() == ["ok", str(len(names))], out.stderr[-3000:]


@pytest.mark.parametrize("path", sorted(os.path.join(PACKAGE, "models", f)
                                        for f in os.listdir(os.path.join(PACKAGE, "models")) if f.endswith(".py")))
def test_models_are_plain_math(path):
    """The speed layer (kernels, environment switches) stays out of the model code students read."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | \
        {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not [m for m in imported if "kernels" in m or m.startswith("os")], imported
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | \
        {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not names & {"environ", "getenv", "fused", "kernels"}, names & {"environ", "getenv", "fused", "kernels"}


def test_each_task_is_one_module_behind_the_registry():
    from mindllm import tasks

    for name in tasks.NAMES:
        module = tasks.get(name)
        home = "align" if name in tasks.ALIGNMENT else "tasks"  # the alignment week's methods: mindllm/align/
        assert module.__file__.endswith(os.path.join(home, f"{name}.py"))
        for attr in ("ARCHS", "SAMPLES", "CLOZE", "HEADLINE", "Options", "check", "build", "report"):
            assert hasattr(module, attr), f"{home}/{name}.py lacks {attr}"
    # old configs name their task by model.arch and data.corpus
    assert [tasks.infer(a, c) for a, c in [("gpt", "shakespeare"), ("gpt", "instructions_zh"), ("transformer", "dates"),
                                           ("bert", "peoples_daily"), ("bert_classifier", "tweets_en")]] == \
        ["causal_lm", "instruct", "seq2seq_dates", "bert_pretrain", "classify"]


def test_task_keyword_only():
    from mindllm.tasks import Task

    with pytest.raises(TypeError):
        Task(None, None, None, {}, None, {}, 1, "")
