"""The gallery of an ``explain`` output folder: ``OUT/index.html``, a static page that works offline from ``file://``.

Every image with its overlay thumbnail, predicted and explained class,
method and layers; filter, sort, pages; a full view with an opacity slider,
side by side, and per-layer maps.  :class:`Gallery` writes it
(:mod:`normgrad.gallery.page`); :mod:`normgrad.gallery.pictures` makes each
image's thumbnail, photo and map colours.
"""

from normgrad.gallery.page import Gallery

__all__ = ["Gallery"]
