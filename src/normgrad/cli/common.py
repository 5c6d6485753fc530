"""What the commands share: one-line argparse errors, checked option types, model and method options."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from normgrad.errors import NormGradError
from normgrad.meta import MAX_LR, MAX_STEPS

DEFAULT_LR, DEFAULT_STEPS = 2.5e-3, 1


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


def int_between(minimum: int, maximum: int) -> Callable[[str], int]:
    """An argparse type: an integer in [``minimum``, ``maximum``], else a one-line error saying so."""
    at_least = int_at_least(minimum)

    def parse(text: str) -> int:
        value = at_least(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}; got {value}")
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


def learning_rate(text: str) -> float:
    """``--lr``: a finite number ≥ 0 that a float32 step can take (at most 3.4e38)."""
    value = finite_non_negative(text)
    if value > MAX_LR:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_LR:.4g} (float32's largest number); got {text!r}")
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
        "--lr", type=learning_rate, default=None, help=f"meta/adversarial only: inner SGD learning rate (default: {DEFAULT_LR})"
    )
    parser.add_argument(
        "--steps",
        type=int_between(1, MAX_STEPS),
        default=None,
        help=f"meta/adversarial only: inner SGD steps, at most {MAX_STEPS} (default: {DEFAULT_STEPS})",
    )


def check_device(device: str) -> str:
    """``device`` if torch knows it and it is available here; one clear error otherwise."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise NormGradError(f"--device {device!r} is not a device; valid: cpu, cuda, cuda:N, mps") from None
    if parsed.type == "cpu":
        return device
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise NormGradError(f"--device {device}: no CUDA device is available here; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise NormGradError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0..)")
        return device
    if parsed.type == "mps" and torch.backends.mps.is_available():
        return device
    raise NormGradError(f"--device {device}: not available here; valid: cpu{', cuda' if torch.cuda.is_available() else ''}")


def weights_option(weights: str) -> str | None:
    return None if str(weights).lower() == "none" else weights


def weights_identity(weights: str) -> Any:
    """How the settings record the weights: 'default', 'none', or the file with its size and mtime."""
    value = weights_option(weights)
    if value in (None, "default"):
        return "none" if value is None else "default"
    try:
        info = os.stat(value)
    except OSError:
        return os.path.abspath(value)
    return {"path": os.path.abspath(value), "bytes": info.st_size, "mtime_ns": info.st_mtime_ns}


def check_weights(weights: str) -> None:
    value = weights_option(weights)
    if value not in (None, "default") and not Path(value).is_file():
        raise NormGradError(f"weights file {value!r} does not exist")


def load_model(args: argparse.Namespace, num_classes: int | None = None) -> Any:
    import normgrad as ng

    return ng.models.load(args.model, weights=weights_option(args.weights), num_classes=num_classes, device=args.device)


def parse_layers(option: str | None) -> list[str] | None:
    """``--layers``: ``None`` for the default layers ('auto' or not given), else the names."""
    if option is None or option.strip() == "auto":
        return None
    names = [name.strip() for name in option.split(",") if name.strip()]
    if not names:
        raise NormGradError("--layers is empty; give comma-separated layer names or 'auto'")
    return names


def methods_from(names: Sequence[str], args: argparse.Namespace) -> list[Any]:
    """Registry methods, with ``--lr``/``--steps`` refused unless one of them takes an inner step, and
    ``--layers`` refused unless one of them uses layers (an option that would be ignored is an error)."""
    from normgrad.registry import get_method

    lr = DEFAULT_LR if args.lr is None else args.lr
    steps = DEFAULT_STEPS if args.steps is None else args.steps
    methods = [get_method(name, lr=lr, steps=steps) for name in names]
    if not methods:
        raise NormGradError("no method given")
    given = [flag for flag, value in (("--lr", args.lr), ("--steps", args.steps)) if value is not None]
    if given and not any(m.inner_step for m in methods):
        raise NormGradError(f"{' and '.join(given)} only apply to meta/adversarial methods, not {', '.join(m.name for m in methods)}")
    if getattr(args, "layers", None) is not None and not any(m.uses_layers for m in methods):
        raise NormGradError(
            f"--layers does not apply to {', '.join(m.name for m in methods)}: "
            f"{'it works' if len(methods) == 1 else 'they work'} on the input image; drop --layers"
        )
    if getattr(args, "target", None) is not None and not any(m.needs_model for m in methods):
        raise NormGradError(f"--target does not apply to {', '.join(m.name for m in methods)}, which ignore the model; drop --target")
    return methods


def progress(items: list, description: str, unit: str = "batch") -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=description, unit=unit, disable=len(items) < 2 or not sys.stderr.isatty(), file=sys.stderr)


def counter(total: int, description: str, unit: str, disable: bool = False) -> Any:
    """A tqdm progress bar with ``update(n)``/``close()`` (silent when not on a terminal)."""
    try:
        from tqdm import tqdm
    except ImportError:
        disable = True
    if disable or total < 2 or not sys.stderr.isatty():
        return _Silent()
    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr)


class _Silent:
    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


def say(message: str) -> None:
    print(message, file=sys.stderr)


Runner = Callable[[argparse.Namespace], int]
