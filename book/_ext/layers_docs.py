"""Sphinx extension for the ``layers`` API reference.

1. Let ``layers.Linear`` resolve to where it is documented, ``layers.linear.Linear``.
   The package re-exports its public names at the top level while the API reference
   documents each name in its own module page. When a reference to ``layers.<Name>``
   is missing, look the object up and retry with its defining module.
2. Link every documented class and function back to the chapter that teaches it.
   Each module's docstring names its chapter notebook (``book/<chapter>.ipynb``); the
   first one named is appended to each entry as "Taught in <chapter>".
3. Keep class members in source order for classes of a package (``layers.losses.FocalLoss``
   is defined in ``layers/losses/focal.py`` but its ``__module__`` is the package, whose
   ``__init__.py`` has no source order for it): autodoc reads the order from the file that
   defines the class.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys

from sphinx.ext.autodoc import ClassDocumenter

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


def _defining_file(cls) -> str | None:
    # inspect.getsourcefile(cls) goes through cls.__module__ (the package): ask a method's code instead
    for value in vars(cls).values():
        func = inspect.unwrap(getattr(value, "__func__", getattr(value, "fget", value)))
        code = getattr(func, "__code__", None)
        if code is not None:
            return code.co_filename
    return None


class _SourceOrderClassDocumenter(ClassDocumenter):
    """A ClassDocumenter whose source analysis (member order) uses the defining file's module."""

    priority = ClassDocumenter.priority + 1

    def get_real_modname(self) -> str:
        path = _defining_file(self.object)
        for name, module in list(sys.modules.items()):
            if name.startswith("layers") and path is not None and getattr(module, "__file__", None) == path:
                return name
        return super().get_real_modname()

    def generate(self, more_content=None, real_modname=None, check_module=False, all_members=False):
        # automodule passes its own module as real_modname (the package); find the defining one instead
        super().generate(more_content=more_content, real_modname=None, check_module=check_module,
                         all_members=all_members)


def setup(app):
    app.add_autodocumenter(_SourceOrderClassDocumenter, override=True)
    app.connect("missing-reference", _resolve)
    app.connect("autodoc-process-docstring", _link_chapter)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
