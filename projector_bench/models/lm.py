"""The language model's share of end-to-end cost: the ops of a LLaMA decoder's prefill and decode steps.

A projector's real price includes what its tokens cost the language model: LDP's 576 → 144 cut shortens
the prefill 4×. The LM is too large to run here, so its ops are written down from its dimensions (as
`ops.Op` rows, the same as `roofline.trace_ops`) and priced by the same roofline.
Per layer: RMSNorm, Q/K/V/O projections, causal attention (Q·Kᵀ and A·V over the cached keys), RMSNorm,
SwiGLU MLP (gate, up, down); then the final norm and the LM head for the last position.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.errors import ConfigError
from ..core.ops import Op

ACT_BYTES = 2  # fp16 activations and KV cache


@dataclass(frozen=True)
class LanguageModel:
    """A LLaMA-style decoder by its dimensions; `weight_bits` as deployed (16 = fp16, 4.5 ≈ q4_k)."""

    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    weight_bits: float = 16
    dtype: str = "fp16"
    prompt_tokens: int = 32
    kv_heads: int = 0  # grouped-query attention: key/value heads (0 = `heads`, plain multi-head attention)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> LanguageModel:
        """From a `conf/lm/*.yaml` mapping, with one-line errors for bad values."""
        lm = cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})
        for k in ("hidden", "layers", "heads", "intermediate", "vocab"):
            if not isinstance(getattr(lm, k), int) or getattr(lm, k) <= 0:
                raise ConfigError(f"lm.{k} must be a positive integer, got {getattr(lm, k)!r}")
        if lm.hidden % lm.heads:
            raise ConfigError(f"lm.hidden={lm.hidden} is not a multiple of lm.heads={lm.heads}")
        if not isinstance(lm.kv_heads, int) or lm.kv_heads < 0 or (lm.kv_heads and lm.heads % lm.kv_heads):
            raise ConfigError(f"lm.kv_heads must be 0 (= heads) or divide lm.heads={lm.heads}, got {lm.kv_heads!r}")
        if not 0 < lm.weight_bits <= 32 or lm.prompt_tokens < 0:
            raise ConfigError(f"lm.weight_bits must be in (0, 32] and lm.prompt_tokens >= 0, "
                              f"got {lm.weight_bits}, {lm.prompt_tokens}")
        return lm

    @property
    def kv_dim(self) -> int:
        """Width of the keys (and of the values): `hidden` unless grouped-query attention shares them."""
        return self.hidden // self.heads * (self.kv_heads or self.heads)

    @property
    def params(self) -> int:
        """Parameters: untied embedding and head, Q/K/V/O and 3 MLP matrices and 2 norms per layer, final norm."""
        per_layer = (2 * self.hidden**2 + 2 * self.hidden * self.kv_dim + 3 * self.hidden * self.intermediate
                     + 2 * self.hidden)
        return 2 * self.vocab * self.hidden + self.layers * per_layer + self.hidden

    def _weights(self, rows: int, cols: int) -> int:
        return int(rows * cols * self.weight_bits / 8)

    def _matmul(self, tokens: int, k: int, n: int) -> Op:
        return Op("matmul", self.dtype, 2 * tokens * k * n, self._weights(k, n) + ACT_BYTES * tokens * (k + n),
                  self.layers)

    def step_ops(self, tokens: int, past: int) -> list[Op]:
        """Ops of one forward over `tokens` new positions after `past` cached ones (prefill: past=0)."""
        h, t, ctx = self.hidden, tokens, past + tokens
        act = ACT_BYTES * t * h
        # causal attention: position i attends to past + i + 1 keys; Q·Kᵀ and A·V are each h MACs per pair
        pairs = t * past + t * (t + 1) // 2
        kv_bytes = 2 * ACT_BYTES * ctx * self.kv_dim  # K and V read back from the cache
        return [
            Op("reduction", self.dtype, t * h, 2 * act, 2 * self.layers),  # the two RMSNorms
            self._matmul(t, h, h + 2 * self.kv_dim),  # Q, K, V
            Op("attention", self.dtype, 4 * pairs * h, kv_bytes + 2 * act, self.layers),
            self._matmul(t, h, h),  # O
            Op("elementwise", self.dtype, t * h, 3 * act, 2 * self.layers),  # the two residual adds
            self._matmul(t, h, 2 * self.intermediate),  # gate and up
            Op("elementwise", self.dtype, t * self.intermediate,
               3 * ACT_BYTES * t * self.intermediate, self.layers),  # SiLU·up
            self._matmul(t, self.intermediate, h),  # down
            Op("matmul", self.dtype, 2 * h * self.vocab,
               self._weights(h, self.vocab) + ACT_BYTES * (h + self.vocab), 1),  # head, last position
        ]

    def prefill_ops(self, visual_tokens: int) -> list[Op]:
        """The prefill of the visual tokens and the prompt: what stands between the image and the first answer token."""
        return self.step_ops(visual_tokens + self.prompt_tokens, 0)

    def decode_ops(self, context: int) -> list[Op]:
        """One decode step after `context` positions (memory-bound: every weight is read once per token)."""
        return self.step_ops(1, context)
