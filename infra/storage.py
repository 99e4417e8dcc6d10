"""Content-addressed artifact store: files named by their sha256, written by streaming.

Uploads are staged: streamed to `root/tmp`, validated there, and only then renamed into
place (`commit`). A staged file that is not committed is deleted when its `staged()` block
ends, so rejected and interrupted uploads leave nothing behind; `sweep` removes what a
killed process left in `tmp` and artifacts no row references.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

CHUNK = 1 << 20
HEX = frozenset("0123456789abcdef")


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file exceeds the limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class StoredArtifact:
    sha256: str
    size: int
    path: Path


class ArtifactStore:
    """Files under `root/ab/abcdef…`; writes are atomic (temp file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in HEX for c in sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256

    @contextmanager
    def staged(self, stream: IO[bytes], *, max_bytes: int) -> Iterator[StoredArtifact]:
        """The upload in a temp file (its path in the result); deleted unless committed."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(max_bytes)
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            yield StoredArtifact(digest.hexdigest(), size, Path(tmp_name))
        finally:
            Path(tmp_name).unlink(missing_ok=True)  # gone already when committed

    def commit(self, staged: StoredArtifact) -> StoredArtifact:
        """Move a validated staged file into the store under its digest."""
        final = self.path(staged.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, final)
        return StoredArtifact(staged.sha256, staged.size, final)

    def save_stream(self, stream: IO[bytes], *, max_bytes: int) -> StoredArtifact:
        """Store trusted bytes (rendered pictures) without a validation step."""
        with self.staged(stream, max_bytes=max_bytes) as staged:
            return self.commit(staged)

    def read_bytes(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def sweep(self, referenced: set[str], older_than: float) -> list[Path]:
        """Delete temp files and unreferenced artifacts last written over `older_than` s ago.

        The grace period covers an upload between its rename and its row's commit, and a
        worker between storing a picture and saving the result that names it.
        """
        cutoff = time.time() - older_than
        removed: list[Path] = []
        for path in self._files():
            is_tmp = path.parent == self.tmp_dir
            if not is_tmp and path.name in referenced:
                continue
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                continue  # another sweeper or a commit moved it
        return removed

    def _files(self) -> Iterator[Path]:
        if self.tmp_dir.is_dir():
            yield from (p for p in self.tmp_dir.iterdir() if p.is_file())
        for prefix in self.root.iterdir() if self.root.is_dir() else ():
            if len(prefix.name) == 2 and set(prefix.name) <= HEX and prefix.is_dir():
                yield from (p for p in prefix.iterdir() if p.is_file() and len(p.name) == 64)
