"""Accuracy tasks: images plus questions with one-token answers, split into train and test.

A task is a Hydra config in `conf/task/` whose `_target_` builds it (`hydra.utils.instantiate`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.errors import ConfigError


@dataclass
class TaskData:
    """Everything a task gives the accuracy pipeline.

    images: uint8 (N, 3, H, W); questions: long (Q, L) word ids, 0 = padding; answers: long (Q,);
    image_of: long (Q,) the image each question is about; qtype: per-question type names;
    train/test: image indices (questions follow their image); labels: long (N,) image classes or (N, gh, gw)
    per-region classes, the ground truth the questions are asked about.
    """

    name: str
    images: Tensor
    questions: Tensor
    answers: Tensor
    image_of: Tensor
    qtype: list[str]
    train: Tensor
    test: Tensor
    labels: Tensor
    num_answers: int
    vocab_size: int

    def split(self, part: str) -> Tensor:
        """Question indices whose image is in `part` ("train" or "test")."""
        mask = torch.zeros(len(self.images), dtype=torch.bool)
        mask[getattr(self, part)] = True
        return torch.nonzero(mask[self.image_of]).squeeze(1)


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random train/test split of `n` items."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(n * test_fraction))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def carve(train: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split train image indices into (train, validation): a seeded `fraction` of them, at least one image,
    for choosing and stopping. The test split is never touched."""
    if not 0 < fraction < 1 or len(train) < 2:
        raise ConfigError(f"a validation split needs 0 < accuracy.val_fraction < 1 and at least 2 train images, "
                         f"got {fraction} and {len(train)}")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 1))
    n_val = min(len(train) - 1, max(1, round(len(train) * fraction)))
    return train[perm[n_val:]].sort().values, train[perm[:n_val]].sort().values
