"""The architecture zoo of the test matrix: torchvision, timm and Hugging Face families, random weights, small inputs.

Each entry builds a small member of a family (fewer blocks or channels where
the family allows it, so that a CPU runs the whole matrix in minutes) and
gives an input size — non-square wherever the model accepts it, so that a
transposed grid cannot pass.  ``informative`` re-initialises what families
initialise to zero or nearly (classifier heads, LayerScale gammas) so that
the maps are not trivially zero.  Hugging Face models are built from tiny
configs (no download) and need ``transformers`` (``requires``); segmenters
are explained with a region target (a class inside a box).

Video and volume models take clips (N, 3, T, H, W): ``frames`` is T.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torchvision
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.maxvit import MaxVit
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.video.mvit import MSBlockConfig, MViT
from torchvision.models.vision_transformer import VisionTransformer

from normgrad.segmentation import Region

NUM_CLASSES = 10


@dataclass
class Arch:
    build: Callable[[], nn.Module]
    size: tuple[int, int] = (64, 96)
    target: Any = None  # None: the predicted class; a callable for dict outputs
    unused_parameters: bool = False  # parameters the eval forward never uses (aux heads, caches)
    notes: dict[str, Any] = field(default_factory=dict)
    requires: str | None = None  # an optional library the family needs (tests skip without it)
    frames: int | None = None  # T of a video or volume input (N, 3, T, H, W); None for images

    @property
    def shape(self) -> tuple[int, ...]:
        """The input of one sample: (3, H, W) or (3, T, H, W)."""
        return (3, *self.size) if self.frames is None else (3, self.frames, *self.size)


def _timm(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)


def _segmentation_target(output: dict) -> torch.Tensor:
    return output["out"][:, 1].mean((1, 2))


def _fcn_small(num_classes: int) -> nn.Module:
    """torchvision's fcn_resnet50 design (dilated backbone at stride 8, "out" and "aux" heads), one bottleneck per stage."""
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.resnet import Bottleneck, ResNet
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    backbone = ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=16, replace_stride_with_dilation=[False, True, True])
    layers = IntermediateLayerGetter(backbone, return_layers={"layer4": "out", "layer3": "aux"})
    return FCN(layers, FCNHead(2048, num_classes), FCNHead(1024, num_classes))


SEGMENT_REGION = Region(1, box=(8, 16, 56, 48))  # class 1 inside a box of the 64×96 input (x0, y0, x1, y1)


def _hf(model_class: str, config_class: str, **config: Any) -> Callable[[], nn.Module]:
    """A tiny Hugging Face model built from a config: random weights, nothing downloaded."""

    def build() -> nn.Module:
        import transformers

        return getattr(transformers, model_class)(getattr(transformers, config_class)(**config))

    return build


_HF_VIT = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, patch_size=16, num_labels=NUM_CLASSES)


def _volume_segmentation_target(output: torch.Tensor) -> torch.Tensor:
    return output[:, 1].mean((1, 2, 3))


def _tiny_mvit(v2: bool) -> MViT:
    """torchvision's MViT (v1 or v2 settings: residual pooling, relative positions) with four small blocks, for 4×64×96 clips."""

    def block(heads: int, channels_in: int, channels_out: int, stride_q: int, stride_kv: int) -> MSBlockConfig:
        return MSBlockConfig(heads, channels_in, channels_out, [3, 3, 3], [3, 3, 3], [1, stride_q, stride_q], [1, stride_kv, stride_kv])

    blocks = [block(1, 16, 32, 1, 4), block(2, 32, 32, 2, 2), block(2, 32, 64, 1, 2), block(2, 64, 64, 2, 1)]
    return MViT(
        (64, 96), 4, blocks, residual_pool=v2, residual_with_cls_embed=not v2, rel_pos_embed=v2, proj_after_attn=v2, num_classes=NUM_CLASSES
    )


def _s3d() -> nn.Module:
    """torchvision's S3D; its fixed 2×7×7 average pool needs 16×224×224 clips, so the pool adapts to small ones."""
    model = torchvision.models.video.s3d(num_classes=NUM_CLASSES)
    model.avgpool = nn.AdaptiveAvgPool3d(1)
    return model


class UNet3d(nn.Module):
    """A small 3-D U-Net (two levels down, skip connections, transposed convolutions up): per-voxel logits (N, K, D, H, W)."""

    def __init__(self, channels: int = 8, classes: int = 3) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))

        self.enc1, self.enc2, self.enc3 = block(3, channels), block(channels, 2 * channels), block(2 * channels, 4 * channels)
        self.pool = nn.MaxPool3d(2)
        self.bottom = block(4 * channels, 4 * channels)
        self.up3 = nn.ConvTranspose3d(4 * channels, 4 * channels, 2, stride=2)
        self.dec3 = block(8 * channels, 2 * channels)
        self.up2 = nn.ConvTranspose3d(2 * channels, 2 * channels, 2, stride=2)
        self.dec2 = block(4 * channels, channels)
        self.up1 = nn.ConvTranspose3d(channels, channels, 2, stride=2)
        self.dec1 = block(2 * channels, channels)
        self.head = nn.Conv3d(channels, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        bottom = self.bottom(self.pool(e3))
        d3 = self.dec3(torch.cat([self.up3(bottom), e3], 1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


ARCHITECTURES: dict[str, Arch] = {
    # torchvision
    "tv_resnet18": Arch(lambda: torchvision.models.resnet18(num_classes=NUM_CLASSES)),
    "tv_regnet_y_400mf": Arch(lambda: torchvision.models.regnet_y_400mf(num_classes=NUM_CLASSES)),
    "tv_densenet121": Arch(lambda: torchvision.models.densenet121(num_classes=NUM_CLASSES)),
    "tv_mobilenet_v3_small": Arch(lambda: torchvision.models.mobilenet_v3_small(num_classes=NUM_CLASSES)),
    "tv_googlenet_aux": Arch(
        lambda: torchvision.models.googlenet(num_classes=NUM_CLASSES, aux_logits=True, init_weights=False), unused_parameters=True
    ),
    "tv_inception_v3_aux": Arch(
        lambda: torchvision.models.inception_v3(num_classes=NUM_CLASSES, aux_logits=True, init_weights=False),
        size=(96, 128),
        unused_parameters=True,
    ),
    "tv_convnext": Arch(
        lambda: ConvNeXt(
            [CNBlockConfig(24, 48, 2), CNBlockConfig(48, 96, 2), CNBlockConfig(96, 192, 2), CNBlockConfig(192, None, 2)],
            num_classes=NUM_CLASSES,
        )
    ),
    "tv_swin": Arch(
        lambda: SwinTransformer([4, 4], 24, [2, 2, 2, 2], [1, 2, 2, 4], [4, 4], stochastic_depth_prob=0.0, num_classes=NUM_CLASSES)
    ),
    "tv_vit": Arch(
        lambda: VisionTransformer(image_size=64, patch_size=16, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10),
        size=(64, 64),  # torchvision's ViT takes its image_size only
    ),
    "tv_maxvit": Arch(
        lambda: MaxVit((224, 224), 16, 7, [16, 32, 64, 128], [1, 1, 1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=NUM_CLASSES),
        size=(224, 224),  # every stage must be a multiple of the 7×7 partition
    ),
    "tv_lraspp_segmentation": Arch(
        lambda: torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights_backbone=None, num_classes=5),
        target=_segmentation_target,
    ),
    # timm
    "timm_vit": Arch(_timm("vit_tiny_patch16_224", img_size=(64, 96), depth=5)),
    "timm_deit_distilled": Arch(_timm("deit_tiny_distilled_patch16_224", img_size=(64, 96), depth=3)),
    "timm_vit_registers": Arch(
        _timm("vit_small_patch14_reg4_dinov2", img_size=(56, 84), depth=3, embed_dim=64, num_heads=2), size=(56, 84)
    ),
    "timm_eva02": Arch(_timm("eva02_tiny_patch14_224", img_size=(56, 84), depth=3), size=(56, 84)),
    "timm_cait": Arch(_timm("cait_xxs24_224", img_size=(64, 96), depth=3)),
    "timm_swin": Arch(
        _timm("swin_tiny_patch4_window7_224", img_size=(64, 96), embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4)
    ),
    "timm_maxvit": Arch(_timm("test_maxvit", img_size=(64, 96))),
    "timm_coatnet": Arch(_timm("test_coatnet", img_size=(64, 96))),
    "timm_convnext": Arch(_timm("convnext_atto")),
    "timm_efficientformer": Arch(_timm("efficientformer_l1"), size=(224, 224)),  # attention biases for 7×7
    "timm_mobilevit": Arch(_timm("mobilevit_xxs")),
    "timm_edgenext": Arch(_timm("edgenext_xx_small")),
    "timm_poolformer": Arch(_timm("poolformerv2_s12")),
    "timm_levit": Arch(_timm("levit_128s", img_size=(64, 96))),
    "timm_mambaout": Arch(_timm("test_mambaout")),
    "timm_pvt_v2": Arch(_timm("pvt_v2_b0")),
    # torchvision segmenters (dict outputs), explained inside a region
    "tv_fcn_segmentation": Arch(
        lambda: _fcn_small(num_classes=5),
        target=SEGMENT_REGION,
        unused_parameters=True,  # the aux head runs, but the loss reads "out" only
    ),
    "tv_deeplabv3_segmentation": Arch(
        lambda: torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5),
        target=SEGMENT_REGION,
    ),
    # Hugging Face transformers (ModelOutput outputs), tiny configs
    "hf_vit": Arch(_hf("ViTForImageClassification", "ViTConfig", image_size=(64, 96), **_HF_VIT), requires="transformers"),
    "hf_deit_distilled": Arch(
        _hf("DeiTForImageClassificationWithTeacher", "DeiTConfig", image_size=(64, 96), **_HF_VIT), requires="transformers"
    ),
    "hf_beit": Arch(
        _hf("BeitForImageClassification", "BeitConfig", image_size=64, use_relative_position_bias=True, **_HF_VIT), requires="transformers"
    ),
    "hf_data2vec_vision": Arch(
        _hf("Data2VecVisionForImageClassification", "Data2VecVisionConfig", image_size=64, **_HF_VIT), requires="transformers"
    ),
    "hf_dinov2": Arch(
        _hf("Dinov2ForImageClassification", "Dinov2Config", image_size=64, **{**_HF_VIT, "patch_size": 8}), requires="transformers"
    ),
    "hf_swin": Arch(
        _hf(
            "SwinForImageClassification",
            "SwinConfig",
            image_size=128,
            embed_dim=16,
            depths=[1, 1, 2, 1],
            num_heads=[1, 1, 2, 2],
            window_size=4,
            num_labels=NUM_CLASSES,
        ),
        size=(128, 192),  # the last stage (4×6) holds at least one 4×4 window
        requires="transformers",
    ),
    "hf_convnext": Arch(
        _hf("ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 2, 1], num_labels=NUM_CLASSES),
        requires="transformers",
    ),
    "hf_resnet": Arch(
        _hf(
            "ResNetForImageClassification",
            "ResNetConfig",
            embedding_size=8,
            hidden_sizes=[8, 16, 32, 64],
            depths=[1, 1, 1, 1],
            num_labels=NUM_CLASSES,
        ),
        requires="transformers",
    ),
    "hf_mobilevit": Arch(
        _hf(
            "MobileViTForImageClassification",
            "MobileViTConfig",
            image_size=64,
            hidden_sizes=[16, 24, 32],
            neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32],
            num_labels=NUM_CLASSES,
            initializer_range=0.15,  # the default 0.02 shrinks the signal 50-fold per convolution of this tiny model
        ),
        requires="transformers",
    ),
    "hf_segformer": Arch(
        _hf(
            "SegformerForSemanticSegmentation",
            "SegformerConfig",
            hidden_sizes=[8, 16, 24, 32],
            depths=[1, 1, 1, 1],
            num_attention_heads=[1, 1, 2, 2],
            decoder_hidden_size=16,
            num_labels=5,
        ),
        target=SEGMENT_REGION,  # logits at 1/4 of the input: the box is mapped onto them
        requires="transformers",
    ),
    # videos and volumes
    "tv_r3d_18": Arch(lambda: torchvision.models.video.r3d_18(num_classes=NUM_CLASSES), size=(32, 48), frames=4),
    "tv_mc3_18": Arch(lambda: torchvision.models.video.mc3_18(num_classes=NUM_CLASSES), size=(32, 48), frames=4),
    "tv_r2plus1d_18": Arch(lambda: torchvision.models.video.r2plus1d_18(num_classes=NUM_CLASSES), size=(32, 48), frames=4),
    "tv_s3d": Arch(_s3d, size=(32, 48), frames=8),
    "tv_mvit_v1": Arch(lambda: _tiny_mvit(v2=False), size=(64, 96), frames=4),
    "tv_mvit_v2": Arch(lambda: _tiny_mvit(v2=True), size=(64, 96), frames=4),
    "unet3d_volume": Arch(UNet3d, size=(32, 48), frames=16, target=_volume_segmentation_target),
}

FAST = ("tv_swin", "timm_vit", "timm_levit", "hf_segformer", "tv_mvit_v2")  # in the default run; the rest are marked slow


def informative(model: nn.Module) -> nn.Module:
    """Re-initialise what families set to zero (or 1e-5) at init, so that random-weight maps carry signal."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("gamma") or "layer_scale" in name:  # LayerScale: 1e-5 or 1e-6 at init
                parameter.copy_(0.5 + torch.rand(parameter.shape, generator=generator))
            elif parameter.dim() >= 2 and not parameter.any():  # a zero-initialised head or projection
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None:
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) - 0.5)
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
    return model
