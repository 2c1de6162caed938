"""Blob transfers a node agent performs: resource-file downloads and output-file uploads.

Like the real node agent, only the URLs in the task definition are used (SAS URLs from the
client); the emulator holds no storage key for this. Only loopback hosts are contacted: a URL
pointing anywhere else fails the transfer instead of leaving the machine.
"""
from __future__ import annotations

import ipaddress
import os
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

TIMEOUT = 30.0


class TransferError(Exception):
    """A failed transfer; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise TransferError(f"refusing to contact non-loopback host {host!r} (the emulator stays on 127.0.0.1)")


def _open(req: urllib.request.Request):
    _check_loopback(req.full_url)
    try:
        return urllib.request.urlopen(req, timeout=TIMEOUT)  # noqa: S310 - loopback only, checked above
    except urllib.error.HTTPError as e:
        raise TransferError(f"{req.get_method()} {urlsplit(req.full_url).path} -> HTTP {e.code}", e.code) from None
    except urllib.error.URLError as e:
        raise TransferError(f"{req.get_method()} {urlsplit(req.full_url).path} failed: {e.reason}") from None


def download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _open(urllib.request.Request(url)) as resp, open(dest, "wb") as f:
        while chunk := resp.read(1 << 20):
            f.write(chunk)


def _with_query(url: str, extra: str) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def blob_url(container_url: str, blob_name: str) -> str:
    parts = urlsplit(container_url)
    path = parts.path.rstrip("/") + "/" + quote(blob_name, safe="/")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def list_blobs(container_url: str, prefix: str = "") -> list[str]:
    names: list[str] = []
    marker = ""
    while True:
        extra = "restype=container&comp=list"
        if prefix:
            extra += "&prefix=" + quote(prefix, safe="")
        if marker:
            extra += "&marker=" + quote(marker, safe="")
        with _open(urllib.request.Request(_with_query(container_url, extra))) as resp:
            root = ET.fromstring(resp.read())
        names += [b.findtext("Name") or "" for b in root.iter("Blob")]
        marker = root.findtext("NextMarker") or ""
        if not marker:
            return names


def download_container(container_url: str, prefix: str, dest_dir: Path) -> list[Path]:
    """Download every blob under ``prefix``, keeping blob names as relative paths."""
    out = []
    for name in list_blobs(container_url, prefix):
        target = dest_dir / name
        download(blob_url(container_url, name), target)
        out.append(target)
    return out


def upload(container_url: str, blob_name: str, source: Path, headers: dict[str, str] | None = None) -> None:
    data = source.read_bytes()
    req = urllib.request.Request(blob_url(container_url, blob_name), data=data, method="PUT")
    req.add_header("x-ms-blob-type", "BlockBlob")
    req.add_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with _open(req) as resp:
        resp.read()


def file_mode(path: Path) -> str:
    return oct(os.stat(path).st_mode & 0o777777)[2:].rjust(6, "0")
