"""The manifest (``summary.json``): each run's settings and one entry per image, folded together from the journals."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from normgrad.store.layout import FORMAT, OUTPUT_KINDS, VERSION, StoreError
from normgrad.store.schema import line_problem, manifest_problem


@dataclass
class Manifest:
    """The folder's state: runs (id → settings, times) and entries (name → the latest record of that image)."""

    runs: dict[str, dict] = field(default_factory=dict)
    entries: dict[str, dict] = field(default_factory=dict)
    current: str | None = None
    gallery: dict | None = None  # GALLERY_CLAIM when normgrad owns index.html and gallery/

    @classmethod
    def from_dict(cls, data: dict | None) -> Manifest:
        if not data:
            return cls()
        entries = {}
        for status, key in (("ok", "images"), ("failed", "failed"), ("interrupted", "interrupted")):
            for entry in data.get(key, []):
                entries[entry["name"]] = {**entry, "status": status}
        return cls(dict(data.get("runs", {})), entries, data.get("run"), data.get("gallery"))

    def apply(self, lines: Iterable[dict], only_run: str | None = None) -> None:
        """Fold journal lines in: a claim marks the image interrupted (its files owned), a record replaces the entry."""
        for line in lines:
            if line_problem(line) is not None or (only_run is not None and line.get("run") != only_run):  # as if torn
                continue
            kind, run = line.get("type"), line.get("run")
            if kind == "run":
                self.runs.setdefault(run, {k: line.get(k) for k in ("settings", "started", "world", "host")} | {"finished": None})
                continue
            name = line.get("name")
            if not isinstance(name, str):
                continue
            previous = self.entries.get(name, {})
            kept = sorted(entry_files(previous) | set(line.get("files", [])))
            if kind == "claim":
                self.entries[name] = {**previous, "name": name, "status": "interrupted", "run": run, "files": kept,
                                      "image": line.get("image", previous.get("image"))}  # fmt: skip
            elif kind == "image":
                record = {k: v for k, v in line.items() if k != "type"}
                self.entries[name] = {**record, "status": "ok"}
            elif kind == "failed":
                record = {k: v for k, v in line.items() if k != "type"}
                self.entries[name] = {**record, "status": "failed", "files": kept}

    def owned_files(self) -> set[str]:
        files: set[str] = set()
        for entry in self.entries.values():
            files |= entry_files(entry)
        return files

    def to_dict(self) -> dict:
        referenced = {e.get("run") for e in self.entries.values()} | {self.current}
        runs = {run: info for run, info in self.runs.items() if run in referenced}
        current = runs.get(self.current, {}).get("settings") or {}
        by_status: dict[str, list[dict]] = {"ok": [], "failed": [], "interrupted": []}
        for name in sorted(self.entries):
            entry = dict(self.entries[name])
            by_status[entry.pop("status", "ok")].append(entry)
        for entry in by_status["failed"]:
            entry.setdefault("path", entry.get("image"))
        return {
            "format": FORMAT,
            "version": VERSION,
            "run": self.current,
            **{key: current.get(key) for key in ("model", "method", "default", "layers", "combine", "lr", "steps")},
            "settings": current,
            "runs": runs,
            "images": by_status["ok"],
            "failed": by_status["failed"],
            "interrupted": by_status["interrupted"],
            **({"gallery": self.gallery} if self.gallery else {}),
        }


def entry_files(entry: dict) -> set[str]:
    """The files an entry claims or lists as outputs (paths relative to OUT)."""
    files = set(entry.get("files", []))
    for output in entry.get("outputs", []):
        files |= {output.get(kind) for kind in (*OUTPUT_KINDS, "shard")} - {None}
    return files


START_AFRESH = "pass --overwrite to start the folder afresh, or choose another --out"


def parse_manifest(data: bytes, where: Path, advice: str = START_AFRESH) -> dict:
    """A manifest's bytes as a dict, checked (:mod:`normgrad.store.schema`); one StoreError naming ``where`` and the field.

    Another program's file (no ``format``) and a newer normgrad's are told apart from a damaged one.
    """
    try:
        manifest = json.loads(data)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{where} is not a {FORMAT} manifest (another program's, or an older normgrad's); {advice}")
    version = manifest.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise StoreError(f"{where} was written by a newer normgrad (version {version}); upgrade normgrad")
    problem = manifest_problem(manifest)
    if problem is not None:
        raise StoreError(f"{where} is damaged: {problem}; {advice}")
    return manifest
