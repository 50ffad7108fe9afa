"""The package has no import circle: no birq_fairseq module imports, directly or through others,
a module that imports it back.

The graph is read from the source (``ast``), with every ``import`` statement of a module as an
edge, those inside functions included: a circle closed by an import inside a function (as
``cli`` -> ``probe`` -> ``cli`` once was) is still a circle, only hidden until the function runs.
A package's ``__init__`` is a node like any module; the implicit import of a module's parent
package is not an edge (Python always imports parents first, which is no circle).
"""

import ast
import os
import subprocess
import sys
from typing import Dict, List, Set

import birq_fairseq

PACKAGE_DIR = os.path.dirname(os.path.abspath(birq_fairseq.__file__))


def package_modules(package_dir: str) -> Dict[str, str]:
    """``{dotted module name: file}`` of every module of the package at ``package_dir``."""
    root = os.path.dirname(package_dir)
    modules = {}
    for folder, dirs, files in os.walk(package_dir):
        dirs[:] = [d for d in dirs if os.path.isfile(os.path.join(folder, d, "__init__.py"))]
        for name in files:
            if name.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, name[:-3]), root).split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = os.path.join(folder, name)
    return modules


def imported_modules(module: str, path: str, modules: Dict[str, str]) -> Set[str]:
    """The package's modules that ``module`` (file ``path``) names in any import statement."""
    is_package = os.path.basename(path) == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level - 1 packages
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
    return {name for name in found if name in modules and name != module}


def import_circles(package_dir: str) -> List[List[str]]:
    """Strongly connected components (> 1 module) of the package's import graph, each sorted."""
    modules = package_modules(package_dir)
    graph = {m: imported_modules(m, path, modules) for m, path in modules.items()}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    circles = []

    def visit(m: str) -> None:  # Tarjan's algorithm
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for n in graph[m]:
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on_stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            component = []
            while True:
                n = stack.pop()
                on_stack.discard(n)
                component.append(n)
                if n == m:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return circles


def test_birq_fairseq_has_no_import_circle():
    modules = package_modules(PACKAGE_DIR)
    assert {"birq_fairseq.cli", "birq_fairseq.loading", "birq_fairseq.probe"} <= set(modules)
    assert import_circles(PACKAGE_DIR) == []


def test_the_check_finds_a_circle_closed_inside_a_function(tmp_path):
    """The shape of the old circle: cli imported probe to register it, probe imported cli's loader."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from . import sub  # noqa\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "loading.py").write_text("import os\n")
    (package / "cli.py").write_text("def build_parser():\n    from pkg import probe\n")
    (package / "probe.py").write_text("from .sub import helpers\n\n"
                                      "def align():\n    from pkg.cli import build_parser\n")
    (package / "sub" / "helpers.py").write_text("from .. import loading\n")
    assert import_circles(str(package)) == [["pkg.cli", "pkg.probe"]]
    (package / "probe.py").write_text("from .sub import helpers\nfrom pkg.loading import os\n")
    assert import_circles(str(package)) == []
    (package / "sub" / "helpers.py").write_text("from ..probe import os\n")  # probe -> sub.helpers -> probe
    assert import_circles(str(package)) == [["pkg.probe", "pkg.sub.helpers"]]


def test_every_module_imports_in_a_fresh_interpreter():
    """The graph above is of real modules: each one imports (all of them, in one new process)."""
    names = sorted(package_modules(PACKAGE_DIR))
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
