"""Sphinx extension for the ``layers`` API reference.

1. Let ``layers.Linear`` resolve to where it is documented, ``layers.linear.Linear``.
   The package re-exports its public names at the top level while the API reference
   documents each name in its own module page. When a reference to ``layers.<Name>``
   is missing, look the object up and retry with its defining module.
2. Link every documented class and function back to the chapter that teaches it.
   Each module's docstring names its chapter notebook (``book/<chapter>.ipynb``); the
   first one named is appended to each entry as "Taught in <chapter>".
"""

from __future__ import annotations

import importlib
import re
import sys

_CHAPTER = re.compile(r"book/(\w+)\.ipynb")


def _resolve(app, env, node, contnode):
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("layers.") or target.count(".") != 1:
        return None
    obj = getattr(importlib.import_module("layers"), target.split(".", 1)[1], None)
    module = getattr(obj, "__module__", None)
    if obj is None or module is None or module == "layers":
        return None
    node["reftarget"] = f"{module}.{obj.__qualname__}"
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node.get("refdoc"), app.builder, node["reftype"], node["reftarget"],
                               node, contnode)


def _link_chapter(app, what, name, obj, options, lines):
    if what not in ("class", "function") or not name.startswith("layers."):
        return
    module = sys.modules.get(getattr(obj, "__module__", ""), None)
    found = _CHAPTER.search(getattr(module, "__doc__", None) or "")
    if found:
        lines += ["", f"Taught in the chapter :doc:`/book/{found.group(1)}`."]


def setup(app):
    app.connect("missing-reference", _resolve)
    app.connect("autodoc-process-docstring", _link_chapter)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
