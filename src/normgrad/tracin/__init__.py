"""Training-data attribution at the pixel level: which locations of which training images drive a prediction.

==============  ==============================================================
module          job
==============  ==============================================================
``bilinear``    the closed forms: per-example gradients, per-location terms
``capture``     one forward/backward with every chosen layer's ``p`` and ``q``
``method``      :class:`TracIn`: checkpoints, test gradients, scores, maps,
                self-influence
``product``     :func:`influence` (top proponents and opponents with pixel
                maps) and :func:`self_influence` (mislabel candidates)
==============  ==============================================================
"""

from normgrad.tracin.method import InfluenceMaps, TestGradients, TracIn, load_checkpoint
from normgrad.tracin.product import Influence, SelfInfluence, influence, pixel_map, self_influence

__all__ = [
    "Influence",
    "InfluenceMaps",
    "SelfInfluence",
    "TestGradients",
    "TracIn",
    "influence",
    "load_checkpoint",
    "pixel_map",
    "self_influence",
]
