"""Reading clips: video files (PyAV), NumPy and NIfTI volumes, as (T, H, W, 3) uint8 frames.

A video's frames are sampled evenly over its length (``frames`` of them, or
all when it has fewer).  A volume (D, H, W) is a stack of slices along its
first axis (NIfTI: the last, its slice axis), its intensities scaled to
0..255 by the 0.5 and 99.5 percentiles (robust to outliers, as medical
viewers window them) and shown in grey; (D, H, W, 3) volumes are colour.
Every input has a bound: at most :data:`MAX_FRAMES` frames and
:data:`MAX_VOXELS` voxels are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normgrad.errors import NormGradError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
VOLUME_SUFFIXES = (".npy", ".nii", ".nii.gz")
MAX_FRAMES = 512
MAX_VOXELS = 256 * 1024 * 1024  # 256 Mi values: a 512-frame 720p clip is over it, a 256³ volume far below


@dataclass
class Clip:
    """Frames (T, H, W, 3) uint8, what they are (``"video"`` or ``"volume"``) and the frame rate (videos)."""

    frames: np.ndarray
    kind: str = "video"
    fps: float | None = None
    name: str = "clip"

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise NormGradError(f"a clip's frames must be (T, H, W, 3) uint8; got {self.frames.shape} {self.frames.dtype}")


def is_clip_path(path: str | Path) -> bool:
    """True for a video file or a volume by its suffix."""
    name = str(path).lower()
    return name.endswith(VIDEO_SUFFIXES + VOLUME_SUFFIXES)


def read_clip(path: str | Path, frames: int = 16) -> Clip:
    """The clip at ``path``: ``frames`` frames sampled evenly from a video, or every slice of a volume (up to ``frames``, evenly)."""
    path = Path(path)
    if not 1 <= frames <= MAX_FRAMES:
        raise NormGradError(f"frames must be between 1 and {MAX_FRAMES}; got {frames}")
    if not path.is_file():
        raise NormGradError(f"no such file: {str(path)!r}")
    name = path.name.lower()
    if name.endswith(VIDEO_SUFFIXES):
        return _read_video(path, frames)
    if name.endswith(".npy"):
        return _volume_clip(_read_npy(path), frames, path)
    if name.endswith((".nii", ".nii.gz")):
        return _volume_clip(_read_nifti(path), frames, path)
    raise NormGradError(f"{str(path)!r} is not a video ({', '.join(VIDEO_SUFFIXES)}) or a volume ({', '.join(VOLUME_SUFFIXES)})")


def _read_video(path: Path, frames: int) -> Clip:
    try:
        import av
    except ImportError as error:
        raise NormGradError("reading video files needs PyAV: pip install 'normgrad[video]'") from error
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise NormGradError(f"{str(path)!r} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else None
            decoded = []
            for frame in container.decode(stream):
                decoded.append(frame.to_ndarray(format="rgb24"))
                if len(decoded) * decoded[0].size > MAX_VOXELS:
                    raise NormGradError(f"{str(path)!r} has more than {MAX_VOXELS} pixel values; cut the clip shorter (ffmpeg -t)")
    except av.error.FFmpegError as error:
        raise NormGradError(f"cannot read the video {str(path)!r}: {error}") from None
    if not decoded:
        raise NormGradError(f"{str(path)!r} has no frames")
    chosen = _evenly(len(decoded), frames)
    return Clip(np.stack([decoded[i] for i in chosen]), "video", fps, path.stem)


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise NormGradError(f"cannot read the volume {str(path)!r}: {error}") from None
    return array


def _read_nifti(path: Path) -> np.ndarray:
    try:
        import nibabel
    except ImportError as error:
        raise NormGradError("reading NIfTI volumes needs nibabel: pip install 'normgrad[video]'") from error
    try:
        image = nibabel.load(str(path))
    except Exception as error:  # nibabel raises several kinds for a damaged file
        raise NormGradError(f"cannot read the NIfTI volume {str(path)!r}: {error}") from None
    if len(image.shape) != 3:
        raise NormGradError(f"{str(path)!r} is a {len(image.shape)}-D NIfTI image; a volume (X, Y, Z) is read")
    return np.moveaxis(np.asarray(image.dataobj), -1, 0)  # slices along the last axis: (Z, X, Y)


def _volume_clip(volume: np.ndarray, frames: int, path: Path) -> Clip:
    if volume.ndim not in (3, 4) or (volume.ndim == 4 and volume.shape[-1] != 3):
        raise NormGradError(f"a volume must be (D, H, W) or (D, H, W, 3); {str(path)!r} is {volume.shape}")
    if volume.size > MAX_VOXELS:
        raise NormGradError(f"{str(path)!r} has {volume.size} values, more than {MAX_VOXELS}")
    if not np.issubdtype(volume.dtype, np.number) or np.issubdtype(volume.dtype, np.complexfloating):
        raise NormGradError(f"a volume must hold real numbers; {str(path)!r} holds {volume.dtype}")
    chosen = _evenly(volume.shape[0], frames)
    values = np.asarray(volume[chosen], dtype=np.float32)
    if not np.isfinite(values).all():
        raise NormGradError(f"{str(path)!r} holds NaN or infinite values")
    low, high = np.percentile(values, [0.5, 99.5])
    scaled = np.clip((values - low) / max(float(high - low), 1e-12), 0, 1)
    pixels = np.round(scaled * 255).astype(np.uint8)
    if pixels.ndim == 3:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return Clip(pixels, "volume", None, path.name.removesuffix(".gz").rsplit(".", 1)[0])


def _evenly(count: int, wanted: int) -> list[int]:
    """``wanted`` indices spread evenly over ``range(count)`` (all of them when there are fewer)."""
    if count <= wanted:
        return list(range(count))
    return [int(i) for i in np.linspace(0, count - 1, wanted).round()]
