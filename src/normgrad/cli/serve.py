"""``normgrad serve``: the interactive explorer — open a photo, choose class, method, layers and lr, see every map.

Binds 127.0.0.1 unless ``--host`` says otherwise; serves only its own page
and the images of ``--images``; uploads are limited in bytes
(``--max-upload-mb``) and pixels (``normgrad.images`` limits).
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from pathlib import Path
from typing import Any

from normgrad.cli.common import add_model_options, check_device, check_weights, command, load_model, positive_float
from normgrad.errors import NormGradError

EXAMPLES = """examples:
  normgrad serve                                     # http://127.0.0.1:8000, the embedded EfficientNet-Lite0
  normgrad serve --images photos/ --port 8080        # pick photos from a folder too
  normgrad serve --model torchvision:resnet50 --weights resnet50.pth
  normgrad serve --host 0.0.0.0                      # reachable from other machines: anyone there can use it"""
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SHUTDOWN_GRACE_S = 2  # after the first SIGTERM or Ctrl-C: running work is cancelled, open connections get this long


def add_parser(subparsers: Any) -> None:
    parser = command(subparsers, "serve", "The interactive explorer in your browser (needs the serve extra).", EXAMPLES)
    add_model_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=_port, default=8000, help="port (default: 8000; 0: any free port)")
    parser.add_argument("--images", type=Path, default=None, help="a folder of images to pick from (searched recursively)")
    parser.add_argument("--max-upload-mb", type=positive_float, default=32.0, help="largest upload in MiB (default: 32)")
    parser.set_defaults(run=run)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number; got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535; got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from normgrad.serve.app import create_app, return_large_buffers_to_the_system
    except ImportError as error:
        raise NormGradError(f"normgrad serve needs the serve extra ({error.name} is missing): pip install 'normgrad[serve]'") from None
    from normgrad.run.files import expand_inputs
    from normgrad.serve import Explorer

    check_device(args.device)
    check_weights(args.weights)
    listed: list[Path] = []
    names: list[str] = []
    if args.images is not None:
        if not args.images.is_dir():
            raise NormGradError(f"--images {args.images} is not a folder")
        found = expand_inputs([args.images])
        listed = [Path(i.path) for i in found]
        names = [Path(i.path).relative_to(i.root).as_posix() for i in found]
    listener = _listen(args.host, args.port)  # before the model loads: a taken port is one line, at once
    return_large_buffers_to_the_system()  # full-size decodes of uploads must not stay in the process's heap
    try:
        explorer = Explorer(load_model(args), listed, listed_names=names, device=args.device)
        hosts = allowed_hosts(args.host)
        app = create_app(explorer, max_upload_bytes=int(args.max_upload_mb * 2**20), allowed_hosts=hosts)
        host, port = listener.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"normgrad serve: {explorer.loaded.name} on http://{shown}:{port}/ ({len(listed)} image(s) listed; Ctrl-C stops)")
        if hosts is None:
            print(f"normgrad serve: listening on {args.host}: anyone who can reach this machine can use the explorer", file=sys.stderr)
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
        server(config, explorer).run(sockets=[listener])
    finally:
        listener.close()
    return 0


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only: ``localhost`` or any loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str) -> list[str] | None:
    """The Host headers accepted on a loopback address (DNS rebinding stops there); ``None`` (any) elsewhere."""
    if not is_loopback(host):
        return None
    bare = host.strip("[]")
    own = [f"[{bare}]" if ":" in bare else bare]
    return list(dict.fromkeys([*own, *LOOPBACK, "[::1]"]))


def server(config: Any, explorer: Any) -> Any:
    """uvicorn's server whose first SIGTERM or Ctrl-C also cancels the explorer's running work, so that it stops at once."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            explorer.stopping.set()
            super().handle_exit(sig, frame)

    return Server(config)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; one clear error when the address is taken or not this machine's."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise NormGradError(f"--host {host}: {error.strerror}") from None
    listener = socket.socket(info[0], socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(info[4])
        listener.listen(64)
    except OSError as error:
        listener.close()
        raise NormGradError(f"cannot listen on {host}:{port}: {error.strerror} (another server there? try --port)") from None
    return listener
