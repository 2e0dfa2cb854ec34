"""Classification tasks as one-question VQA ("which digit", "which class"): `digits`, `image_folder`."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import ConfigError, first_line
from . import TaskData, split_indices

log = logging.getLogger(__name__)


def _as_task(name: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int, word: str,
             test_fraction: float, seed: int) -> TaskData:
    n = len(images)
    train, test = split_indices(n, test_fraction, seed)
    questions = torch.tensor([[1, 2]]).repeat(n, 1)  # "which <word>"
    return TaskData(name, images, questions, labels, torch.arange(n), [word] * n, train, test, labels,
                    num_classes, vocab_size=3)


def digits(img_size: int = 96, test_fraction: float = 0.2, seed: int = 0) -> TaskData:
    """scikit-learn's 1,797 handwritten 8×8 digits (shipped with the package), upsampled to `img_size`."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().unsqueeze(1) / 16.0 * 255.0
    x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    images = x.clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1)
    return _as_task("digits", images, torch.from_numpy(d.target).long(), 10, "digit", test_fraction, seed)


def image_folder(root: str | None = None, img_size: int = 96, test_fraction: float = 0.2, seed: int = 0) -> TaskData:
    """A user's labelled images in the class-per-folder layout (torchvision's `ImageFolder`)."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    if root is None:
        raise ConfigError("task image_folder needs its folder: set task.root=/path/to/images "
                          "(one sub-folder per class)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ConfigError(f"image folder {str(path)!r} does not exist; set task.root to a folder with one "
                          "sub-folder per class")
    try:
        ds = ImageFolder(str(path), loader=_open)
    except FileNotFoundError as e:  # torchvision: no class folders, or no image in them
        raise ConfigError(f"image folder {str(path)!r} holds no images in class sub-folders "
                          f"({first_line(e)}); put each class's images in its own sub-folder") from e
    if len(ds.classes) < 2:
        raise ConfigError(f"image folder {str(path)!r} has a single class ({ds.classes[0]}); accuracy needs at "
                          "least two class sub-folders")
    _check_links(path, ds.samples)
    tf = v2.Compose([v2.PILToTensor(), v2.Resize((img_size, img_size), antialias=True)])
    images, labels, bad = [], [], []
    for p, label in ds.samples:
        try:
            images.append(tf(_rgb8(ds.loader(p), p)))
            labels.append(label)
        except OSError:  # PIL: truncated or not an image (UnidentifiedImageError is an OSError)
            bad.append(p)
    if bad:
        log.warning("image folder %r: skipped %d unreadable image(s): %s%s", str(path), len(bad), ", ".join(bad[:5]),
                    f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    if len(set(labels)) < 2:
        raise ConfigError(f"image folder {str(path)!r} has readable images in fewer than two classes "
                          f"({len(bad)} unreadable); accuracy needs at least two classes of readable images")
    images, labels = torch.stack(images), torch.tensor(labels)
    return _as_task("image_folder", images, labels, len(ds.classes), "class", test_fraction, seed)


def _open(path: str) -> Any:
    """The image at `path` as PIL reads it, in its own mode (torchvision's loader converts to RGB, clipping 16 bits)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return img


def _rgb8(img: Any, path: str) -> Any:
    """`img` (a PIL image) as 8-bit RGB. PIL's own conversion clips 16-bit greyscale to 255 (a PNG of 16 bits per
    pixel would load as a white image), so such images are scaled down to 8 bits; a floating-point one is refused."""
    from PIL import Image

    if img.mode.startswith("I"):  # I;16, I;16B, ... (16 bits) or I (32-bit integers, as older PIL opens 16-bit PNGs)
        a = np.asarray(img)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ConfigError(f"image {path}: {img.mode} pixels outside 0..65535; convert the folder to 8 or 16 "
                              "bits per pixel")
        return Image.fromarray((a.astype(np.uint32) >> 8).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        raise ConfigError(f"image {path}: floating-point pixels (mode F) have no agreed range; convert the folder to "
                          "8 or 16 bits per pixel")
    return img.convert("RGB")


def _check_links(root: Path, samples: list[tuple[str, int]]) -> None:
    """Refuse a folder whose links reach one image twice: a linked folder that loops (class_0/up -> ..) lists
    every image again under every path round the loop, mislabelled, in train and test alike."""
    seen: dict[str, str] = {}
    for p, _ in samples:
        real = os.path.realpath(p)
        if real in seen:
            raise ConfigError(f"image folder {str(root)!r} reaches {real} twice ({seen[real]} and {p}): a linked "
                              "folder loops or repeats images; remove the link, or copy the images each class "
                              "should hold")
        seen[real] = p


def write_image_folder(root: str | Path, classes: int = 3, per_class: int = 12, size: int = 32, seed: int = 0) -> Path:
    """Write a small folder of generated PNG files (class k: a bright square in corner k), for tests and demos."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for k in range(classes):
        (root / f"class_{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            y, x = divmod(k % 4, 2)
            h = size // 2
            img[y * h:(y + 1) * h, x * h:(x + 1) * h] = 200 + rng.integers(0, 55, 3, dtype=np.uint8)
            Image.fromarray(img).save(root / f"class_{k}" / f"{i}.png")
    return root


def write_blob_folder(root: str | Path, classes: int = 3, per_class: int = 60, size: int = 96, blob: int = 16,
                      seed: int = 0) -> Path:
    """Write a folder of generated PNG files told apart only by where one bright `blob`-pixel spot sits on a dark,
    noisy field (class k: around the k-th of `classes` places on a ring about the centre, jittered): what a
    child sorts at a glance and an encoder that has seen images at all must keep, at any image size."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    yy, xx = np.mgrid[0:size, 0:size]
    for k in range(classes):
        (root / f"class_{k}").mkdir(parents=True, exist_ok=True)
        angle = 2 * np.pi * k / classes
        for i in range(per_class):
            cy, cx = (size / 2 + size * 0.28 * np.array([np.sin(angle), np.cos(angle)])
                      + rng.uniform(-size / 16, size / 16, 2))
            img = rng.normal(40, 15, (size, size, 3))
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= (blob / 2) ** 2] = rng.uniform(200, 255)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"class_{k}" / f"{i}.png")
    return root
