"""Vision encoders as token-grid sources: timm's MobileViT family, one stage's map as `(B, h·w, C)`."""
from __future__ import annotations

import logging
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
from torch import Tensor, nn

from .errors import ConfigError
from .projectors.base import Grid

log = logging.getLogger(__name__)

ENCODER_PATTERN = "mobilevit*"


def list_encoders() -> list[str]:
    """timm's MobileViT variants (v1 and v2)."""
    return timm.list_models(ENCODER_PATTERN)


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


def _weights_plan(name: str, weights: str) -> tuple[bool, dict | None, str]:
    """(pretrained, timm `pretrained_cfg_overlay`, source) for an `encoder.weights` setting."""
    if weights == "random":
        return False, None, "random"
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
        raise ConfigError(f"encoder checkpoint {weights!r} does not exist; set encoder.weights to a file, `auto`, `pretrained` or `random`")
    return True, {"file": str(path)}, f"checkpoint:{path}"


class TimmEncoder(nn.Module):
    """A timm model truncated at one stage; `forward(images)` returns `(tokens, grid)`.

    `weights`: `auto` (timm's pretrained weights from the local cache, or fetched if the hub can be
    reached; else random with a one-line notice), `pretrained` (fetch them or fail), `random`, or a checkpoint path
    (a state dict of the full timm model, loaded through timm's own `pretrained_cfg_overlay`).
    `self.weights_source` says which was used.
    """

    def __init__(self, name: str, stage: int = -1, weights: str = "auto") -> None:
        super().__init__()
        if name not in list_encoders():
            raise ConfigError(f"unknown encoder {name!r}; choose one of: none, {', '.join(list_encoders())}")
        self.name, self.stage = name, stage
        pretrained, overlay, self.weights_source = _weights_plan(name, weights)
        try:
            self.model = self._build(name, stage, pretrained, overlay)
        except IndexError as e:
            raise ConfigError(f"encoder {name} has no stage {stage}; use -5..4 (-1 is the last)") from e
        except (OSError, RuntimeError) as e:
            if not pretrained:
                raise
            if weights != "auto":
                raise ConfigError(f"could not load weights for encoder {name} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                                  "set encoder.weights to `random` or a local checkpoint path") from e
            log.warning("encoder %s: pretrained weights could not be fetched (%s); starting from random weights", name, type(e).__name__)
            self.model, self.weights_source = self._build(name, stage, False, None), "random"
        self.channels: int = self.model.feature_info.channels()[-1]

    @staticmethod
    def _build(name: str, stage: int, pretrained: bool, overlay: dict | None) -> nn.Module:
        return timm.create_model(name, pretrained=pretrained, pretrained_cfg_overlay=overlay,
                                 features_only=True, out_indices=(stage,))

    def forward(self, images: Tensor) -> tuple[Tensor, Grid]:
        fmap = self.model(images)[-1]
        return fmap.flatten(2).transpose(1, 2), (fmap.shape[-2], fmap.shape[-1])


def create_encoder(name: str, stage: int = -1, weights: str = "auto") -> TimmEncoder:
    """Build a token-grid encoder from timm's MobileViT family by name."""
    return TimmEncoder(name, stage, weights)
