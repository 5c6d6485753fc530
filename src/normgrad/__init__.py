"""normgrad: training-centric saliency for PyTorch models.

>>> import normgrad as ng
>>> maps = ng.normgrad(model, images, layers=["layer2", "layer3", "layer4"])
>>> combined = ng.combine(maps, size=images.shape[-2:])
>>> result = ng.explain("photos/")              # maps at each photo's size, in memory
>>> ng.explain("photos/", "maps/", resume=True)   # into a folder, as `normgrad explain photos/ --out maps/`
"""

from normgrad.combine import COMBINE_MODES, combine, normalize, upsample
from normgrad.engine.layers import INPUT, layer_names, select_layers
from normgrad.errors import NormGradError
from normgrad.formulas.aggregate import AGGREGATES
from normgrad.formulas.extract import EXTRACTS
from normgrad.meta import WithParameters, meta_saliency
from normgrad.methods import normgrad, normgrad_selective, saliency
from normgrad.run import Explained, ExplainOptions, RunResult, explain
from normgrad.segmentation import Region
from normgrad.store.reader import open_run
from normgrad.targets import TrainingLoss, Unit
from normgrad.tracin import TracIn, influence, self_influence

__version__ = "0.1.0"

_SUBMODULES = {"baselines", "captum", "cli", "engine", "evaluation", "huggingface", "images", "models", "registry", "viz"}


def __getattr__(name: str):
    """Submodules with optional dependencies load on first use: ``ng.captum``, ``ng.models``, ``ng.viz``, ..."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"normgrad.{name}")
    raise AttributeError(f"module 'normgrad' has no attribute {name!r}")


__all__ = [
    "AGGREGATES",
    "COMBINE_MODES",
    "EXTRACTS",
    "ExplainOptions",
    "Explained",
    "INPUT",
    "NormGradError",
    "Region",
    "RunResult",
    "TracIn",
    "TrainingLoss",
    "Unit",
    "WithParameters",
    "__version__",
    "combine",
    "explain",
    "influence",
    "layer_names",
    "meta_saliency",
    "normalize",
    "normgrad",
    "normgrad_selective",
    "open_run",
    "saliency",
    "select_layers",
    "self_influence",
    "upsample",
]
