"""Real photos that ship with scikit-image, with the ImageNet classes they show."""

from __future__ import annotations

from typing import Any

from normgrad.images import from_array

# name -> (loader, ImageNet classes a correct prediction may fall in)
PHOTOS: dict[str, tuple[str, tuple[int, ...]]] = {
    "chelsea": ("chelsea", (281, 282, 283, 284, 285, 287)),  # tabby, tiger, Persian, Siamese, Egyptian cat; lynx
    "coffee": ("coffee", (504, 967, 968, 969)),  # coffee mug, espresso, cup, eggnog
    "astronaut": ("astronaut", ()),
    "rocket": ("rocket", (657, 744, 812)),  # missile, projectile, space shuttle
    "motorcycle": ("stereo_motorcycle", (665, 670, 671)),  # moped, motor scooter, mountain bike
}


def load_photos(names: list[str] | None = None) -> dict[str, Any]:
    """The named photos as RGB ``PIL.Image``s (all of them by default)."""
    import skimage.data

    photos = {}
    for name in names or list(PHOTOS):
        loader = getattr(skimage.data, PHOTOS[name][0])
        array = loader()
        if isinstance(array, tuple):  # stereo pairs: the left image
            array = array[0]
        photos[name] = from_array(array)
    return photos
