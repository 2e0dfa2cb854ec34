"""`scenes`: the generated images a stand-in encoder learns to see on before it meets any task.

Without pretrained weights (none can be fetched here), an encoder trained on a small task from random weights
learns that task's few images, or nothing (docs/results/2026-12-07-first-run.md). A
real VLM's encoder has seen millions of images before its projector is trained; the stand-in sees many
generated ones: backgrounds of any brightness, colour, gradient and noise; filled shapes, rings, blobs and
pen strokes of any colour, size and place, some blurred. Its targets are dense, one per cell of its feature
grid, so that what it keeps is where things are and what they look like, which every projector task reads:
the kind of thing covering the cell, its colour, and the cell's own pixels, pooled to 4×4.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

KINDS = ("background", "disc", "square", "triangle", "ring", "blob", "stroke")
COLOUR_BINS = 8  # an object's colour class: each RGB channel above or below mid-grey; background is its own class


def _shape_mask(rng: np.random.Generator, kind: str, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    cy, cx = rng.uniform(0, size, 2)
    r = rng.uniform(0.04, 0.22) * size
    dy, dx = yy - cy, xx - cx
    if kind == "disc":
        return dy**2 + dx**2 <= r**2
    if kind == "square":
        a = rng.uniform(0.6, 1.0) * r
        return (np.abs(dy) <= a) & (np.abs(dx) <= rng.uniform(0.6, 1.0) * r)
    if kind == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * rng.uniform(0.4, 0.8))
    if kind == "ring":
        d = np.sqrt(dy**2 + dx**2)
        return (d <= r) & (d >= r * rng.uniform(0.4, 0.75))
    if kind == "blob":  # a soft, irregular bright or dark spot
        sy, sx = r * rng.uniform(0.5, 1.0, 2)
        return (dy / sy) ** 2 + (dx / sx) ** 2 <= 1.0 + 0.3 * np.sin(np.arctan2(dy, dx) * rng.integers(2, 5))
    # stroke: a polyline of 2-4 segments, 1-4 px wide (the pen strokes of a digit or a letter)
    pts = np.stack([rng.uniform(0.1, 0.9, 2) * size for _ in range(rng.integers(3, 6))])
    width = rng.uniform(0.5, 2.0) * max(1.0, size / 48)
    mask = np.zeros_like(yy, dtype=bool)
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
        vy, vx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * vy + (xx - x0) * vx) / max(vy * vy + vx * vx, 1e-6), 0, 1)
        mask |= (yy - y0 - t * vy) ** 2 + (xx - x0 - t * vx) ** 2 <= width**2
    return mask


def _scene(rng: np.random.Generator, size: int, yy: np.ndarray,
           xx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    level = rng.uniform(0, 255)
    tint = rng.normal(0, 25, 3) * rng.uniform(0, 1)
    g = rng.normal(0, 40, 2) * rng.uniform(0, 1)  # a gradient across the image
    img = level + tint + (g[0] * (yy / size - 0.5) + g[1] * (xx / size - 0.5))[..., None]
    kind = np.zeros((size, size), np.uint8)
    colour = np.full((size, size), COLOUR_BINS, np.uint8)
    for _ in range(rng.integers(1, 9)):
        k = int(rng.integers(1, len(KINDS)))
        mask = _shape_mask(rng, KINDS[k], yy, xx, size)
        rgb = rng.uniform(0, 255, 3)
        if rng.random() < 0.3:  # grey: black, white or between (digits, text, a bright spot on a dark field)
            rgb[:] = rng.choice([rng.uniform(0, 60), rng.uniform(195, 255), rng.uniform(0, 255)])
        img[mask] = rgb + rng.normal(0, 6, 3)
        kind[mask] = k
        colour[mask] = int((rgb[0] > 127) * 4 + (rgb[1] > 127) * 2 + (rgb[2] > 127))
    img = img + rng.normal(0, rng.uniform(0, 25), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), kind, colour


def scenes(num_images: int = 20000, img_size: int = 64, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """`num_images` generated scenes at `img_size` px, deterministic in `seed`: uint8 images (N, 3, H, W) and
    per-pixel kind (N, H, W; index into `KINDS`) and colour class (N, H, W; `COLOUR_BINS` is background).
    A third of them are blurred, as an upsampled small image is."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:img_size, 0:img_size].astype(np.float32)
    out = [_scene(rng, img_size, yy, xx) for _ in range(num_images)]
    images = torch.from_numpy(np.stack([o[0] for o in out])).permute(0, 3, 1, 2).contiguous()
    blur = torch.from_numpy(rng.random(num_images) < 1 / 3)
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
        images[blur] = F.conv2d(images[blur].float(), k, padding=1, groups=3).round().clamp(0, 255).to(torch.uint8)
    kinds = torch.from_numpy(np.stack([o[1] for o in out]))
    colours = torch.from_numpy(np.stack([o[2] for o in out]))
    return images, kinds, colours


def cell_targets(kinds: Tensor, colours: Tensor, images: Tensor,
                 grid: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Per cell of a `grid` over the images: the kind covering most of the cell (background unless a thing covers
    at least an eighth of it), that thing's colour class, and the cell's pixels pooled to 4×4 (normalised, half
    precision: they are many)."""
    def majority(labels: Tensor, classes: int, background: int) -> Tensor:
        share = F.adaptive_avg_pool2d(F.one_hot(labels.long(), classes).permute(0, 3, 1, 2).float(),
                                      grid)  # (N, C, h, w)
        share[:, background] = 0
        top, arg = share.max(1)
        return torch.where(top >= 1 / 8, arg, torch.full_like(arg, background))

    h, w = grid
    out = []
    for k, c, im in zip(kinds.split(256), colours.split(256), images.split(256)):  # chunks: one-hot maps are large
        pix = F.adaptive_avg_pool2d(im.float() / 127.5 - 1, (4 * h, 4 * w))  # (n, 3, 4h, 4w)
        pix = pix.view(len(im), 3, h, 4, w, 4).permute(0, 2, 4, 1, 3, 5).reshape(len(im), h, w, 48).half()  # 20k scenes
        out.append((majority(k, len(KINDS), 0), majority(c, COLOUR_BINS + 1, COLOUR_BINS), pix))
    return tuple(torch.cat(parts) for parts in zip(*out))  # type: ignore[return-value]
