"""Where an export goes: a local directory or an object store URL, through pyarrow.fs.

A destination writes part files and, last, a manifest. A loader that sees a manifest sees
complete files: object stores publish an object whole at the end of its upload, and a local
manifest is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from syncsvc.errors import ConfigError, StoreError

MANIFEST = "manifest.json"


def _pyarrow_fs() -> Any:
    try:
        import pyarrow.fs as pafs
    except ImportError as exc:  # the export extra is optional
        raise ConfigError(
            "Parquet export needs pyarrow: pip install 'syncsvc[export]'", setting="export"
        ) from exc
    return pafs


def display(url: str) -> str:
    """The destination as it may be shown: no credentials, no query string."""
    parsed = urllib.parse.urlsplit(url)
    if not parsed.scheme or len(parsed.scheme) == 1:  # a path (or a Windows drive letter)
        return url
    host = parsed.hostname or ""
    return urllib.parse.urlunsplit((parsed.scheme, host, parsed.path, "", ""))


@dataclass(slots=True)
class Destination:
    """A filesystem and the base path inside it; `shown` is safe to log."""

    fs: Any
    base: str
    shown: str
    local: bool

    @classmethod
    def open(cls, target: str) -> Destination:
        """`target` is a directory path, `file://...`, or an object store URL such as
        `s3://bucket/prefix` (pyarrow's URI options, e.g. `?endpoint_override=host:port`,
        are honoured; credentials come from the usual AWS environment and files)."""
        pafs = _pyarrow_fs()
        scheme = urllib.parse.urlsplit(target).scheme
        try:
            if not scheme or len(scheme) == 1:
                path = os.path.abspath(target)
                return cls(pafs.LocalFileSystem(), path, path, local=True)
            fs, base = pafs.FileSystem.from_uri(target)
        except (ValueError, OSError) as exc:
            # pyarrow's message names the problem (unknown scheme, bad option), never a secret
            # it was not given: the URL's credentials are not echoed.
            raise ConfigError(f"--to {display(target)}: {_first_line(exc)}", setting="to") from exc
        return cls(
            fs, base.rstrip("/"), display(target), local=isinstance(fs, pafs.LocalFileSystem)
        )

    @contextlib.contextmanager
    def translating_errors(self, directory: str) -> Iterator[None]:
        """I/O failures of the filesystem layer (pyarrow raises OSError subclasses) become one
        StoreError naming the destination."""
        try:
            yield
        except OSError as exc:
            raise StoreError(f"cannot write {self.shown}/{directory}: {_first_line(exc)}") from exc

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def makedirs(self, *parts: str) -> None:
        try:
            self.fs.create_dir(self.path(*parts), recursive=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create {self.shown}/{'/'.join(parts)}: {_first_line(exc)}"
            ) from exc

    def open_output(self, *parts: str) -> HashingStream:
        try:
            stream = self.fs.open_output_stream(self.path(*parts))
        except OSError as exc:
            raise StoreError(
                f"cannot write {self.shown}/{'/'.join(parts)}: {_first_line(exc)}"
            ) from exc
        return HashingStream(stream)

    def sync(self, *parts: str) -> None:
        """On a local disk, make a closed file durable (before a manifest can name it)."""
        if self.local:
            with open(self.path(*parts), "rb") as f:
                os.fsync(f.fileno())

    def write_manifest(self, directory: str, manifest: dict[str, Any]) -> None:
        """Write the manifest last and atomically (rename on a local disk, one PUT elsewhere)."""
        body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        final = self.path(directory, MANIFEST)
        target = final + ".tmp" if self.local else final
        try:
            with self.fs.open_output_stream(target) as f:
                f.write(body)
            if self.local:
                self.sync(directory, MANIFEST + ".tmp")  # durable before it becomes visible
                self.fs.move(target, final)
        except OSError as exc:
            raise StoreError(
                f"cannot write the manifest in {self.shown}/{directory}: {exc}"
            ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class HashingStream:
    """A write-only file object that counts and hashes what passes through (the manifest's
    checksum without reading the file back, which on an object store is a download)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._sha = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._sha.update(view)
        self.size += view.nbytes
        self._stream.write(data)
        return view.nbytes

    def flush(self) -> None:
        self._stream.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
            self.closed = True

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()
