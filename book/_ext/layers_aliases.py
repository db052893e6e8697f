"""Sphinx extension: let ``layers.Linear`` resolve to where it is documented, ``layers.linear.Linear``.

The package re-exports its public names at the top level (``layers.Linear``) while the
API reference documents each name in its own module page. When a reference to
``layers.<Name>`` is missing, look the object up and retry with its defining module.
"""

from __future__ import annotations

import importlib


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


def setup(app):
    app.connect("missing-reference", _resolve)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
