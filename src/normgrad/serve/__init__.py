"""``normgrad serve``: explore one photo in the browser — top-k, any class, method, layers and meta step, per-layer maps.

:class:`Explorer` (:mod:`normgrad.serve.explorer`) does the work through
:mod:`normgrad.pipeline`; :func:`create_app` (:mod:`normgrad.serve.app`)
serves it with Starlette (the ``serve`` extra: ``pip install 'normgrad[serve]'``).
"""

from normgrad.serve.explorer import Cancelled, Explorer

__all__ = ["Cancelled", "Explorer", "create_app"]


def create_app(*args, **kwargs):  # noqa: ANN002, ANN003 - imports Starlette only when a server is made
    from normgrad.serve.app import create_app as make

    return make(*args, **kwargs)
