"""Fetch the site's JavaScript from the npm registry with Python alone (no Node.js).

The built site serves its own scripts, so its widgets and math work offline and
load nothing from a CDN:

- ``@jupyter-widgets/html-manager`` (``dist/``): draws the saved ipywidgets state;
- ``requirejs`` (``require.js``): the module loader the HTML manager needs;
- ``mathjax`` (``es5/``): typesets the math.

For each package this reads the registry's metadata for the pinned version
(``<registry>/<name>/<version>``), downloads the tarball it names (the file
``npm pack`` would download), checks it against the metadata's ``integrity``
hash (Subresource-Integrity form, ``sha512-<base64>``), and unpacks the wanted
part into ``book/_static/vendor/``. The registry is the one npm itself would
use: ``$NPM_CONFIG_REGISTRY`` if set, else the public npm registry.

Run by ``make book``::

    python book/_ext/fetch_vendor.py book/_static/vendor
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path

#: ``(npm name, version, path inside the package, path under the vendor folder)``
PACKAGES = [
    ("@jupyter-widgets/html-manager", "1.0.15", "package/dist", "html-manager"),
    ("requirejs", "2.3.7", "package/require.js", "require.js"),
    ("mathjax", "3.2.2", "package/es5", "mathjax"),
]

DEFAULT_REGISTRY = "https://registry.npmjs.org"


def registry() -> str:
    """The registry base URL npm would use (``$NPM_CONFIG_REGISTRY`` overrides the default)."""
    url = os.environ.get("NPM_CONFIG_REGISTRY") or os.environ.get("npm_config_registry") or DEFAULT_REGISTRY
    return url.rstrip("/")


def _get(url: str, timeout: float = 120.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:    # noqa: S310 (https URL built above)
        return response.read()


def metadata_url(name: str, version: str, base: str | None = None) -> str:
    """``<registry>/<name>/<version>``, with a scoped name's ``/`` escaped as npm does."""
    return f"{base or registry()}/{urllib.parse.quote(name, safe='@')}/{version}"


def check_integrity(data: bytes, integrity: str) -> None:
    """Raise ``ValueError`` unless ``data`` matches an SRI string such as ``sha512-<base64>``."""
    algorithm, _, expected = integrity.partition("-")
    if algorithm not in ("sha512", "sha384", "sha256"):
        raise ValueError(f"unsupported integrity algorithm {algorithm!r}")
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise ValueError(f"integrity mismatch: expected {algorithm}-{expected}, got {algorithm}-{actual}")


def extract(tarball: bytes, member: str, dest: Path) -> None:
    """Unpack ``member`` (a file, or a folder and everything under it) of a ``.tgz`` to ``dest``."""
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        found = False
        for info in tar.getmembers():
            if not (info.name == member or info.name.startswith(member + "/")):
                continue
            if not (info.isfile() or info.isdir()):
                continue                                     # no links or devices from a tarball
            relative = info.name[len(member):].lstrip("/")
            target = (dest / relative) if relative else dest
            if ".." in Path(relative).parts:
                raise ValueError(f"unsafe path in tarball: {info.name}")
            found = True
            if info.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
        if not found:
            raise ValueError(f"{member!r} is not in the tarball")


def fetch(vendor: Path) -> None:
    """Download, verify and unpack every package of :data:`PACKAGES` into ``vendor``."""
    if vendor.exists():
        shutil.rmtree(vendor)
    vendor.mkdir(parents=True)
    for name, version, member, target in PACKAGES:
        meta = json.loads(_get(metadata_url(name, version)))
        dist = meta["dist"]
        tarball = _get(dist["tarball"])
        check_integrity(tarball, dist["integrity"])
        extract(tarball, member, vendor / target)
        print(f"fetched {name}@{version} ({len(tarball) / 1e6:.1f} MB, {dist['integrity'][:15]}... ok)")
    (vendor / ".done").touch()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python book/_ext/fetch_vendor.py VENDOR_DIR")
    fetch(Path(sys.argv[1]))
