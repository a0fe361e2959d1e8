"""Package layering of megatron_ar, checked from the source with ``ast`` (no imports executed).

Every ``import`` / ``from ... import`` counts, also inside functions and under
``TYPE_CHECKING``. The layers, bottom to top (a module may import its own layer or lower ones):

    io -> compat -> runtime -> kernels (with _ext, the compiled extensions) -> models
       -> checkpoint -> text -> tokenizers -> data -> training -> megatron_ar/train.py

Checked: (a) no import cycle between modules nor between subpackages, (b) no import from a
higher layer into a lower one. A subpackage missing from the list fails the test until it is
given a layer. The checker itself is tested on a small planted tree.
"""
import ast
import os

import pytest

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ["io", "compat", "runtime", "kernels", "models", "checkpoint", "text", "tokenizers",
          "data", "training", "train"]
SAME_LAYER = {"_ext": "kernels"}


def _modules(root: str, package: str) -> dict:
    """Dotted module name -> file, for every .py file of ``package`` under ``root``."""
    out = {}
    base = os.path.join(root, package)
    for d, dirs, files in os.walk(base):
        dirs[:] = [x for x in dirs if x != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), root)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = \
                    os.path.join(d, f)
    return out


def import_graph(root: str, package: str = "megatron_ar") -> dict:
    """Module -> set of modules of ``package`` it imports (edges to itself dropped)."""
    mods = _modules(root, package)
    graph = {}
    for mod, path in mods.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        is_pkg = path.endswith("__init__.py")
        targets = set()
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                         for a in node.names]
            for name in names:
                if name.split(".")[0] != package:
                    continue
                while name not in mods and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name != mod:
                    targets.add(name)
        graph[mod] = targets
    return graph


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def subpackage(mod: str) -> str:
    """``megatron_ar.models.spec`` -> ``models``; ``megatron_ar.train`` -> ``train``; the root
    package itself -> ``""``."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer(sub: str) -> int:
    if sub == "":
        return -1  # megatron_ar/__init__.py: imports nothing, importable from anywhere
    return LAYERS.index(SAME_LAYER.get(sub, sub))


def package_graph(graph: dict) -> dict:
    out = {}
    for m, targets in graph.items():
        out.setdefault(subpackage(m), set()).update(
            subpackage(t) for t in targets if subpackage(t) != subpackage(m))
    return out


def layer_violations(graph: dict) -> list:
    bad = []
    for m, targets in sorted(graph.items()):
        for t in sorted(targets):
            if layer(subpackage(t)) > layer(subpackage(m)):
                bad.append(f"{m} ({subpackage(m)}) imports {t} ({subpackage(t)}), a higher layer")
    return bad


@pytest.fixture(scope="module")
def graph():
    return import_graph(REPO)


def test_every_subpackage_has_a_layer(graph):
    unknown = sorted({subpackage(m) for m in graph}
                     - set(LAYERS) - set(SAME_LAYER) - {""})
    assert not unknown, f"give these subpackages a layer in tests/test_layers.py: {unknown}"


def test_io_imports_nothing_else_of_megatron_ar(graph):
    outside = sorted(f"{m} -> {t}" for m, ts in graph.items() if subpackage(m) == "io"
                     for t in ts if subpackage(t) != "io")
    assert outside == []


def test_no_module_cycles(graph):
    assert cycles(graph) == []


def test_no_subpackage_cycles(graph):
    assert cycles(package_graph(graph)) == []


def test_no_upward_imports(graph):
    assert layer_violations(graph) == []


def test_checker_finds_planted_cycle_and_upward_import(tmp_path):
    """The checks above can fail: a planted tree with a function-level upward import that
    closes a cycle between two subpackages, and a module cycle through a relative import."""
    files = {
        "pkg/__init__.py": "",
        "pkg/io/__init__.py": "",
        "pkg/io/a.py": "def f():\n    from pkg.data import b  # inside a function\n",
        "pkg/data/__init__.py": "",
        "pkg/data/b.py": "from pkg.io.a import f\nfrom . import c\n",
        "pkg/data/c.py": "import pkg.data.b\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    g = import_graph(str(tmp_path), "pkg")
    assert g["pkg.io.a"] == {"pkg.data.b"}
    assert g["pkg.data.b"] == {"pkg.io.a", "pkg.data.c"}
    assert cycles(g) == [["pkg.data.b", "pkg.data.c", "pkg.io.a"]]
    assert cycles(package_graph(g)) == [["data", "io"]]
    assert layer_violations(g) == ["pkg.io.a (io) imports pkg.data.b (data), a higher layer"]
