"""The package's shape: no import cycle inside efficonv, Flax-free pure-JAX parts, experiments on public names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _modules(package: str) -> dict[str, Path]:
  return {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(path: Path, name: str, is_package: bool, known: set[str] | frozenset[str] = frozenset()) -> set[str]:
  """Every module ``path`` imports, at any depth (function-level imports included).

  ``from pkg import sub`` with ``pkg.sub`` a module in ``known`` is an import of ``pkg.sub`` only.
  """
  found: set[str] = set()
  base = name if is_package else name.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        anchor = base.split(".")
        anchor = anchor[: len(anchor) - node.level + 1]
        module = ".".join([*anchor, node.module] if node.module else anchor)
      else:
        module = node.module or ""
      for alias in node.names:
        found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module)
  return found


def _graph(package: str) -> dict[str, set[str]]:
  modules = _modules(package)
  graph = {}
  for name, path in modules.items():
    deps = _imports(path, name, path.name == "__init__.py", set(modules))
    graph[name] = {d for d in deps if d in modules and d != name}
  return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    stack.append(node)
    for dep in sorted(graph[node]):
      if state.get(dep) == 1:
        return stack[stack.index(dep) :] + [dep]
      if dep not in state and (found := visit(dep)):
        return found
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state and (found := visit(node)):
      return found
  return None


def test_the_cycle_finder_finds_a_cycle() -> None:
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_efficonv() -> None:
  """Edges are the modules each file names in an import, lazy (function-level) imports included.

  A package's ``__init__`` re-exporting its submodules is an edge from the package to them; a submodule's
  implicit import of its parent package is not one (every submodule would then be in a cycle).
  """
  graph = _graph("efficonv")
  assert len(graph) > 30
  assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_pure_jax_parts_import_without_flax() -> None:
  code = (
    "import sys; sys.modules['flax'] = None\n"  # any `import flax` now raises ImportError
    "import efficonv, efficonv.kernels, efficonv.formats, efficonv.planning, efficonv.decompose, efficonv.rank\n"
    "import efficonv.schemes, jax\n"
    "f = efficonv.CP.init(jax.random.key(0), 4, 4, 3, rank=2)\n"
    "print(f.conv(jax.numpy.ones((1, 6, 6, 4))).shape, efficonv.schemes.get('tt').format.__name__)\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["(1,", "6,", "6,", "4)", "TT"]


def test_flax_parts_load_on_first_use() -> None:
  code = "import sys, efficonv; assert 'flax' not in sys.modules; efficonv.nnx.CPConv; print('flax' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr


def _private_efficonv_imports(path: Path) -> list[str]:
  bad = []
  for node in ast.walk(ast.parse(path.read_text())):
    names: list[str] = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names if a.name.startswith("efficonv")]
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("efficonv"):
      names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
    bad.extend(n for n in names if any(part.startswith("_") for part in n.split(".")))
  return bad


@pytest.mark.parametrize("package", ["experiments"])
def test_experiments_use_only_public_efficonv_names(package: str) -> None:
  bad = {
    str(p.relative_to(ROOT)): found for p in (ROOT / package).rglob("*.py") if (found := _private_efficonv_imports(p))
  }
  assert not bad


def test_the_private_import_finder_finds_one(tmp_path: Path) -> None:
  path = tmp_path / "m.py"
  path.write_text("from efficonv.formats import _base\nfrom efficonv.typing import Array\n")
  assert _private_efficonv_imports(path) == ["efficonv.formats._base"]


def test_experiments_top_level_has_at_most_six_plain_modules() -> None:
  plain = [p.name for p in (ROOT / "experiments").iterdir() if p.suffix == ".py"]
  assert len(plain) <= 6, sorted(plain)


def test_library_never_imports_experiments() -> None:
  for name, path in _modules("efficonv").items():
    deps = _imports(path, name, path.name == "__init__.py")
    assert not any(d == "experiments" or d.startswith("experiments.") for d in deps), name
