"""The shapes of the records, checked on reading: the manifest (``summary.json``) and each journal line.

A record is JSON normgrad wrote, but a file on disk can be damaged or edited:
valid JSON of the wrong shape (an entry without ``name``, ``version`` as a
string, ``runs`` as a list, ``outputs`` as a string, ...) must never reach
the code that trusts it.  :func:`manifest_problem` names the first field that
is wrong (the caller stops the run with one line naming the file and the
field); :func:`line_problem` does the same for a journal line, which the
reader then skips like a line torn by a kill (its image is redone).

Only the fields normgrad reads are checked, and only for their type and, for
paths, that they stay inside the output folder; other fields are kept as
they are.  Optional fields may be absent or ``null`` where the writer
allows it.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from normgrad.store.layout import FORMAT, GALLERY_CLAIM, OUTPUT_KINDS, VERSION

ENTRY_LISTS = ("images", "failed", "interrupted")  # the manifest's lists of entries (status ok, failed, interrupted)
LINE_TYPES = ("run", "claim", "image", "failed")  # a journal's kinds of line


class Shape(ValueError):
    """A field with the wrong shape: ``field`` (a path such as ``images[3].outputs[0].png``) and what it must be."""

    def __init__(self, field: str, expected: str) -> None:
        super().__init__(f"{field} must be {expected}")
        self.field, self.expected = field, expected


def manifest_problem(data: Any) -> str | None:
    """The first wrong field of a manifest, in words (``None``: the manifest has the shape normgrad writes)."""
    try:
        check_manifest(data)
    except Shape as problem:
        return str(problem)
    return None


def line_problem(line: Any) -> str | None:
    """The first wrong field of a journal line, in words (``None``: a line normgrad could have written)."""
    try:
        check_line(line)
    except Shape as problem:
        return str(problem)
    return None


def check_manifest(data: Any) -> None:
    """Raise :class:`Shape` for the first wrong field of a manifest (format, version, runs, entries, gallery)."""
    _is(data, dict, "the manifest", "a JSON object")
    if data.get("format") != FORMAT:
        raise Shape("format", f"{FORMAT!r}")
    version = data.get("version")
    if not _integer(version) or not 1 <= version <= VERSION:
        raise Shape("version", f"an integer from 1 to {VERSION}")
    _optional(data, "run", str, "", "a string")
    _optional(data, "settings", dict, "", "an object")
    runs = data.get("runs", {})
    _is(runs, dict, "runs", "an object (run id → settings)")
    for run, info in runs.items():
        _is(info, dict, f"runs.{run}", "an object")
        _optional(info, "settings", dict, f"runs.{run}.", "an object")
        for key in ("started", "finished", "host"):
            _optional(info, key, str, f"runs.{run}.", "a string")
        _optional_integer(info, "world", f"runs.{run}.")
    for key in ENTRY_LISTS:
        for i, entry in enumerate(_list(data, key, "")):
            check_entry(entry, f"{key}[{i}]")
    gallery = data.get("gallery")
    if gallery is not None and gallery != GALLERY_CLAIM:
        raise Shape("gallery", f"{GALLERY_CLAIM}")


def check_entry(entry: Any, where: str) -> None:
    """Raise :class:`Shape` for the first wrong field of one image's entry (or journal record)."""
    _is(entry, dict, where, "an object")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise Shape(f"{where}.name", "a non-empty string")
    _relative(name, f"{where}.name")
    for key in ("run", "image", "path", "error"):
        _optional(entry, key, str, f"{where}.", "a string")
    for key in ("index", "rank"):
        _optional_integer(entry, key, f"{where}.")
    for i, file in enumerate(_list(entry, "files", where)):
        _relative(file, f"{where}.files[{i}]")
    for i, output in enumerate(_list(entry, "outputs", where)):
        _output(output, f"{where}.outputs[{i}]")
    identity = _optional(entry, "input", dict, f"{where}.", "an object (path, bytes, mtime_ns, ctime_ns)")
    if identity is not None:
        _optional(identity, "path", str, f"{where}.input.", "a string")
        for key in ("bytes", "mtime_ns", "ctime_ns"):
            _optional_integer(identity, key, f"{where}.input.")
    size = entry.get("size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(_integer(s) and s >= 0 for s in size)):
        raise Shape(f"{where}.size", "[width, height] (two integers)")
    for i, layer in enumerate(_list(entry, "layers", where)):
        _is(layer, str, f"{where}.layers[{i}]", "a string")
    for i, prediction in enumerate(_list(entry, "predictions", where)):
        _class(prediction, f"{where}.predictions[{i}]")
    if entry.get("target") is not None:
        _class(entry["target"], f"{where}.target")


def check_line(line: Any) -> None:
    """Raise :class:`Shape` for the first wrong field of a journal line (a run header, claim, image or failed record)."""
    _is(line, dict, "the line", "a JSON object")
    kind = line.get("type")
    if kind not in LINE_TYPES:
        raise Shape("type", " or ".join(repr(t) for t in LINE_TYPES))
    if not isinstance(line.get("run"), str):
        raise Shape("run", "a string")
    if kind == "run":
        _optional(line, "settings", dict, "", "an object")
        for key in ("rank", "world"):
            _optional_integer(line, key, "")
        return
    check_entry(line, "line")


def _output(output: Any, where: str) -> None:
    """One output of an entry: files (``png`` or ``jpg``, and ``npy``) with their byte sizes,
    or a map in a shard (see :mod:`normgrad.store.shards`)."""
    _is(output, dict, where, "an object")
    _optional(output, "layer", str, f"{where}.", "a string")
    for kind in (*OUTPUT_KINDS, "shard"):
        if output.get(kind) is not None:
            _is(output[kind], str, f"{where}.{kind}", "a string")
            _relative(output[kind], f"{where}.{kind}")
    for key in (*(f"{kind}_bytes" for kind in OUTPUT_KINDS), "offset", "bytes", "crc32"):
        _optional_integer(output, key, f"{where}.")
    if output.get("shard") is not None:
        shape = output.get("shape")
        if not (isinstance(shape, list) and shape and all(_integer(s) and s >= 0 for s in shape)):
            raise Shape(f"{where}.shape", "a list of integers (the map's shape)")
        if output.get("dtype") not in ("float16", "float32"):
            raise Shape(f"{where}.dtype", "'float16' or 'float32'")
        for key in ("offset", "bytes"):
            if not _integer(output.get(key)):
                raise Shape(f"{where}.{key}", "an integer")


def _class(value: Any, where: str) -> None:
    _is(value, dict, where, 'an object ({"class", "name", "probability"})')
    _optional(value, "name", str, f"{where}.", "a string")
    _optional_integer(value, "class", f"{where}.")
    probability = value.get("probability")
    if probability is not None and (isinstance(probability, bool) or not isinstance(probability, (int, float))):
        raise Shape(f"{where}.probability", "a number")


def _is(value: Any, kind: type, where: str, expected: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Shape(where, expected)
    return value


def _optional(record: dict, key: str, kind: type, prefix: str, expected: str) -> Any:
    """``record[key]`` when present and not null, checked to be a ``kind``; else ``None``."""
    value = record.get(key)
    return None if value is None else _is(value, kind, f"{prefix}{key}", expected)


def _list(record: dict, key: str, where: str) -> list:
    """``record[key]``, a list (absent: empty; ``null`` is refused: normgrad writes a list or nothing)."""
    return _is(record.get(key, []), list, f"{where}.{key}" if where else key, "a list")


def _optional_integer(record: dict, key: str, prefix: str) -> None:
    value = record.get(key)
    if value is not None and not _integer(value):
        raise Shape(f"{prefix}{key}", "an integer")


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _relative(path: Any, where: str) -> None:
    """A path normgrad may write: relative, inside the output folder."""
    if not isinstance(path, str) or not path:
        raise Shape(where, "a non-empty string")
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or "\x00" in path:
        raise Shape(where, "a path inside the output folder")
