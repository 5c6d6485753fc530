"""Videos and 3-D volumes: read a clip, explain it, write per-frame overlays, a strip and an animation.

>>> from normgrad import video
>>> clip = video.read_clip("walk.mp4", frames=16)                  # (T, H, W, 3) uint8 frames
>>> result = video.explain_clip(loaded, clip)                      # the (T, H, W) map in [0, 1]
>>> video.write_clip("out/walk", clip, result)                     # frame_000.png ..., strip.png, animation.gif

Readers: PyAV for video files (``pip install 'normgrad[video]'``), NumPy
``.npy`` volumes, NIfTI ``.nii`` / ``.nii.gz`` volumes through nibabel.  The
engine's maps of a clip are (N, 1, t, h, w) (:mod:`normgrad.engine`); here
they are combined over layers and upsampled trilinearly to the clip.
"""

from normgrad.video.explain import ClipResult, clip_tensor, explain_clip
from normgrad.video.read import VIDEO_SUFFIXES, VOLUME_SUFFIXES, Clip, is_clip_path, read_clip
from normgrad.video.write import strip, write_clip

__all__ = [
    "VIDEO_SUFFIXES",
    "VOLUME_SUFFIXES",
    "Clip",
    "ClipResult",
    "clip_tensor",
    "explain_clip",
    "is_clip_path",
    "read_clip",
    "strip",
    "write_clip",
]
