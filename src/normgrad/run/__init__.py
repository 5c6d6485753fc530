"""The run of ``normgrad explain`` as a library: :func:`explain` over folders, globs, paths, datasets and tensors.

==================  ===========================================================================================
module              job
==================  ===========================================================================================
``api``             :func:`explain` / :func:`run`: in memory, or into a folder (rank 0 plans, every rank explains)
``options``         :class:`ExplainOptions`, the typed options, checked once before the model loads
``inputs``          what ``inputs`` may be (paths, Dataset, DataLoader, tensor) and how each is read
``files``           finding image files: folders walked, globs matched, each image once
``loading``         reader processes, preprocessing, batches of one input size
``plan``            the model, method, layers, target, input sizes, settings; the output folder's plan
``batch_size``      the batch size chosen from the activations' memory and the device
``loop``            the batch loop: predictions, maps, maps at each image's size
``records``         one image's result in memory, and its files and record in a folder
``writers``         background threads writing outputs
``shard``           ``torchrun`` sharding
``report``          lines and progress bars for the user
==================  ===========================================================================================
"""

from normgrad.run.api import RunResult, explain, run
from normgrad.run.options import COMBINE_CHOICES, MAP_DTYPES, OVERLAY_FORMATS, PREDICT_AT, STORAGES, TASKS, ExplainOptions
from normgrad.run.records import Explained

__all__ = [
    "COMBINE_CHOICES",
    "MAP_DTYPES",
    "OVERLAY_FORMATS",
    "PREDICT_AT",
    "STORAGES",
    "TASKS",
    "ExplainOptions",
    "Explained",
    "RunResult",
    "explain",
    "run",
]
