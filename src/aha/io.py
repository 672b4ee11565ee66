"""Atomic file writes and JSONL reading with located errors. Nothing already written is lost:
every output is written to a temporary name in the same folder and renamed into place."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from aha.errors import AhaError


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, row) for each non-blank line; malformed JSON is an AhaError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise AhaError(f"{path}: file not found")
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise AhaError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise AhaError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def append_jsonl(path: Path, row: dict) -> None:
    """Append one line and flush it: used for metrics and resumable outputs (a crash loses at most this line)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()


def path_signature(path: Path) -> str:
    """A file's content hash (size and mtime for files over 16 MB); a folder's listing with sizes and mtimes."""
    if path.is_file():
        st = path.stat()
        if st.st_size > 16 << 20:
            return f"stat:{st.st_size}:{st.st_mtime_ns}"
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    listing = sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                     for p in path.rglob("*") if p.is_file())
    return "dir:" + hashlib.sha256(json.dumps(listing).encode()).hexdigest()
