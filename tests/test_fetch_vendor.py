"""The site's script fetcher (book/_ext/fetch_vendor.py): integrity check and safe unpacking.

No network here: a tarball is built in memory, as the npm registry would serve one.
"""

import base64
import hashlib
import importlib.util
import io
import tarfile
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "fetch_vendor", Path(__file__).resolve().parents[1] / "book" / "_ext" / "fetch_vendor.py")
fetch_vendor = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch_vendor)


def _tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def test_integrity_accepts_the_right_hash_and_rejects_a_changed_byte():
    data = _tarball({"package/require.js": b"define();"})
    fetch_vendor.check_integrity(data, _sri(data))
    with pytest.raises(ValueError, match="integrity mismatch"):
        fetch_vendor.check_integrity(data[:-1] + bytes([data[-1] ^ 1]), _sri(data))
    with pytest.raises(ValueError, match="unsupported integrity algorithm"):
        fetch_vendor.check_integrity(data, "md5-abc")


def test_extract_a_folder_and_a_single_file(tmp_path):
    data = _tarball({"package/dist/a.js": b"a", "package/dist/fonts/b.woff": b"b",
                     "package/require.js": b"r", "package/README.md": b"x"})
    fetch_vendor.extract(data, "package/dist", tmp_path / "html-manager")
    assert (tmp_path / "html-manager" / "a.js").read_bytes() == b"a"
    assert (tmp_path / "html-manager" / "fonts" / "b.woff").read_bytes() == b"b"
    assert not (tmp_path / "html-manager" / "README.md").exists()
    fetch_vendor.extract(data, "package/require.js", tmp_path / "require.js")
    assert (tmp_path / "require.js").read_bytes() == b"r"
    with pytest.raises(ValueError, match="not in the tarball"):
        fetch_vendor.extract(data, "package/missing", tmp_path / "m")


def test_metadata_url_escapes_a_scoped_name():
    url = fetch_vendor.metadata_url("@jupyter-widgets/html-manager", "1.0.15", base="https://r.example")
    assert url == "https://r.example/@jupyter-widgets%2Fhtml-manager/1.0.15"
