"""download.fetch / verify: atomic, verified, one-line errors; urllib is faked (no network)."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from metakit.datasets.download import fetch, verify
from metakit.errors import MetakitError

URL = "https://example.org/data/file.bin"
DATA = b"metakit test payload " * 1000
SHA = hashlib.sha256(DATA).hexdigest()


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, length: bool = True) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))} if length else {}


@pytest.fixture(autouse=True)
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METAKIT_OFFLINE", raising=False)


def serve(monkeypatch: pytest.MonkeyPatch, data: bytes | Exception, length: bool = True) -> list[str]:
    """Replace urlopen: return ``data`` (or raise it); record requested URLs."""
    requested: list[str] = []

    def urlopen(req: urllib.request.Request, timeout: float | None = None) -> FakeResponse:
        requested.append(req.full_url)
        if isinstance(data, Exception):
            raise data
        return FakeResponse(data, length)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("length", [True, False])
def test_download_places_verified_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, length: bool) -> None:
    requested = serve(monkeypatch, DATA, length)
    dest = tmp_path / "sub" / "file.bin"
    assert fetch(URL, dest, SHA, what="test file") == dest
    assert dest.read_bytes() == DATA
    assert requested == [URL]
    assert leftovers(dest.parent) == ["file.bin"]


def test_checksum_mismatch_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve(monkeypatch, DATA + b"tampered")
    dest = tmp_path / "file.bin"
    with pytest.raises(MetakitError, match="checksum mismatch") as exc:
        fetch(URL, dest, SHA, what="test file")
    msg = one_line(exc)
    assert URL in msg and "test file" in msg
    assert leftovers(tmp_path) == []  # neither the file nor a temporary sibling


@pytest.mark.parametrize(
    "error",
    [urllib.error.URLError("Name or service not known"), TimeoutError("timed out"), ConnectionResetError("reset")],
)
def test_network_error_names_url_and_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    serve(monkeypatch, error)
    dest = tmp_path / "file.bin"
    with pytest.raises(MetakitError, match="could not download") as exc:
        fetch(URL, dest, SHA, what="test file")
    msg = one_line(exc)
    assert URL in msg and str(dest) in msg
    assert leftovers(tmp_path) == []


def test_existing_file_is_verified_not_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requested = serve(monkeypatch, b"should not be fetched")
    dest = tmp_path / "file.bin"
    dest.write_bytes(DATA)
    assert fetch(URL, dest, SHA, what="test file") == dest
    dest.write_bytes(b"a different file placed by hand")
    with pytest.raises(MetakitError, match="checksum mismatch") as exc:
        fetch(URL, dest, SHA, what="test file")
    assert str(dest) in one_line(exc)
    assert fetch(URL, dest, None, what="test file") == dest  # no checksum: accepted as is
    assert requested == []


def test_offline_flag_refuses_to_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requested = serve(monkeypatch, DATA)
    monkeypatch.setenv("METAKIT_OFFLINE", "1")
    dest = tmp_path / "file.bin"
    with pytest.raises(MetakitError, match="METAKIT_OFFLINE") as exc:
        fetch(URL, dest, SHA, what="test file")
    msg = one_line(exc)
    assert URL in msg and str(dest) in msg
    assert requested == [] and leftovers(tmp_path) == []
    dest.write_bytes(DATA)  # a file placed by hand still works offline
    assert fetch(URL, dest, SHA, what="test file") == dest


def test_verify(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA)
    verify(path, SHA, what="f")
    verify(path, None, what="f")
    with pytest.raises(MetakitError, match="checksum mismatch") as exc:
        verify(path, "0" * 64, what="f")
    assert str(path) in one_line(exc)
