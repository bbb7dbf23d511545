"""The package's shape: no public name shadows a module, no import cycles.

Implementation modules live in ``ngdjax/_src``; the public namespaces are
re-export modules. These tests read the source files (``ast``), so they fail
when a new module imports its way into a cycle or hides an import inside a
function to dodge one.
"""

import ast
import importlib
import pathlib
import types
from unittest import mock

import pytest

import ngdjax

SRC = pathlib.Path(ngdjax.__file__).parent / "_src"
PUBLIC_MODULES = ("data", "diagnostics", "kernels", "linearized", "losses",
                  "models", "optim", "parallel", "precision")


def _module_name(path: pathlib.Path) -> str:
  rel = path.relative_to(SRC.parent.parent).with_suffix("")
  parts = list(rel.parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _imports(path: pathlib.Path) -> list[tuple[str, bool]]:
  """``(imported ngdjax module, at top level?)`` for each import in a file."""
  tree = ast.parse(path.read_text())
  top = set(map(id, tree.body))
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and (
        node.module.startswith("ngdjax")):
      names = [f"{node.module}.{a.name}" for a in node.names]
      found += [(n, id(node) in top) for n in [node.module, *names]]
    elif isinstance(node, ast.Import):
      found += [(a.name, id(node) in top) for a in node.names
                if a.name.startswith("ngdjax")]
  return found


def _src_graph() -> dict[str, set[str]]:
  files = {_module_name(p): p for p in SRC.rglob("*.py")}
  return {
      name: {m for m, _ in _imports(path) if m in files and m != name}
      for name, path in files.items()
  }


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_modules_import_as_modules(name):
  module = importlib.import_module(f"ngdjax.{name}")
  assert isinstance(module, types.ModuleType)
  assert getattr(ngdjax, name) is module
  for public in module.__all__:
    assert hasattr(module, public), f"ngdjax.{name}.{public}"


def test_functions_do_not_shadow_modules():
  # ngdjax.jacobian and ngdjax.forster are functions; no module of that
  # name may exist next to them.
  pkg = SRC.parent
  for name in ngdjax.__all__:
    value = getattr(ngdjax, name)
    if not isinstance(value, types.ModuleType):
      assert not (pkg / f"{name}.py").exists(), name
      assert not (pkg / name).is_dir(), name


def test_mock_patch_reaches_implementation_modules():
  target = "ngdjax._src.forster.isotropy_error"
  with mock.patch(target) as patched:
    assert importlib.import_module("ngdjax._src.forster").isotropy_error is (
        patched)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """A cycle of ``graph`` as a path ``[a, b, ..., a]``, or ``None``."""
  state = {}

  def visit(node, path):
    state[node] = "open"
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt, path + [nxt])
        if found:
          return found
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node, [node])
      if found:
        return found
  return None


def test_src_import_graph_has_no_cycle():
  assert _find_cycle(_src_graph()) is None


def test_cycle_detector_finds_a_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"b", "d"}, "d": set()}
  assert _find_cycle(graph) == ["b", "c", "b"]
  assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_src_has_no_function_level_ngdjax_imports():
  # Imports inside functions are how cycles get hidden.
  late = [
      (str(p.relative_to(SRC)), m)
      for p in SRC.rglob("*.py")
      for m, at_top in _imports(p)
      if not at_top
  ]
  assert not late, late
