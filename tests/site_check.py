"""Test the built website as a reader would: every page in headless Chromium.

Usage: ``python tests/site_check.py [--screenshots] [_build/html]`` (``make test`` and
``make site-test`` run it; ``make site-test SCREENSHOTS=1`` adds the screenshots).

For every HTML page of the built book this serves ``_build/html`` on a loopback
port, opens the page in Debian's Chromium (driven by Playwright, with every
non-loopback request blocked, so the site must work offline), and checks:

- no console errors and no failed or refused requests (>= 400 or blocked);
- every ``<img>`` has loaded (``naturalWidth > 0``);
- math has been typeset by MathJax wherever the page has math;
- every embedded widget view was drawn exactly once;
- every internal link points at an existing file and, if it has one, an existing anchor.

With ``--screenshots`` it also saves a full-page screenshot of each chapter under
``_build/screenshots/``, for a person to look at (no check reads them; they take about
half the time of the run, so the test leaves them out by default). It exits non-zero,
listing the problems, if any check failed.
"""

from __future__ import annotations

import functools
import http.server
import multiprocessing
import re
import shutil
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static", "_panels_static"}


class _Anchors(HTMLParser):
    """Collects ids (anchors) and hrefs of one page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])


@functools.cache
def _parse(path: Path) -> _Anchors:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser


def pages(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.html") if not SKIP_DIRS & set(p.relative_to(root).parts))


def check_links(root: Path, page: Path) -> list[str]:
    """Problems with the internal links of one page (missing files or anchors)."""
    problems = []
    for href in _parse(page).hrefs:
        parts = urlsplit(href)
        if parts.scheme or parts.netloc or href.startswith(("mailto:", "javascript:")):
            continue
        target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            problems.append(f"broken link {href!r}: no file {target}")
            continue
        if parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _parse(target).ids:
            problems.append(f"broken anchor {href!r}: no id {parts.fragment!r} in {target.name}")
    return problems


def _serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            # a page closed while one of its files was still being sent: the browser's choice, not a problem
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


CHECK_PAGE_JS = """() => {
  const imgs = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src);
  const mathNodes = document.querySelectorAll('.math, span.math, div.math').length;
  const typeset = document.querySelectorAll('mjx-container').length;
  const rawMath = [...document.querySelectorAll('.math')].filter(n => !n.querySelector('mjx-container')).length;
  const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length;
  // widget roots: drawn widget elements with no drawn widget above them
  const drawn = [...document.querySelectorAll('.jupyter-widgets')]
    .filter(n => !(n.parentElement && n.parentElement.closest('.jupyter-widgets'))).length;
  return {brokenImages: imgs, mathNodes, typeset, rawMath, views, drawn};
}"""


MATH_DONE_JS = """() => [...document.querySelectorAll('.math')].every(n => n.querySelector('mjx-container'))"""
WIDGETS_DRAWN_JS = """(views) => [...document.querySelectorAll('.jupyter-widgets')]
  .filter(n => !(n.parentElement && n.parentElement.closest('.jupyter-widgets'))).length >= views"""


def _check_pages(base: str, rels: list[str], screenshots: Path | None) -> list[tuple[str, list[str], str]]:
    """Open each page of ``rels`` in one headless Chromium; per page its problems and a summary line.
    With a ``screenshots`` folder, each chapter page is also saved there as a full-page PNG."""
    from playwright.sync_api import sync_playwright

    results = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        # Offline: anything that is not our own server is refused (and reported).
        context.route(re.compile(r"^(?!http://127\.0\.0\.1:).*"), lambda route: route.abort())
        for rel in rels:
            errors: list[str] = []
            page = context.new_page()
            page.on("console", lambda m, e=errors: e.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda exc, e=errors: e.append(f"page error: {exc}"))
            page.on("requestfailed", lambda r, e=errors: e.append(f"request failed: {r.url} ({r.failure})"))
            page.on("response", lambda r, e=errors: e.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
            page.goto(f"{base}/{rel}", wait_until="networkidle")
            state = page.evaluate(CHECK_PAGE_JS)
            if state["rawMath"]:
                try:                                 # MathJax typesets asynchronously: give it time
                    page.wait_for_function(MATH_DONE_JS, timeout=15000)
                except Exception:  # noqa: BLE001 -- a timeout: the state read next reports the raw math
                    pass
                state = page.evaluate(CHECK_PAGE_JS)
            if state["views"] and state["drawn"] < state["views"]:
                try:                                 # widgets render asynchronously: give them time
                    page.wait_for_function(WIDGETS_DRAWN_JS, arg=state["views"], timeout=15000)
                except Exception:  # noqa: BLE001 -- a timeout: the state read next reports the missing views
                    pass
                state = page.evaluate(CHECK_PAGE_JS)
            errors += [f"image not loaded: {src}" for src in state["brokenImages"]]
            if state["mathNodes"] and (state["typeset"] == 0 or state["rawMath"]):
                errors.append(f"math not rendered: {state['rawMath']} of {state['mathNodes']} math nodes untypeset")
            if state["views"] and state["drawn"] != state["views"]:
                errors.append(f"widgets: {state['views']} embedded views but {state['drawn']} drawn")
            if screenshots is not None and rel.startswith("book/") and not rel.startswith("book/api/"):
                shot = screenshots / (rel.replace("/", "_").removesuffix(".html") + ".png")
                page.screenshot(path=str(shot), full_page=True)
            status = "ok" if not errors else f"{len(errors)} problem(s)"
            results.append((rel, errors,
                            f"  {rel:45s} {status}  (math {state['typeset']}, widgets {state['drawn']}/{state['views']})"))
            page.close()
        browser.close()
    return results


def check_site(root: Path, screenshots: Path | None = None, workers: int = 3) -> list[str]:
    """Every check on every page (and, given a folder, a screenshot of each chapter); the pages
    are shared among ``workers`` browsers in their own processes (a page spends part of its
    time waiting for the network to go idle and for MathJax, so several browsers finish
    sooner even on two cores)."""
    problems: list[str] = []
    all_pages = pages(root)
    for page_path in all_pages:
        problems += [f"{page_path.relative_to(root)}: {p}" for p in check_links(root, page_path)]
    rels = [p.relative_to(root).as_posix() for p in all_pages]
    server, base = _serve(root)
    if screenshots is not None:
        screenshots.mkdir(parents=True, exist_ok=True)
    try:
        shares = [rels[k::workers] for k in range(workers) if rels[k::workers]]
        with ProcessPoolExecutor(len(shares), mp_context=multiprocessing.get_context("spawn")) as pool:
            results = [r for share in pool.map(_check_pages, [base] * len(shares), shares, [screenshots] * len(shares))
                       for r in share]
    finally:
        server.shutdown()
    for rel, errors, line in sorted(results):
        print(line)
        problems += [f"{rel}: {e}" for e in errors]
    return problems


def main(argv: list[str]) -> int:
    usage = "usage: python tests/site_check.py [--screenshots] [_build/html]"
    args = argv[1:]
    if args in (["-h"], ["--help"]):
        print(usage)
        return 0
    shots = "--screenshots" in args
    args = [a for a in args if a != "--screenshots"]
    if len(args) > 1 or any(a.startswith("-") for a in args):
        print(usage, file=sys.stderr)
        return 2
    root = Path(args[0] if args else "_build/html").resolve()
    if not (root / "index.html").exists():
        print(f"site_check: no built site at {root} (run `make book` first)")
        return 2
    if not Path(CHROMIUM).exists():
        print("site_check: Chromium not found (Debian: apt-get install chromium); browser checks skipped")
        return 0
    print(f"site_check: {len(pages(root))} pages under {root}")
    problems = check_site(root, root.parent / "screenshots" if shots else None)
    for p in problems:
        print("  PROBLEM", p)
    print(f"site_check: {'OK' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
