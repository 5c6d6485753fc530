"""Real photos that ship with scikit-image, with the ImageNet classes they show."""

from __future__ import annotations

from typing import Any

from normgrad.images import from_array

# name -> (loader, ImageNet classes a correct prediction may fall in)
PHOTOS: dict[str, tuple[str, tuple[int, ...]]] = {
    "chelsea": ("chelsea", (281, 282, 283, 284, 285, 287)),  # tabby, tiger, Persian, Siamese, Egyptian cat; lynx
    "coffee": ("coffee", (504, 967, 968, 969)),  # coffee mug, espresso, cup, eggnog
    "camera": ("camera", (872,)),  # tripod
    "rocket": ("rocket", (657, 744, 812)),  # missile, projectile, space shuttle
    "motorcycle": ("stereo_motorcycle", (665, 670, 671)),  # moped, motor scooter, mountain bike
    "astronaut": ("astronaut", ()),
}


def confident(loaded: Any, photos: dict[str, Any], threshold: float = 0.2) -> dict[str, tuple[Any, int, float]]:
    """The photos the model classifies with top-1 probability ≥ ``threshold``, one per class: name → (photo, class, p)."""
    from normgrad.pipeline import predict

    chosen: dict[str, tuple[Any, int, float]] = {}
    classes: set[int] = set()
    for name, photo in photos.items():
        probabilities = predict(loaded.model, loaded.preprocess(photo)[None]).probabilities[0]
        p, cls = (float(v) for v in probabilities.max(0))
        if p >= threshold and int(cls) not in classes:
            chosen[name] = (photo, int(cls), p)
            classes.add(int(cls))
    return chosen


def load_folder(paths: list[Any]) -> dict[str, Any]:
    """Photos from files, keyed by file stem (unreadable files are an error naming them)."""
    from pathlib import Path

    from normgrad.images import load_image

    return {Path(p).stem: load_image(p) for p in paths}


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
