"""The shape of lib/: packages layered in pipeline order, no import cycles, small modules, nothing done on import."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

from lib.paths import LIB, ROOT

# Each package (or top-level module) may import only from those before it.
ORDER = ["errors", "paths", "files", "settings", "emotions", "models", "text", "activations", "stats", "geometry",
         "interventions", "finetune", "head_strength", "synthetic", "steering", "phases", "report", "pipeline"]
ALIASES = {"extract", "weights"}  # deprecated command-line names, kept for one release: they call down
MAX_LINES = 400


def _module(path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports() -> dict[str, set[str]]:
    """Module -> the lib modules it imports (at any depth of the file: lazy imports count)."""
    out = {}
    for path in sorted(LIB.rglob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lib":
                found |= {f"lib.{a.name}" for a in node.names} if node.module == "lib" else {node.module}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "lib"}
        out[_module(path)] = found
    return out


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "lib"


def test_packages_import_only_earlier_stages():
    bad = []
    for module, targets in _imports().items():
        src = _part(module)
        if src in ALIASES or src == "lib":
            continue
        bad += [f"{module} -> {t}" for t in targets
                if _part(t) != src and (_part(t) not in ORDER or ORDER.index(_part(t)) > ORDER.index(src))]
    assert not bad, f"imports against the pipeline order {ORDER}: {bad}"
    assert set(ORDER) | ALIASES | {"lib"} >= {_part(m) for m in _imports()}, "a new package needs a place in ORDER"


def test_no_import_cycles_between_modules():
    graph = _imports()
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack + [node, nxt])}")
            if nxt in graph and not state.get(nxt):
                visit(nxt, stack + [node])
        state[node] = 2

    for node in graph:
        if not state.get(node):
            visit(node, [])


def test_modules_are_small():
    big = {_module(p): n for p in LIB.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_importing_lib_changes_nothing_in_the_environment():
    keys = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "HF_HUB_DISABLE_PROGRESS_BARS"]
    script = (
        "import importlib, os, pkgutil, warnings, lib\n"
        "before = len(warnings.filters)\n"
        "names = [m.name for m in pkgutil.walk_packages(lib.__path__, 'lib.') if not m.name.endswith('__main__')]\n"
        "for name in names: importlib.import_module(name)\n"
        "ours = [f for f in warnings.filters[:len(warnings.filters) - before] if f[1] is not None\n"
        "        and any(w in f[1].pattern for w in ('IProgress', 'Zarr'))]\n"
        f"assert not ours, ours\n"
        f"print(len(names), [k for k in {keys!r} if k in os.environ])\n")
    env = {k: v for k, v in os.environ.items() if k not in keys}
    out = subprocess.run([sys.executable, "-c", script], env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split(maxsplit=1)
    assert int(out[0]) > 50 and out[1].strip() == "[]", f"importing lib set {out[1].strip()}"
    from lib.settings import apply_hub_policy  # the policy is applied by the code that needs it

    script = "from lib.settings import apply_hub_policy; import os; apply_hub_policy(); print(os.environ['HF_HUB_OFFLINE'])"
    out = subprocess.run([sys.executable, "-c", script], env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "1" and apply_hub_policy.__module__ == "lib.settings"
