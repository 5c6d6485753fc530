"""Training-data attribution at the pixel level: which locations of which training images drive a prediction.

==============  ==============================================================
module          job
==============  ==============================================================
``bilinear``    the closed forms: per-example gradients, per-location terms
``capture``     one forward/backward with every chosen layer's ``p`` and ``q``
``tracin``      :class:`TracIn`: checkpoints, test gradients, scores, maps,
                self-influence
==============  ==============================================================
"""

from normgrad.influence.tracin import InfluenceMaps, TestGradients, TracIn

__all__ = ["InfluenceMaps", "TestGradients", "TracIn"]
