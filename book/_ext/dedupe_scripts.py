"""Sphinx extension: drop repeated ``<script>`` entries from each page (found by ``make site-test``).

sphinx-thebe registers its inline configuration script (``const THEBE_JS_URL = ...``)
once per ``env-before-read-docs`` event, which Jupyter Book fires more than once per
build, so every page declared the same ``const`` twice and the browser reported
"Identifier 'THEBE_JS_URL' has already been declared". Identical script entries
(same file or same inline body, same attributes) are kept once, in their first place.
"""

from __future__ import annotations


def _dedupe(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        filename = getattr(js, "filename", js) or ""          # None and "" both mean "inline"
        key = (str(filename), tuple(sorted((k, str(v)) for k, v in getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
