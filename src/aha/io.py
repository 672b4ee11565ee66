"""Atomic file writes and JSONL reading with located errors. Nothing already written is lost:
every output is written to a temporary name in the same folder and renamed into place.

Input files are decoded as strict UTF-8 (a bad byte is an error naming the file and line, never a silent
U+FFFD); an OS error while writing (a full disk, a read-only folder) names the path it was writing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from aha.errors import AhaError


def write_error(path: str | os.PathLike, error: BaseException) -> AhaError:
    """The one-line error for a failed write of `path`: the OS's reason, and "disk full" when the file system
    has no room left (torch and safetensors report a full disk in words of their own)."""
    reason = getattr(error, "strerror", None) or (str(error).strip().splitlines() or [type(error).__name__])[0]
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        full = shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        full = False
    if full and "No space left" not in reason:
        reason += " (the disk is full)"
    return AhaError(f"cannot write {path}: {reason}")


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
    except OSError as e:
        error = write_error(path, e)
        Path(tmp).unlink(missing_ok=True)
        raise error from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, row) for each non-blank line; malformed JSON is an AhaError naming file and line."""
    path = Path(path)
    if path.is_dir():
        raise AhaError(f"{path}: is a folder, not a JSONL file")
    if not path.is_file():
        raise AhaError(f"{path}: file not found")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = decode_line(raw, path, lineno)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise AhaError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise AhaError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def decode_line(raw: bytes, path: str | os.PathLike, lineno: int) -> str:
    """One line of an input file as text; AhaError `path:line: invalid UTF-8` for a byte that is not."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AhaError(f"{path}:{lineno}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None


def read_text(path: str | os.PathLike) -> str:
    """A whole input file (a recipe) as strict UTF-8; AhaError naming the file and line of a bad byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        line_start = data.rfind(b"\n", 0, e.start) + 1
        return decode_line(data[line_start:e.end], path, lineno)  # raises, naming the line


def append_jsonl(path: Path, row: dict) -> None:
    """Append one line and flush it: used for metrics and resumable outputs (a crash loses at most this line)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
    except OSError as e:
        raise write_error(path, e) from e


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
