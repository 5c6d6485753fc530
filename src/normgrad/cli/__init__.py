"""The ``normgrad`` command: one module per command, each with ``add_parser(subparsers)`` and ``run(args)``.

============  =====================================================  ==========================
command       job                                                    module
============  =====================================================  ==========================
``explain``   maps for images, folders, globs; resume; torchrun      :mod:`normgrad.cli.explain`
``compare``   one figure: layers × methods                           :mod:`normgrad.cli.compare`
``layers``    a model's layers, types, shapes, defaults              :mod:`normgrad.cli.layers`
``demo``      compare and explain on real photos, offline            :mod:`normgrad.cli.demo`
``eval``      pointing game, report, grid game, training study       :mod:`normgrad.cli.evaluate`
``gallery``   (re)build an output folder's gallery page              :mod:`normgrad.cli.gallery`
``serve``     the interactive explorer in a browser                  :mod:`normgrad.cli.serve`
============  =====================================================  ==========================

Every error is one line on stderr without a traceback.  Exit status: 0 done;
1 some images skipped (one line each); 2 error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from normgrad.cli import compare, demo, evaluate, explain, gallery, layers, serve
from normgrad.cli.common import Parser
from normgrad.errors import NormGradError
from normgrad.run.shard import Quiet

COMMANDS = (explain, compare, layers, demo, evaluate, gallery, serve)


def build_parser() -> argparse.ArgumentParser:
    import normgrad as ng

    parser = Parser(prog="normgrad", description="Training-centric saliency: NormGrad at every layer, meta-saliency, baselines.")
    parser.add_argument("--version", action="version", version=f"normgrad {ng.__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Quiet as quiet:
        return quiet.code
    except NormGradError as error:
        return _error(str(error))
    except OSError as error:  # a file or folder the command could not use
        where = f"{error.filename}: " if error.filename else ""
        return _error(f"{where}{error.strerror or error}")
    except KeyboardInterrupt:
        print("normgrad: interrupted (explain: rerun with --resume to continue)", file=sys.stderr)
        return 130


def _error(message: str) -> int:
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
    print(f"normgrad: error: {prefix}{' '.join(message.split())}", file=sys.stderr)
    return 2


__all__ = ["build_parser", "main"]
