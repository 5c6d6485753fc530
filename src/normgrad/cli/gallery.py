"""``normgrad gallery``: (re)build the gallery page of an existing ``explain`` output folder.

``explain`` keeps ``OUT/index.html`` up to date by itself; this command is
for folders made with ``--no-gallery`` or by an older normgrad, for pictures
that were deleted, and for a folder whose run was killed (its journals are
shown, nothing is merged).  Missing pictures are made again from the
``.npy`` maps and the inputs (the overlays when an input is gone).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from normgrad.cli.common import command, progress
from normgrad.errors import NormGradError

EXAMPLES = """examples:
  normgrad gallery maps/                     # maps/index.html from maps/summary.json
  normgrad gallery maps/ --redo-pictures     # also make every thumbnail and picture again"""


def add_parser(subparsers: Any) -> None:
    parser = command(subparsers, "gallery", "Write OUT/index.html, the gallery of an explain output folder.", EXAMPLES)
    parser.add_argument("out", type=Path, help="an output folder of normgrad explain (holding summary.json)")
    parser.add_argument("--redo-pictures", action="store_true", help="make every picture again, not only the missing ones")
    parser.add_argument("--overwrite", action="store_true", help="replace an index.html or gallery/ normgrad did not write")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from normgrad.gallery import Gallery
    from normgrad.store import MANIFEST, OutputStore, new_run_id, precheck

    out: Path = args.out
    if not (out / MANIFEST).is_file():
        raise NormGradError(f"{out} is not an output folder of normgrad explain (no {MANIFEST} in it)")
    precheck(out)
    store = OutputStore(out, new_run_id())
    try:
        store.lock()
        store.claim_gallery(overwrite=args.overwrite)
        state = store.current_state()
        gallery = Gallery(store)
        made = gallery.start(state.to_dict(), running=False, redo=args.redo_pictures,
                             progress=lambda items: progress(items, "gallery pictures", "img"))  # fmt: skip
    finally:
        store.close()
    counts = {status: sum(e.get("status") == status for e in state.entries.values()) for status in ("ok", "failed", "interrupted")}
    listed = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    print(f"gallery: {out / 'index.html'} ({listed or 'no images'}; {made} image(s) given new pictures)")
    return 0
