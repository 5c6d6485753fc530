"""The field's anchors, from pytorch-grad-cam (optional extra ``captum``; RefineCAM needs grad-cam ≥ 1.5.7).

=============  ===========================================================  ======================
anchor         per layer, before ReLU, upsampling and min-max scaling        layers combined by
=============  ===========================================================  ======================
``GradCAM``    ``Σ_c mean_u(g_{u,c}) · a_{u,c}``                            mean (grad-cam's own)
``GradCAM++``  ``Σ_c w_c a_{u,c}``, ``w_c`` from 2nd/3rd-order terms         mean
``HiResCAM``   ``Σ_c g_{u,c} a_{u,c}`` (= normgrad's ``scaling+sum``)        mean
``LayerCAM``   ``Σ_c max(g_{u,c}, 0) a_{u,c}``                              mean
``RefineCAM``  GradCAM++ per layer                                           product (its own)
=============  ===========================================================  ======================

Each runs through pytorch-grad-cam's own classes on the layers given (the
explain default's, for a side-by-side), with ``ClassifierOutputTarget``
(the target logit, as normgrad's default objective), and returns its final
map at the input size, (N, 1, H, W) float32 in [0, 1].  pytorch-grad-cam
sets the model to eval mode, registers hooks and writes ``param.grad``; here
hooks are released, and every training flag and ``.grad`` restored, even on
errors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from normgrad.errors import NormGradError, did_you_mean

ANCHORS = ("GradCAM", "GradCAM++", "HiResCAM", "LayerCAM", "RefineCAM")
MINIMUM_VERSION = "1.5.7"


def _classes() -> dict:
    try:
        import pytorch_grad_cam as cams
        from pytorch_grad_cam.refine_cam import RefineCAM
    except ImportError as error:
        raise NormGradError(f"the anchors need pytorch-grad-cam ≥ {MINIMUM_VERSION}: pip install 'normgrad[captum]' ({error})") from error
    return {
        "GradCAM": cams.GradCAM,
        "GradCAM++": cams.GradCAMPlusPlus,
        "HiResCAM": cams.HiResCAM,
        "LayerCAM": cams.LayerCAM,
        "RefineCAM": RefineCAM,
    }


def anchor_maps(name: str, model: nn.Module, inputs: Tensor, targets: Tensor, layers: Sequence[str]) -> Tensor:
    """The anchor ``name``'s maps of ``inputs`` (N, C, H, W) for ``targets`` (N,) on ``layers`` (module names): (N, 1, H, W)."""
    if name not in ANCHORS:
        raise NormGradError(f"unknown anchor {name!r}{did_you_mean(name, ANCHORS)}; valid: {', '.join(ANCHORS)}")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    modules = dict(model.named_modules())
    missing = [layer for layer in layers if layer not in modules]
    if missing or not layers:
        raise NormGradError(f"anchor layers must be module names of the model; unknown: {missing or 'none given'}")
    flags = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    cam = _classes()[name](model=model, target_layers=[modules[layer] for layer in layers])
    try:
        with torch.enable_grad():
            out = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    finally:
        for release in [getattr(c, "activations_and_grads", None) for c in getattr(cam, "base_cam_per_layer", [cam])]:
            if release is not None:
                release.release()
        for module, training in flags:
            module.training = training
        for parameter, grad in grads:
            parameter.grad = grad
    return torch.from_numpy(out).float()[:, None]
