"""ROAR and KAR (Hooker et al., NeurIPS 2019): retrain from scratch without (or with only) the top pixels.

For each method and fraction ``k``, every training and test image is
modified by the method's map computed with the trained model:

* ROAR — *remove* the top-``k`` pixels (set them to the dataset mean);
* KAR — *keep* only the top-``k`` pixels (the rest set to the mean).

A fresh model is trained on the modified training images, one per seed
(the same seeds, hence the same initialisation and data order, for every
method), and tested on the modified test images.  A method whose top pixels
carry what the model trains on makes ROAR accuracy fall fastest and KAR
accuracy stay highest; random maps are the reference.  The unmodified data
(nothing removed, everything kept) give the reference accuracy.

The maps are computed once per method (:class:`RoarRun`); the retrainings
then run in ``jobs`` worker processes (one thread each), in the background
while the caller does other work, or in this process with ``jobs=0``.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from normgrad.evaluation.training.cnn import TrainConfig, TrainedModel, predictions, train
from normgrad.evaluation.training.masking import keep, remove, tie_breaker, top_mask
from normgrad.evaluation.training.per_image import PAPER_LR
from normgrad.evaluation.training.saliency_maps import method_maps, study_method

MODES = ("roar", "kar")


@dataclass
class RoarResult:
    """Test correctness per [method, mode, fraction, seed, test image]; ``reference`` per [seed, test image]."""

    methods: list[str]
    modes: list[str]
    fractions: list[float]
    seeds: list[int]
    train_images: int
    test_images: int
    config: TrainConfig
    correct: np.ndarray
    reference: np.ndarray
    retrain_seconds: np.ndarray  # [method, mode, fraction, seed]
    map_seconds: dict[str, float]
    seconds: float = 0.0

    def accuracy(self) -> np.ndarray:
        """[method, mode, fraction, seed]."""
        return self.correct.mean(-1)


# ----------------------------------------------------------------------------- one retraining (in a worker or here)

_DATA: dict[str, Any] = {}


def _set_data(inputs: Tensor, labels: Tensor, n_train: int, masks: Tensor, config: TrainConfig, threads: int | None) -> None:
    """Worker initialiser: the images, labels and top-k masks [method, fraction, image], shared by every task."""
    if threads is not None:
        torch.set_num_threads(threads)
    _DATA.update(inputs=inputs, labels=labels, n_train=n_train, masks=masks, config=config)


def _retrain(method: int | None, fraction: int, mode: int, seed: int) -> tuple[np.ndarray, float]:
    """Train on the modified training images (``method=None``: unmodified), test on the modified test images."""
    started = time.perf_counter()
    inputs, labels, n_train = _DATA["inputs"], _DATA["labels"], _DATA["n_train"]
    if method is not None:
        modify = (remove, keep)[mode]
        inputs = modify(inputs, _DATA["masks"][method, fraction], torch.zeros(1, 1, 1))  # fill: the dataset mean
    model = train(inputs[:n_train], labels[:n_train], _DATA["config"], seed)
    hits = (predictions(model, inputs[n_train:]) == labels[n_train:]).numpy()
    return hits, time.perf_counter() - started


class _Inline:
    """The executor interface, run in this process when it is asked (``jobs=0``)."""

    def submit(self, function: Callable[..., Any], *args: Any) -> Any:
        return _Deferred(function, args)

    def shutdown(self, **_: Any) -> None:
        pass


class _Deferred:
    def __init__(self, function: Callable[..., Any], args: tuple) -> None:
        self.function, self.args = function, args

    def result(self) -> Any:
        return self.function(*self.args)


# ----------------------------------------------------------------------------- the run


class RoarRun:
    """Maps and masks now (:meth:`__init__`), retrainings in the background (:meth:`start`), results at :meth:`collect`."""

    def __init__(
        self,
        trained: TrainedModel,
        train_inputs: Tensor,
        train_labels: Tensor,
        test_inputs: Tensor,
        test_labels: Tensor,
        methods: Sequence[str],
        *,
        fractions: Sequence[float],
        seeds: Sequence[int],
        config: TrainConfig,
        layers: Sequence[str],
        seed: int = 0,
        jobs: int = 1,
    ) -> None:
        started = time.perf_counter()
        self.methods, self.fractions, self.seeds, self.config, self.jobs = list(methods), list(fractions), list(seeds), config, jobs
        self.inputs = torch.cat([train_inputs, test_inputs])
        self.labels = torch.cat([train_labels, test_labels])
        self.n_train, self.n_test = len(train_inputs), len(test_inputs)
        ties = tie_breaker(len(self.inputs), *self.inputs.shape[-2:], seed=seed)
        self.map_seconds: dict[str, float] = {}
        masks = []
        for name in self.methods:
            t = time.perf_counter()
            maps = method_maps(study_method(name, PAPER_LR), trained.model, self.inputs, self.labels, layers, seed=seed)
            masks.append(torch.stack([top_mask(maps, fraction, ties) for fraction in self.fractions]))
            self.map_seconds[name] = time.perf_counter() - t
        self.masks = torch.stack(masks)  # [method, fraction, image, 1, H, W]
        self.started = started
        self.futures: dict[tuple, Future | _Deferred] = {}
        self.executor: ProcessPoolExecutor | _Inline | None = None

    @property
    def runs(self) -> int:
        return len(self.seeds) * (1 + len(self.methods) * len(self.fractions) * len(MODES))

    def start(self) -> None:
        """Queue every retraining (in ``jobs`` worker processes, or deferred to :meth:`collect` when ``jobs=0``)."""
        data = (self.inputs, self.labels, self.n_train, self.masks, self.config)
        if self.jobs > 0:
            context = multiprocessing.get_context("spawn")  # no fork of a process whose thread pools are running
            self.executor = ProcessPoolExecutor(self.jobs, mp_context=context, initializer=_set_data, initargs=(*data, 1))
        else:
            _set_data(*data, None)
            self.executor = _Inline()
        for si, seed in enumerate(self.seeds):
            self.futures[("reference", si)] = self.executor.submit(_retrain, None, 0, 0, seed)
        for mi in range(len(self.methods)):
            for ki in range(len(self.fractions)):
                for di in range(len(MODES)):
                    for si, seed in enumerate(self.seeds):
                        self.futures[(mi, di, ki, si)] = self.executor.submit(_retrain, mi, ki, di, seed)

    def collect(self, progress: Callable[[int, str], Any] | None = None) -> RoarResult:
        """Wait for every retraining and assemble the result."""
        if self.executor is None:
            self.start()
        shape = (len(self.methods), len(MODES), len(self.fractions), len(self.seeds))
        correct = np.zeros((*shape, self.n_test), dtype=bool)
        reference = np.zeros((len(self.seeds), self.n_test), dtype=bool)
        seconds = np.zeros(shape)
        bar = progress(self.runs, "ROAR/KAR retraining") if progress else None
        try:
            for key, future in self.futures.items():
                hits, elapsed = future.result()
                if key[0] == "reference":
                    reference[key[1]] = hits
                else:
                    correct[key], seconds[key] = hits, elapsed
                if bar:
                    bar.update(1)
        finally:
            if bar:
                bar.close()
            self.executor.shutdown(cancel_futures=True)  # type: ignore[union-attr]
        return RoarResult(
            self.methods,
            list(MODES),
            self.fractions,
            self.seeds,
            self.n_train,
            self.n_test,
            self.config,
            correct,
            reference,
            seconds,
            self.map_seconds,
            time.perf_counter() - self.started,
        )
