"""Crash-safe file IO shared by every stage.

Two rules hold everywhere in bioinstruct:

* whole files (JSON, YAML, results, manifests) are written to a temporary file in
  the same directory and renamed over the target, so a reader sees the old file or
  the new one, never half of one;
* record streams (JSONL) are appended and fsync'ed, and a torn last line left by a
  killed writer is cut off before the next append, so a restarted job continues
  where the previous one stopped.

Readers raise :class:`DataError` naming ``file:line`` for malformed input. This module is the
one reader of the package: every stage reads user data through :func:`iter_rows` (JSON Lines,
a JSON array or CSV, UTF-8 with or without a byte-order mark, LF or CRLF line ends, each row
located by ``file:line``; :mod:`bioinstruct.io.records` and the task loaders build on it), whole
JSON files through :func:`read_json`, and record streams through :func:`iter_jsonl`, the same
JSON Lines reader that can also skip a torn last line.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from ..errors import DataError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    If the block raises (or the process dies), ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes 0600 files; outputs on shared storage should follow the umask
        # like any other file, so a group can read a run directory.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads ``3e-4`` as a float (YAML 1.1 wants ``3.0e-4``; every
    learning rate in the wild is written the short way)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)


def read_yaml(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return load_yaml(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else 1
        raise DataError(f"{path}:{line}: invalid YAML: {e.problem}") from None


def _last_line_start(f, size: int) -> int:
    """Offset just after the last newline that precedes the file's final byte."""
    pos, block = size - 1, 1 << 16
    while pos > 0:
        start = max(0, pos - block)
        f.seek(start)
        i = f.read(pos - start).rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def repair_jsonl(path: str | os.PathLike) -> int:
    """Make a JSONL file end on a whole record; return the bytes cut off.

    A killed appender can leave a partial last line: it is cut off. A last record
    that is complete but lost only its newline is kept and the newline restored.
    Only the last line can be torn by an appender; a malformed line in the middle
    is real corruption and is left for the reader to report.
    """
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        start = _last_line_start(f, size)
        f.seek(start)
        last = f.read()
        try:
            json.loads(last)
            complete = True
        except ValueError:
            complete = False
        if complete and last.endswith(b"\n"):
            return 0
        if complete:
            f.write(b"\n")
            removed = 0
        else:
            f.truncate(start)
            removed = size - start
        f.flush()
        os.fsync(f.fileno())
        return removed


class JsonlAppender:
    """Append-only JSONL writer: repairs a torn tail on open, fsyncs every write.

    >>> with JsonlAppender("runs/x/decisions.jsonl") as out:
    ...     out.write({"id": 1, "kept": True})
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired_bytes = repair_jsonl(self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, record: Any) -> None:
        self.write_many([record])

    def write_many(self, records: Iterable[Any]) -> None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not lines:
            return
        self._f.write(lines)
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def append_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> None:
    with JsonlAppender(path) as out:
        out.write_many(records)


def iter_jsonl_numbered(path: str | os.PathLike, *, allow_torn_tail: bool = False) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, record)`` for each record of a JSONL file; blank lines are skipped.

    A malformed line raises DataError naming ``file:line``. With
    ``allow_torn_tail``, a malformed *last* line without a trailing newline (what a
    killed appender leaves) is skipped instead: the writer repairs it on its next open.
    """
    path = Path(path)
    yield from _jsonl_rows(path, read_text(path, allow_torn_tail=allow_torn_tail), allow_torn_tail=allow_torn_tail)


def iter_jsonl(path: str | os.PathLike, *, allow_torn_tail: bool = False) -> Iterator[Any]:
    for _, record in iter_jsonl_numbered(path, allow_torn_tail=allow_torn_tail):
        yield record


def read_jsonl(path: str | os.PathLike, *, allow_torn_tail: bool = False) -> list[Any]:
    return list(iter_jsonl(path, allow_torn_tail=allow_torn_tail))


def read_text(path: str | os.PathLike, *, allow_torn_tail: bool = False) -> str:
    """A user's text file: UTF-8, a byte-order mark dropped, CRLF read as LF; bytes that are
    not UTF-8 raise DataError at ``file:line``. With ``allow_torn_tail``, a last line without
    a newline that is cut inside a character (a killed appender's) is left out instead."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if not (allow_torn_tail and b"\n" not in data[e.start:]):
            line = data[: e.start].count(b"\n") + 1
            raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
                            "save the file as UTF-8") from None
        text = data[: data.rfind(b"\n") + 1].decode("utf-8-sig")
    return text.replace("\r\n", "\n")


def _json_array_rows(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    """The elements of a JSON array, each with the line it starts on."""
    try:
        json.loads(text)  # the whole file first: a syntax error anywhere is reported as such
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    decoder, ws = json.JSONDecoder(), re.compile(r"[\s,]*")
    pos, line, counted = ws.match(text, text.index("[") + 1).end(), 1, 0
    while text[pos] != "]":
        line, counted = line + text.count("\n", counted, pos), pos
        row, pos = decoder.raw_decode(text, pos)
        yield f"{path}:{line}", row
        pos = ws.match(text, pos).end()


def _csv_rows(path: Path, text: str) -> Iterator[tuple[str, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    start = 2  # the line a row starts on (a quoted cell may span lines)
    try:
        for row in reader:
            where, start = f"{path}:{start}", reader.line_num + 1
            if None in row or None in row.values():  # DictReader's marks of extra / missing cells
                cells = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
                raise DataError(f"{where}: {cells} fields, the header has {len(reader.fieldnames)}")
            yield where, row
    except csv.Error as e:
        raise DataError(f"{path}:{start}: {e}") from None


def _jsonl_rows(path: Path, text: str, *, allow_torn_tail: bool = False) -> Iterator[tuple[int, Any]]:
    """``(line, record)`` for each non-blank line of JSON Lines text; see :func:`iter_jsonl_numbered`."""
    lines = text.split("\n")  # a last line with its newline leaves "" last
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            if allow_torn_tail and lineno == len(lines):
                return
            hint = (" (a pretty-printed JSON object? the file must be JSON Lines or a JSON array)"
                    if lineno == 1 and line.strip() == "{" else "")
            raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno}){hint}") from None


def iter_rows(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """``(file:line, row)`` for each row of a user's data file: CSV (by the .csv suffix; rows
    are dicts keyed by the header), a JSON array (the first character is ``[``), else JSON
    Lines (blank lines skipped). Raises DataError at the first undecodable byte or malformed row."""
    path = Path(path)
    text = read_text(path)
    if path.suffix.lower() == ".csv":
        yield from _csv_rows(path, text)
    elif text.lstrip().startswith("["):
        yield from _json_array_rows(path, text)
    else:
        for lineno, row in _jsonl_rows(path, text):
            yield f"{path}:{lineno}", row


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> None:
    """Write a whole JSONL file atomically (for outputs produced in one go)."""
    with atomic_open(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
