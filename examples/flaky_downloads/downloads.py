"""Tasks of the flaky-downloads example: fetch files from a mirror, verify each against the
SHA-256 checksum of a manifest and store it atomically. A failed attempt (an HTTP 503, a refused
connection, a checksum mismatch) raises, and Orbweaver retries the task up to `retries` times
before it fails the job with the last error.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import orbweaver as ow


class ChecksumMismatch(Exception):
    """The downloaded bytes are not the ones the manifest describes."""


@dataclass
class Downloaded:
    name: str
    size: int
    sha256: str


@ow.task(retries=3)
def download(url: str, sha256: str, dest_dir: str) -> Downloaded:
    """Download `url` into `dest_dir` if its SHA-256 is `sha256`. Writing to a temporary file and
    renaming it means a failed or repeated attempt never leaves a partial file behind."""
    name = Path(unquote(urlsplit(url).path)).name
    if not name:
        raise ValueError(f"{url!r} does not name a file")
    with urllib.request.urlopen(url, timeout=30) as response:  # raises HTTPError on a 503
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256.lower():
        raise ChecksumMismatch(
            f"{name}: expected sha256 {sha256[:16]}..., got {digest[:16]}... "
            f"({len(data)} bytes from {url})"
        )
    target = Path(dest_dir) / name
    tmp = target.with_name(f".{name}.{os.getpid()}.part")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return Downloaded(name, len(data), digest)


def build_graph(num_files: int, retries: int | None = None) -> ow.TaskGraph:
    """One download task per file; their outputs are the job outputs. Graph inputs: (url,
    sha256, dest_dir) per file. `retries` overrides the task's default of 3."""
    g = ow.TaskGraph()
    for _ in range(num_files):
        g.add(download, retries=retries)
    return g
