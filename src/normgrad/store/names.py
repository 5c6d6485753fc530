"""Output names: an image's path relative to its root, without the suffix, made collision-free (see :mod:`normgrad.store`)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath

from normgrad.store.layout import RESERVED_KEYS


def output_names(inputs: Sequence[tuple[str, str]], files_of: Callable[[str], list[str]], reserved: Iterable[str] = ()) -> list[str]:
    """Collision-free names for ``(path, root)`` pairs (see the module docstring); ``files_of(name)`` lists a name's files.

    ``reserved`` are relative file paths no output may take (input files
    inside the output folder).  Deterministic: the same inputs give the same
    names on every rank.
    """
    relative = [PurePosixPath(Path(os.path.relpath(os.path.abspath(p), os.path.abspath(r))).as_posix()) for p, r in inputs]
    taken = {r.casefold() for r in reserved} | RESERVED_KEYS
    names = [str(rel.with_suffix("")) if rel.suffix else str(rel) for rel in relative]
    for i in _clashing(names, files_of, taken):  # all of a clashing group keep their suffix
        names[i] = str(relative[i])
    files_used: set[str] = set(taken)
    dirs_used: set[str] = set()
    for i, name in enumerate(names):  # last resort, in input order: ~2, ~3, ...
        if _reserved(_keys(name, files_of)[0]):
            name = "_" + name  # below (or at) a reserved top-level entry: ~k alone could never move it out
        for k in itertools.count(1):
            candidate = name if k == 1 else f"{name}~{k}"
            files, dirs = _keys(candidate, files_of)
            if not (files & (files_used | dirs_used) or dirs & files_used or _reserved(files)):
                break
        names[i] = candidate
        files_used |= files
        dirs_used |= dirs
    return names


def _keys(name: str, files_of: Callable[[str], list[str]]) -> tuple[set[str], set[str]]:
    """A name's files and the folders above them, casefolded (case-insensitive file systems)."""
    files = {file.casefold() for file in files_of(name)}
    dirs = {str(parent) for file in files for parent in PurePosixPath(file).parents if str(parent) != "."}
    return files, dirs


def _reserved(files: set[str]) -> bool:
    """Some file is, or lies below, a reserved top-level entry (casefolded names)."""
    return any(PurePosixPath(f).parts[0].casefold() in RESERVED_KEYS for f in files)


def _clashing(names: list[str], files_of: Callable[[str], list[str]], taken: set[str]) -> set[int]:
    """Indices whose files collide with another's files or folders, a taken path, or a reserved entry."""
    file_owners: dict[str, set[int]] = {}
    dir_owners: dict[str, set[int]] = {}
    clashing = set()
    for i, name in enumerate(names):
        files, dirs = _keys(name, files_of)
        if files & taken or _reserved(files):
            clashing.add(i)
        for f in files:
            file_owners.setdefault(f, set()).add(i)
        for d in dirs:
            dir_owners.setdefault(d, set()).add(i)
    for key, owners in file_owners.items():
        if len(owners) > 1 or key in dir_owners:
            clashing |= owners | dir_owners.get(key, set())
    return clashing
