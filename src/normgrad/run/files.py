"""Finding the input images: files as given, folders searched recursively, globs matched by one walk.

Folders are walked following symlinked folders but never entering one twice
(symlink loops), skipping hidden names (``.*``) and never entering the output
folder; ``**`` in a glob matches any depth; an image reached by two paths
(symlinks, hard links) is explained once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normgrad.errors import NormGradError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
_MAGIC = re.compile(r"[*?[]")


@dataclass(frozen=True)
class Input:
    """An input image: its path and the root folder its output name is relative to."""

    path: Path
    root: Path


def expand_inputs(
    items: list[str | Path], exclude: str | Path | None = None, problems: list[tuple[str, str, bool]] | None = None
) -> list[Input]:
    """Every input image, in order, each once (see the module docstring); ``exclude``: a folder never entered.

    Roots: a folder argument is its own root, a glob's root is its directory
    part before the first wildcard, files given by name share their deepest
    common folder.  A missing file stays in the list (it is reported when read).
    Folders that cannot be listed, and folders holding normgrad results (a
    ``.normgrad`` folder: another run's overlays and gallery are no inputs), are
    not searched: each is added to ``problems`` as ``(folder, why, counts)``,
    ``counts`` true where the folder was wanted but could not be read.
    """
    skip = _identity(exclude) if exclude is not None else None
    problems = [] if problems is None else problems
    found: list[tuple[Path, Path | None]] = []  # (path, root); None: a file given by name
    for item in map(str, items):
        path = Path(item)
        if path.is_dir():
            found += [(p, path) for p in _walk(path, skip, lambda rel: rel.suffix.lower() in IMAGE_SUFFIXES, problems)]
        elif _MAGIC.search(item) and not path.exists():
            root, pattern = _split_glob(item)
            matches = _walk(root, skip, _glob_matcher(pattern), problems) if root.is_dir() else []
            if not matches and not problems:
                raise NormGradError(f"no file matches {item!r}")
            found += [(p, root) for p in matches]
        else:
            found.append((path, None))
    named = [os.path.abspath(p.parent) for p, root in found if root is None]
    common = Path(os.path.commonpath(named)) if named else Path(".")
    unique: dict[Any, Input] = {}
    for path, root in found:
        unique.setdefault(_identity(path) or os.path.abspath(path), Input(path, common if root is None else root))
    return list(unique.values())


RESULTS_MARK = ".normgrad"  # the folder every normgrad output folder holds (normgrad.store.INTERNAL)


def _identity(path: str | Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _walk(root: Path, skip: tuple[int, int] | None, wanted: Callable[[Path], bool], problems: list[tuple[str, str, bool]]) -> list[Path]:
    """Files below ``root`` whose relative path is ``wanted``, sorted; symlinked folders followed once, hidden names skipped;
    folders that cannot be listed or hold normgrad results added to ``problems``."""
    seen: set[tuple[int, int]] = set()
    files: list[Path] = []
    stack = [Path()]
    while stack:
        relative = stack.pop()
        folder = root / relative
        key = _identity(folder)
        if key is None or key in seen or key == skip:
            continue
        seen.add(key)
        try:
            entries = list(os.scandir(folder))
        except OSError as error:
            problems.append((str(folder), f"cannot list this folder: {error.strerror or error}", True))
            continue
        if any(entry.name == RESULTS_MARK and entry.is_dir(follow_symlinks=False) for entry in entries):
            problems.append((str(folder), "it holds normgrad results (another run's output folder): not searched", False))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks; loops end at `seen`
            except OSError:
                continue
            if is_dir:
                stack.append(relative / entry.name)
            elif wanted(relative / entry.name):
                try:
                    if entry.is_file():
                        files.append(relative / entry.name)
                except OSError:
                    continue
    return [root / f for f in sorted(files, key=lambda p: p.as_posix())]


def _split_glob(pattern: str) -> tuple[Path, str]:
    """``photos/**/*.jpg`` → (``photos``, ``**/*.jpg``): the folders before the first wildcard, and the rest."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if _MAGIC.search(part))
    return Path(*parts[:first]) if first else Path("."), "/".join(parts[first:])


def _glob_matcher(pattern: str) -> Callable[[Path], bool]:
    """A relative-path matcher for a glob: ``*``, ``?``, ``[...]`` within one name; ``**`` any number of folders."""
    parts = pattern.split("/")
    regex = "".join(
        ("(?:[^/]+/)*" if i < len(parts) - 1 else ".*") if part == "**" else _name_pattern(part) + ("/" if i < len(parts) - 1 else "")
        for i, part in enumerate(parts)
    )
    compiled = re.compile(f"(?s:{regex})\\Z")
    return lambda relative: compiled.match(relative.as_posix()) is not None


def _class_end(part: str, start: int) -> int:
    """The index of the ``]`` closing the ``[`` at ``start`` (a ``]`` right after ``[`` or ``[!`` is literal); -1 if none."""
    j = start + 1 + (part[start + 1 : start + 2] == "!")
    j += part[j : j + 1] == "]"
    return part.find("]", j)


def _name_pattern(part: str) -> str:
    """One path component of a glob as a regular expression that never crosses a ``/``."""
    out, i = "", 0
    while i < len(part):
        char = part[i]
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[" and (end := _class_end(part, i)) > 0:
            inside = part[i + 1 : end]
            inside = inside.replace("\\", "\\\\")
            out += f"[^{inside[1:]}/]" if inside.startswith("!") else f"[{inside}]"
            i = end
        else:
            out += re.escape(char)
        i += 1
    return out
