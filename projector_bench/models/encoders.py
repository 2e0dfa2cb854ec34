"""Vision encoders as token-grid sources: timm's MobileViT and `EFFICIENT` encoders, one stage's map as `(B, h·w, C)`.

Besides timm's named variants, any MobileViT with other widths, transformer depths or patch size: the named
variant's `ByoModelCfg` (timm's own model-config machinery) with `width_factor`, the blocks' `transformer_depth`
and `patch_size` replaced, built by timm's `build_model_with_cfg` like the named ones.
"""
from __future__ import annotations

import logging
import math
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

import timm
from timm.layers import make_divisible
from timm.models import build_model_with_cfg
from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg
from timm.models.mobilevit import model_cfgs as mobilevit_cfgs
from torch import Tensor, nn

from ..core.errors import ConfigError, first_line
from .projectors.base import Grid

log = logging.getLogger(__name__)

ENCODER_PATTERN = "mobilevit*"
# the fast encoders on-device VLMs use since MobileViT (MobileCLIP / FastVLM's FastViT, EfficientViT, MobileNetV4,
# RepViT, TinyViT), by timm name: built like the MobileViTs, without custom variants
EFFICIENT = ("fastvit_mci0", "fastvit_t8", "efficientvit_b1", "mobilenetv4_hybrid_medium", "mobilenetv4_conv_small",
             "repvit_m0_9", "tiny_vit_5m_224")


def list_encoders() -> list[str]:
    """timm's MobileViT variants (v1 and v2) and the efficient encoders of `EFFICIENT`."""
    return sorted({*timm.list_models(ENCODER_PATTERN), *EFFICIENT})


@dataclass(frozen=True)
class Variant:
    """How a MobileViT differs from timm's named one: `width` multiplies every channel count (timm's
    `width_factor`, and v1's transformer width); `depth` every MobileViT block's transformer depth (rounded,
    at least 1); `patch_size` (None: timm's, 2) is the blocks' unfold patch."""

    width: float = 1.0
    depth: float = 1.0
    patch_size: int | None = None

    @classmethod
    def from_config(cls, node: Mapping) -> Variant:
        """The variant of an `encoder` (or `accuracy.encoder`) config node; absent keys are timm's values."""
        v = cls(*(1.0 if node.get(k) is None else node.get(k) for k in ("width", "depth")), node.get("patch_size"))
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in (v.width, v.depth)) \
                or (v.patch_size is not None and (not isinstance(v.patch_size, int) or v.patch_size < 1)):
            raise ConfigError(f"encoder width={v.width}, depth={v.depth}, patch_size={v.patch_size}: width and depth "
                              "are positive multipliers, patch_size a positive integer or null")
        name = node.get("name")  # a field that does not change the model (patch_size=2, depth=1.1) is timm's value
        if name in mobilevit_cfgs:
            for f in ("width", "depth", "patch_size"):
                if replace(v, **{f: getattr(cls(), f)}).model_cfg(name) == v.model_cfg(name):
                    v = replace(v, **{f: getattr(cls(), f)})
        return v

    @property
    def named(self) -> bool:
        """Whether this is timm's named variant itself (the one pretrained weights exist for)."""
        return self == Variant()

    def label(self, name: str) -> str:
        """`name`, or `name` with what differs, e.g. `mobilevit_xs-w0.75-d1.5-p4`."""
        diff = [f"{k}{v:g}" for k, v, d in (("w", self.width, 1.0), ("d", self.depth, 1.0)) if v != d]
        return "-".join([name, *diff, *([f"p{self.patch_size}"] if self.patch_size is not None else [])])

    def model_cfg(self, name: str) -> ByoModelCfg:
        """timm's `ByoModelCfg` of `name` with this variant's width, depths and patch size."""
        def block(b: ByoBlockCfg | tuple) -> ByoBlockCfg | tuple:
            if isinstance(b, tuple):
                return tuple(block(x) for x in b)
            if b.type not in ("mobilevit", "mobilevit2"):
                return b
            kw = dict(b.block_kwargs,
                      transformer_depth=max(1, math.floor(b.block_kwargs["transformer_depth"] * self.depth + 0.5)))
            if self.patch_size is not None:
                kw["patch_size"] = self.patch_size
            if "transformer_dim" in kw:  # v1 states it; v2 derives it from the (scaled) channels
                kw["transformer_dim"] = make_divisible(kw["transformer_dim"] * self.width, 8)
            return replace(b, block_kwargs=kw)

        base = mobilevit_cfgs[name]
        return replace(base, blocks=block(base.blocks), width_factor=base.width_factor * self.width)


def _cached_pretrained_file(name: str) -> str | None:
    """Path of timm's default pretrained weights for `name` if they are already in the local hub cache."""
    from huggingface_hub import try_to_load_from_cache

    hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    for filename in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hub_id, filename) if hub_id else None
        if isinstance(hit, str):
            return hit
    return None


def _hub_reachable() -> bool:
    """Whether timm's weight hub can be reached at all (offline mode off, its host name resolves)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
    except OSError:
        return False
    return True


def _weights_plan(name: str, weights: str, variant: Variant) -> tuple[bool, dict | None, str]:
    """(pretrained, timm `pretrained_cfg_overlay`, source) for an `encoder.weights` setting."""
    if weights == "random" or (weights == "auto" and not variant.named):  # no published weights for a custom variant
        return False, None, "random"
    if weights == "pretrained" and not variant.named:
        raise ConfigError(f"encoder {variant.label(name)} has no pretrained weights (timm's are for {name}); "
                          "set encoder.weights to `random`, `auto` or a checkpoint of this variant")
    if weights == "pretrained":
        return True, None, "timm-pretrained"
    if weights == "auto":
        cached = _cached_pretrained_file(name)
        if cached:
            return True, {"file": cached}, "timm-pretrained"
        if _hub_reachable():
            return True, None, "timm-pretrained"
        log.warning("encoder %s: no pretrained weights in the local cache and the hub is unreachable; "
                    "starting from random weights (a checkpoint path in *.weights loads real ones)", name)
        return False, None, "random"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"encoder checkpoint {weights!r} does not exist; set encoder.weights to a file, `auto`, "
                          "`pretrained` or `random`")
    return True, {"file": str(path)}, f"checkpoint:{path}"


class TimmEncoder(nn.Module):
    """A timm model truncated at one stage; `forward(images)` returns `(tokens, grid)`.

    `weights`: `auto` (timm's pretrained weights from the local cache, or fetched if the hub can be
    reached; else random with a one-line notice), `pretrained` (fetch them or fail), `random`, or a checkpoint path
    (a state dict of the full timm model, loaded through timm's own `pretrained_cfg_overlay`).
    `self.weights_source` says which was used. `variant`: other widths, depths, patch size (`Variant`);
    a custom variant has no published weights, so `auto` means random for it. `self.name` is its label.
    """

    def __init__(self, name: str, stage: int = -1, weights: str = "auto", variant: Variant | None = None) -> None:
        super().__init__()
        if name not in list_encoders():
            raise ConfigError(f"unknown encoder {name!r}; choose one of: none, {', '.join(list_encoders())}")
        self.variant = variant or Variant()
        if not self.variant.named and name not in mobilevit_cfgs:
            raise ConfigError(f"encoder.width, depth and patch_size make MobileViT variants; {name} has only its named "
                              "form: set them to 1.0, 1.0 and null")
        self.name, self.stage = self.variant.label(name), stage
        pretrained, overlay, self.weights_source = _weights_plan(name, weights, self.variant)
        try:
            self.model = self._build(name, stage, pretrained, overlay)
        except IndexError as e:
            raise ConfigError(f"encoder {name} has no stage {stage}; use -5..4 (-1 is the last)") from e
        except (OSError, RuntimeError) as e:
            if not pretrained:
                raise
            if weights != "auto":
                raise ConfigError(f"could not load weights for encoder {name} "
                                  f"({first_line(e, typed=True)}); "
                                  "set encoder.weights to `random` or a local checkpoint path") from e
            log.warning("encoder %s: pretrained weights could not be fetched (%s); starting from random weights", name,
                        type(e).__name__)
            self.model, self.weights_source = self._build(name, stage, False, None), "random"
        self.channels: int = self.model.feature_info.channels()[-1]

    def _build(self, name: str, stage: int, pretrained: bool, overlay: dict | None) -> nn.Module:
        kw = {"pretrained": pretrained, "pretrained_cfg_overlay": overlay, "features_only": True,
              "out_indices": (stage,)}
        if self.variant.named:
            model = timm.create_model(name, **kw)
            stages = getattr(model, "_stage_out_idx", None)
            if isinstance(stages, dict) and getattr(model, "feature_hooks", 0) is None \
                    and isinstance(model.blocks, nn.Sequential):
                # timm's MobileNetV3Features (MobileNetV4) runs every block whatever stage is asked for: keep the
                # blocks up to that stage (stage k is the output of block k-1; 0 the stem's), so what runs is counted
                model.blocks = model.blocks[:max(stages)]
            return model
        return build_model_with_cfg(ByobNet, name, model_cfg=self.variant.model_cfg(name),
                                    feature_cfg={"flatten_sequential": True}, **kw)

    def forward(self, images: Tensor) -> tuple[Tensor, Grid]:
        fmap = self.model(images)[-1]
        return fmap.flatten(2).transpose(1, 2), (fmap.shape[-2], fmap.shape[-1])


def create_encoder(name: str, stage: int = -1, weights: str = "auto", variant: Variant | None = None) -> TimmEncoder:
    """Build a token-grid encoder by timm name (`list_encoders()`; a MobileViT also by `variant`)."""
    return TimmEncoder(name, stage, weights, variant)
