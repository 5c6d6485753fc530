"""The output folder of ``normgrad explain``: names, safe writes, one run at a time, a manifest, resumable records.

Layout (format ``normgrad-explain``, version 1)::

    OUT/summary.json                        the manifest: each run's settings, one entry per image
    OUT/<name>.png, OUT/<name>.npy          overlay and float32 map of an image (--combine none:
                                            <name>_<layer>.png/.npy per layer)
    OUT/shards/<run>.rank<R>.bin            with storage="shards": the maps of run <run> (rank R), appended
                                            (:mod:`normgrad.store.shards`), instead of the .npy files
    OUT/.normgrad/lock                      held with flock(2) by the run writing into OUT
    OUT/.normgrad/journal/<run>.rank<R>.jsonl   what run <run> (rank R) has done so far
    OUT/.normgrad/tmp/                      files being written, renamed into place when complete
    OUT/index.html, OUT/gallery/            the gallery page and its data (:mod:`normgrad.gallery`), when the
                                            manifest's ``gallery`` entry says normgrad owns them

**Names** (:func:`output_names`): an image's name is its path relative to its
*root* without the suffix (``photos/a/cat.jpg`` found in ``photos/`` → ``a/cat``).
The root of a folder argument is the folder, of a glob its directory part
before the first wildcard, and of the files given by name their deepest
common folder.  Names that would collide (compared case-insensitively, also
with a folder of the same name or with an input file) keep their suffix
(``cat.jpg``, ``cat.png`` → ``cat.jpg.png``, ``cat.png.png``); any still
colliding get ``~2``, ``~3``, ... in input order.  The top-level entries
normgrad keeps for itself (:data:`RESERVED`: ``summary.json``, ``index.html``,
``gallery/``, ``.normgrad/``, compared case-insensitively) are never an
output or a folder above one: such a name gets a leading ``_``
(``gallery/cat.jpg`` → ``_gallery/cat.jpg``).

**Safety**: every file is written to ``.normgrad/tmp`` and renamed into place
(``os.replace``), so a file is either absent or complete; directories are
opened without following symbolic links and names never leave ``OUT``; a
file normgrad did not write (one no manifest entry or journal claims) is
never replaced without ``--overwrite`` — a symlink in the way is replaced as
a link, never written through — and an input file is never replaced at all.
The gallery (``index.html`` and ``gallery/``) is claimed as a whole: the
manifest records that normgrad owns it before any of its files is written, and
a run refuses to start over an ``index.html`` or ``gallery`` it did not write
(unless ``--overwrite``).

**Records**: a run appends JSON lines to its own journal: a header
(``{"type": "run", "run", "rank", "world", "settings", ...}``), then per
image a ``claim`` (the files it is about to write) and an ``image``
(success) or ``failed`` record.  Every line is one ``write`` on an
``O_APPEND`` file and the reader skips torn lines, so a line cut by a kill
never swallows the next.  At the end rank 0 merges the journals of *its*
run (the run id fences off stale ones) into ``summary.json``; journals left
by a killed run are merged, entry by entry and checked, by the next run.
Both are checked on reading (:mod:`normgrad.store.schema`): a manifest of
the wrong shape stops the run with one line naming the field, a journal line
of the wrong shape is skipped like a torn one.  :func:`open_run` reads a
folder back (records without their maps; maps by name or index).

**Resume** (``--resume``): an image is skipped when its entry succeeded with
the same settings (the weights file identified by its content:
:func:`weights_identity`), for the same input path, the input's size, mtime and
ctime (``os.stat``; a replaced file changes its ctime even when its mtime is
preserved) are those recorded, and every output file exists with its
recorded byte size.  Otherwise it is redone: failed and interrupted images
are retried, changed inputs and deleted or truncated outputs are redone.
An image whose name belongs to another input, or whose entry was made with
other settings, stops the run unless ``--overwrite`` is given.

**Concurrency**: rank 0 holds an exclusive ``flock`` on ``.normgrad/lock``
from planning to the merge, so a second run into the same folder stops at
once; under ``torchrun`` the other ranks write only what rank 0 planned for
them, into their own journals.

Parts, one job each: :mod:`~normgrad.store.layout` (fixed names, errors),
:mod:`~normgrad.store.names` (output names), :mod:`~normgrad.store.journal`
(JSON lines, atomic single files), :mod:`~normgrad.store.manifest` (the
manifest), :mod:`~normgrad.store.identity` (file identities),
:mod:`~normgrad.store.folder` (:class:`OutputStore`: the folder, the lock),
:mod:`~normgrad.store.lock` (one run at a time), :mod:`~normgrad.store.plan`
(what a run does), :mod:`~normgrad.store.schema` (records checked on
reading), :mod:`~normgrad.store.shards` (compact map storage),
:mod:`~normgrad.store.reader` (``open_run``), :mod:`~normgrad.store.encode`
(``.npy`` and PNG bytes).
"""

from normgrad.store.encode import encode_jpeg, encode_npy, encode_png
from normgrad.store.folder import OutputStore
from normgrad.store.identity import file_digest, identity, weights_identity
from normgrad.store.journal import JsonLines, atomic_write, dumps, new_run_id
from normgrad.store.layout import (
    FORMAT,
    GALLERY,
    GALLERY_CLAIM,
    INDEX,
    INTERNAL,
    MANIFEST,
    OUTPUT_KINDS,
    OVERLAY_KINDS,
    RESERVED,
    VERSION,
    OutputConflict,
    StoreError,
    fatal,
    overlay_of,
)
from normgrad.store.lock import precheck
from normgrad.store.manifest import Manifest
from normgrad.store.names import output_names
from normgrad.store.plan import Plan, Work
from normgrad.store.reader import Record, Run, open_run
from normgrad.store.shards import STORAGES

__all__ = [
    "FORMAT",
    "GALLERY",
    "GALLERY_CLAIM",
    "INDEX",
    "INTERNAL",
    "MANIFEST",
    "OUTPUT_KINDS",
    "OVERLAY_KINDS",
    "RESERVED",
    "STORAGES",
    "VERSION",
    "JsonLines",
    "Manifest",
    "OutputConflict",
    "OutputStore",
    "Plan",
    "Record",
    "Run",
    "StoreError",
    "Work",
    "atomic_write",
    "dumps",
    "encode_npy",
    "encode_jpeg",
    "encode_png",
    "fatal",
    "file_digest",
    "identity",
    "new_run_id",
    "open_run",
    "output_names",
    "overlay_of",
    "precheck",
    "weights_identity",
]
