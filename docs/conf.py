"""Sphinx configuration of the ngdjax documentation.

Build from the repository root (warnings are errors, as in CI)::

  sphinx-build -W -b html docs docs/_build/html
"""

import importlib
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

project = "ngdjax"
author = "the ngdjax authors"
copyright = "the ngdjax authors"  # noqa: A001 - Sphinx's name

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the docstrings say the shapes and types
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False

html_theme = "alabaster"
html_static_path = []
html_theme_options = {"description": "Natural gradient descent in JAX"}

# Every public name must be on an API page: ngdjax.__all__ and the
# __all__ of each sub-namespace. A name missing from docs/api/ stops the
# build (with -W), so the reference cannot fall behind the code.
NAMESPACES = ("ngdjax", "ngdjax.optim", "ngdjax.data", "ngdjax.diagnostics",
              "ngdjax.kernels", "ngdjax.linearized", "ngdjax.losses",
              "ngdjax.models", "ngdjax.parallel", "ngdjax.experiment")


def _check_api_coverage(app):
  text = "\n".join(p.read_text() for p in (ROOT / "docs" / "api").glob(
      "*.rst"))
  missing = []
  for name in NAMESPACES:
    module = importlib.import_module(name)
    for member in module.__all__:
      if member == "__version__" or (
          member in NAMESPACES and f"{name}.{member}" in NAMESPACES):
        continue
      if f"{name}.{member}" not in text and not (
          name == "ngdjax" and f":: {member}\n" in text):
        missing.append(f"{name}.{member}")
  if missing:
    raise RuntimeError(f"docs/api/ does not document {missing}")


_LITERAL_AFTER = re.compile(r"(``[^`]+``)(?=\w)")


def _plain_text_docstring(app, what, name, obj, options, lines):
  """Reads the docstrings' plain-text habits as reStructuredText.

  A paragraph that ends with ``:`` before an indented block introduces
  code (``::``); an inline literal followed by a letter (a plural such as
  Model-s written with the literal) gets an escaped space after it.
  """
  del app, what, name, obj, options
  for i, line in enumerate(lines):
    lines[i] = _LITERAL_AFTER.sub(r"\1\\ ", line)
  for i in range(len(lines) - 2):
    line, blank, body = lines[i], lines[i + 1], lines[i + 2]
    indent = len(line) - len(line.lstrip())
    if (line.rstrip().endswith(":") and not line.rstrip().endswith("::")
        and not line.lstrip().startswith(":") and not blank.strip()
        and body.strip() and len(body) - len(body.lstrip()) > indent):
      lines[i] = line.rstrip() + ":"


def _joined_argument_names(app, what, name, obj, options, lines):
  """Joins an ``Args:`` entry that lists several names over lines.

  ``model, damping, ...,`` continued on deeper-indented lines up to the
  ``: as in kfac`` becomes one line, so napoleon reads one entry. Runs
  before napoleon.
  """
  del app, what, name, obj, options
  i, in_args, indent = 0, False, 0
  while i < len(lines):
    line = lines[i]
    stripped = line.strip()
    if stripped in ("Args:", "Arguments:", "Parameters:"):
      in_args, indent = True, len(line) - len(line.lstrip()) + 2
    elif in_args and stripped and len(line) - len(line.lstrip()) < indent:
      in_args = False
    elif (in_args and len(line) - len(line.lstrip()) == indent
          and ":" not in line and stripped.endswith(",")):
      j = i + 1
      while j < len(lines) and ":" not in lines[j - 1][indent:]:
        j += 1
      lines[i:j] = [" ".join(part.strip() for part in lines[i:j])]
      lines[i] = " " * indent + lines[i]
    i += 1


def setup(app):
  app.connect("builder-inited", _check_api_coverage)
  app.connect("autodoc-process-docstring", _joined_argument_names,
              priority=400)
  app.connect("autodoc-process-docstring", _plain_text_docstring)
