"""The proxy VLM a projector is trained in: the projector, then a small pre-norm transformer over the visual
tokens and one token per question (docs/accuracy.md), and how its questions are batched and scored."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from torch import Tensor, nn

from ..tasks import TaskData


def question_slots(task: TaskData) -> Tensor:
    """`(images, S)` question indices of each image (S = most questions on one image), -1 where it has fewer."""
    counts = torch.bincount(task.image_of, minlength=len(task.images))
    order = torch.argsort(task.image_of, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order)) - starts[task.image_of[order]]
    slots = torch.full((len(task.images), max(1, int(counts.max()))), -1, dtype=torch.long)
    slots[task.image_of[order], rank] = order
    return slots


class PrefixBlock(nn.Module):
    """A pre-norm transformer block in which the image attends to itself and each question token to the
    image and to itself: one attention call for the image, and for the questions their scores against the
    image's keys beside each one's score against its own key (no copy of the image per question)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor, m: int) -> Tensor:
        """`x (B, m + S, W)`: m image tokens, then S question tokens."""
        b, n, w = x.shape
        h, d = self.heads, w // self.heads
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # each (B, H, N, D)
        image = F.scaled_dot_product_attention(q[:, :, :m], k[:, :, :m], v[:, :, :m])
        qt = q[:, :, m:] * d**-0.5
        p = torch.cat([qt @ k[:, :, :m].transpose(-1, -2), (qt * k[:, :, m:]).sum(-1, keepdim=True)], -1).softmax(-1)
        text = p[..., :m] @ v[:, :, :m] + p[..., m:] * v[:, :, m:]
        x = x + self.proj(torch.cat([image, text], 2).transpose(1, 2).reshape(b, n, w))
        return x + self.mlp(self.norm2(x))


class TinyVLM(nn.Module):
    """Projector + a small pre-norm transformer over [visual tokens; one token per question].

    All the questions about one image share one sequence, as a VLM's prompt follows its image: the visual
    tokens attend to each other only (a causal VLM's image prefix does not see the text that follows), and
    each question attends to the visual tokens and to itself, never to another question. A question is one
    token: a Linear over its words' embeddings side by side (so word order and which colour goes with which
    shape are kept), read out where it sits. The projector and the visual tokens are computed once per image.
    """

    def __init__(self, projector: nn.Module, grid: tuple[int, int], vocab: int, q_len: int, answers: int,
                 width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.projector, self.grid = projector, grid
        self.m = m = projector.num_tokens_out(grid)
        side = math.isqrt(m)  # fixed 2-D sin-cos positions of the output grid (1-D if it is not square)
        shape = [side, side] if side * side == m else [m, 1]
        self.register_buffer("visual_pos", build_sincos2d_pos_embed(shape, dim=width)[None], persistent=False)
        self.word = nn.Embedding(vocab, width, padding_idx=0)
        self.question = nn.Linear(q_len * width, width)
        self.blocks = nn.ModuleList(PrefixBlock(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, answers)

    def forward(self, visual: Tensor, questions: Tensor) -> Tensor:
        """`visual (B, N, C)` and `questions (B, S, L)` (word ids, 0 = padding) → answer logits `(B, S, answers)`."""
        x = torch.cat([self.projector(visual, self.grid) + self.visual_pos,
                       self.question(self.word(questions).flatten(2))], 1)
        for block in self.blocks:
            x = block(x, self.m)
        return self.head(self.norm(x[:, self.m:]))


def forward_questions(model: TinyVLM, feats: Tensor, task: TaskData, slots: Tensor,
                      images: Tensor) -> tuple[Tensor, Tensor]:
    """Logits (on the model's device) and question indices of every question about `images` (one row per question)."""
    q = slots[images]
    dev = model.head.weight.device
    logits = model(feats[images].to(dev).float(), (task.questions[q.clamp(min=0)] * (q >= 0)[..., None]).to(dev))
    return logits[(q >= 0).to(dev)], q[q >= 0]


def score(model: TinyVLM, feats: Tensor, task: TaskData, slots: Tensor,
           images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, question indices, correct) over `images`, in batches, on the CPU."""
    out = [forward_questions(model, feats, task, slots, b) for b in images.split(256)]
    logits, qi = torch.cat([o[0].float().cpu() for o in out]), torch.cat([o[1] for o in out])
    return logits, qi, logits.argmax(-1) == task.answers[qi]
