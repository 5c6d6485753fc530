"""What the commands share: one-line argparse errors, checked option types, model and method options."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any

from normgrad.meta import PAPER_LR as DEFAULT_LR
from normgrad.meta import PAPER_STEPS as DEFAULT_STEPS
from normgrad.run.options import check_device, check_methods, check_weights, parse_layers, weights_identity, weights_option
from normgrad.run.report import counter, progress, say

__all__ = [  # what the commands take from here, the run's checks and reports among them
    "DEFAULT_LR", "DEFAULT_STEPS", "Parser", "add_meta_options", "add_model_options", "check_device", "check_weights", "command",
    "counter", "finite_non_negative", "int_at_least", "load_model", "methods_from", "non_negative_int", "parse_layers",
    "positive_float", "positive_int", "progress", "say", "weights_identity", "weights_option",
]  # fmt: skip


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def command(subparsers: Any, name: str, help_text: str, epilog: str) -> argparse.ArgumentParser:
    """A subcommand with its examples shown by ``--help``."""
    return subparsers.add_parser(
        name, help=help_text, description=help_text, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer ≥ ``minimum``, else a one-line error saying so."""

    def parse(text: str) -> int:
        value = _int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}; got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer; got {text!r}") from None


def finite_non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number; got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number ≥ 0; got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = finite_non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be positive; got 0")
    return value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="efficientnet_lite0", help="efficientnet_lite0 (embedded, default), torchvision:ARCH or timm:NAME"
    )
    parser.add_argument("--weights", default="default", help="a local state dict for the model, or 'none' for random weights")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")


def add_meta_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lr", type=finite_non_negative, default=None, help=f"meta/adversarial only: inner SGD learning rate (default: {DEFAULT_LR})"
    )
    parser.add_argument(
        "--steps", type=positive_int, default=None, help=f"meta/adversarial only: inner SGD steps (default: {DEFAULT_STEPS})"
    )


def load_model(args: argparse.Namespace, num_classes: int | None = None) -> Any:
    import normgrad as ng

    return ng.models.load(args.model, weights=weights_option(args.weights), num_classes=num_classes, device=args.device)


def methods_from(names: Sequence[str], args: argparse.Namespace) -> list[Any]:
    """Registry methods, with ``--lr``/``--steps`` refused unless one of them takes an inner step, and
    ``--layers`` refused unless one of them uses layers (an option that would be ignored is an error)."""
    return check_methods(names, lr=args.lr, steps=args.steps, layers=getattr(args, "layers", None), target=getattr(args, "target", None))


Runner = Callable[[argparse.Namespace], int]
