"""The public saliency functions: one extract × aggregate, and its named points.

=====================  =================  =================  =====================================
method                 extract            aggregate          map at location ``u``
=====================  =================  =================  =====================================
``normgrad``           ``conv1x1``        ``norm``           ``‖g_u‖·‖a_u‖``
``normgrad_selective`` ``scaling``        ``positive_norm``  ``‖max(0, a_u ⊙ g_u)‖``
gradient × input       ``scaling``        ``sum``            ``Σ_c a_{u,c} g_{u,c}``
gradient               ``bias``           ``norm``           ``‖g_u‖``
=====================  =================  =================  =====================================
"""

from __future__ import annotations

from torch import Tensor, nn

from normgrad.engine.layers import Layers
from normgrad.engine.single_pass import PerLayer, run_saliency
from normgrad.targets import Target


def saliency(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    *,
    layers: Layers,
    extract: str = "conv1x1",
    aggregate: str = "norm",
    per_layer: PerLayer | None = None,
) -> dict[str, Tensor]:
    """Saliency maps of ``layers`` for one extract × aggregate, in one forward/backward pass.

    Returns ``{layer name: (N, 1, h, w) float32 map}`` at each layer's own
    resolution, in the order of ``layers``.  ``per_layer`` gives some layers
    their own pair, ``{"layer3": ("scaling", "positive_norm"), "layer4":
    ("scaling", "sum")}``, still in the same single pass.  The model runs in
    eval mode and is left exactly as it was.
    """
    return run_saliency(model, inputs, target, layers, extract, aggregate, per_layer)


def normgrad(model: nn.Module, inputs: Tensor, target: Target = None, *, layers: Layers, extract: str = "conv1x1") -> dict[str, Tensor]:
    """NormGrad: ``s_u = ‖g_u a_uᵀ‖_F = ‖g_u‖·‖a_u‖`` (virtual identity 1×1 conv).

    ``extract="layer"`` uses each layer's own weights instead:
    ``s_u = sqrt(Σ_groups ‖g_u^(j)‖²·‖P_u(x^(j))‖²)``.
    """
    return run_saliency(model, inputs, target, layers, extract, "norm")


def normgrad_selective(model: nn.Module, inputs: Tensor, target: Target = None, *, layers: Layers) -> dict[str, Tensor]:
    """Selective NormGrad: ``s_u = ‖max(0, a_u ⊙ g_u)‖`` (scaling extract, positive norm)."""
    return run_saliency(model, inputs, target, layers, "scaling", "positive_norm")
