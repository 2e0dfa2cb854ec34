"""`shapes_vqa`: coloured shapes on a grid, with jitter and clutter, and templated questions.

The question types need different things from the visual tokens:
- `what_at` "what is at top left" → `red_circle` / `nothing`   (location: which token holds what)
- `where`   "where is the red circle" → `top_left`              (location)
- `count`   "how many circle" → `2`                             (counting over the image)
- `left_of` "is the red circle left of the blue square" → yes/no (relation between two places; the two
  objects are `left_of_gap` columns apart, 2 by default: the left and right columns of a 3×3 grid; the answer
  is yes for half of the questions)
- `exists`  "is there a green triangle" → yes/no                (presence anywhere)
- `dot`     "where is the dot on the red circle" → `dot_left`   (detail inside an object: a dark dot of 2-3 px
  left of, right of, above or below the middle of its body, a few pixels off it; an object spans two tokens
  of the grid or sits inside one, so where its dot is lies in the layout within and across neighbouring
  tokens, the way the order of the glyphs of a word does in TextVQA)
Each image gets `questions_per_image` questions of the first five types, in turn in a random order (15: three
of each), and `dot_questions` `dot` questions more (every object carries a dot when they are asked). A
projector that pools the grid to one token keeps presence and counts but loses the places; one that merges
neighbouring tokens keeps the objects and may lose where on them their dots are. The dots come from their own
random stream: with `dot_questions=0` the task is the one without dots. A cell's label (what a stand-in
encoder is taught) is its object, never its dot: an encoder taught the answer carries it in every token's
features, where no merge can lose it, and a real encoder is not trained on the task's answers.

`related` makes neighbouring cells related, as the tokens of a real image are (an object spans several, a
region shares its content): each object after the first, with that probability, is instead a repeat of one
already placed, in a free cell beside it, so objects come in clusters. The repeats come from their own random
stream: `related=0` is the task of independent cells.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.errors import ConfigError
from . import TaskData, split_indices

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
ROWS, COLS = ("top", "middle", "bottom"), ("left", "center", "right")
QTYPES = ("what_at", "where", "count", "left_of", "exists")
OFFSETS = {"dot_left": (0, -1), "dot_right": (0, 1), "dot_above": (-1, 0), "dot_below": (1, 0)}  # (rows, columns)
DOTS = tuple(OFFSETS)  # where on its object its small dark dot sits


def _vocab(grid: int, dots: bool) -> tuple[list[str], list[str]]:
    rows, cols = _names(ROWS, grid), _names(COLS, grid)
    words = ["<pad>", "what", "is", "at", "where", "the", "how", "many", "left", "of", "there", "a",
             *COLOURS, *SHAPES, *rows, *cols, *(["dot", "on"] if dots else [])]
    objects = [f"{c}_{s}" for c in COLOURS for s in SHAPES]
    answers = ["nothing", *objects, *(f"{r}_{c}" for r in rows for c in cols), *map(str, range(grid * grid + 1)),
               "yes", "no", *(DOTS if dots else ())]
    return list(dict.fromkeys(words)), answers


def _names(base: tuple[str, ...], n: int) -> list[str]:
    return list(base) if n == 3 else [f"{base[0]}{i}" for i in range(n)]


def _relate(cells: dict[tuple[int, int], tuple[int, int]], grid: int, p: float,
            rng: np.random.Generator) -> dict[tuple[int, int], tuple[int, int]]:
    """The same number of objects, each after the first a repeat of a placed one beside it with probability `p`."""
    placed: dict[tuple[int, int], tuple[int, int]] = {}
    for rc, obj in cells.items():
        beside = [((r + dr, c + dc), (r, c)) for r, c in placed for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
                  if 0 <= r + dr < grid and 0 <= c + dc < grid and (r + dr, c + dc) not in placed]
        if beside and rng.random() < p:
            rc, src = beside[rng.integers(len(beside))]
            obj = placed[src]
        elif rc in placed:  # its own cell was taken by a repeat: the first free one
            rc = next(x for x in sorted({(r, c) for r in range(grid) for c in range(grid)} - placed.keys()))
        placed[rc] = obj
    return placed


def _render(rng: np.random.Generator, cells: dict[tuple[int, int], tuple[int, int]], size: int, grid: int,
            jitter: float, clutter: int, noise: float, dots: dict[tuple[int, int], int],
            dot_rng: np.random.Generator) -> np.ndarray:
    img = np.full((size, size, 3), 235, np.float32) + rng.normal(0, noise, (size, size, 3))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cell = size / grid
    for _ in range(clutter):  # small dots of any colour: clutter that is neither shape nor answer
        cy, cx = rng.uniform(0, size, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 1.5**2] = rng.uniform(0, 255, 3)
    for (r, c), (ci, si) in cells.items():
        cy = (r + 0.5) * cell + rng.uniform(-jitter, jitter) * cell
        cx = (c + 0.5) * cell + rng.uniform(-jitter, jitter) * cell
        rad = cell * rng.uniform(0.26, 0.36)
        dy, dx = yy - cy, xx - cx
        if SHAPES[si] == "circle":
            mask = dy**2 + dx**2 <= rad**2
        elif SHAPES[si] == "square":
            mask = (np.abs(dy) <= rad * 0.85) & (np.abs(dx) <= rad * 0.85)
        else:  # upward triangle
            mask = (dy <= rad * 0.8) & (dy >= -rad) & (np.abs(dx) <= (dy + rad) * 0.6)
        img[mask] = np.array(list(COLOURS.values())[ci]) + rng.normal(0, 12, 3)
        if (rc := (r, c)) in dots:  # off the middle of the shape's body (a triangle's is low: it widens downwards)
            oy, ox = OFFSETS[DOTS[dots[rc]]]
            my = yy - (cy + (rad * 0.3 if SHAPES[si] == "triangle" else 0) + oy * rad * 0.45)
            mx = xx - (cx + ox * rad * 0.45)
            img[(np.abs(my) <= 1.0) & (np.abs(mx) <= 1.0)] = 25 + dot_rng.normal(0, 8, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def shapes_vqa(num_images: int = 2000, img_size: int = 96, grid: int = 3, min_objects: int = 2, max_objects: int = 6,
               questions_per_image: int = 5, jitter: float = 0.12, clutter: int = 6, noise: float = 6.0,
               test_fraction: float = 0.2, seed: int = 0, left_of_gap: int = 2, dot_questions: int = 0,
               related: float = 0.0) -> TaskData:
    """Generate the task deterministically from `seed`; sizes and difficulty are the arguments."""
    if not 1 <= left_of_gap < grid:
        raise ConfigError(f"shapes_vqa needs 1 <= left_of_gap < grid ({grid}), got {left_of_gap}")
    if not 1 <= min_objects <= max_objects <= grid * grid:
        raise ConfigError(f"shapes_vqa needs 1 <= min_objects <= max_objects <= {grid * grid}, "
                          f"got {min_objects}..{max_objects}")
    if dot_questions < 0:
        raise ConfigError(f"shapes_vqa needs dot_questions >= 0 (0: no dots), got {dot_questions}")
    if not 0.0 <= related <= 1.0:
        raise ConfigError(f"shapes_vqa needs 0 <= related <= 1 (a probability; 0: independent cells), got {related}")
    rng, dot_rng, rel_rng = (np.random.default_rng(s) for s in (seed, [seed, 1], [seed, 2]))
    words, answers = _vocab(grid, dot_questions > 0)
    w, a = {t: i for i, t in enumerate(words)}, {t: i for i, t in enumerate(answers)}
    rows, cols = _names(ROWS, grid), _names(COLS, grid)
    images, labels, qs, ans, img_of, types = [], [], [], [], [], []
    all_cells = [(r, c) for r in range(grid) for c in range(grid)]
    for i in range(num_images):
        k = rng.integers(min_objects, max_objects + 1)
        chosen = rng.choice(len(all_cells), k, replace=False)
        cells = {all_cells[j]: (int(rng.integers(len(COLOURS))), int(rng.integers(len(SHAPES)))) for j in chosen}
        if related:
            cells = _relate(cells, grid, related, rel_rng)
        dots = {rc: int(dot_rng.integers(len(DOTS))) for rc in cells} if dot_questions else {}
        images.append(_render(rng, cells, img_size, grid, jitter, clutter, noise, dots, dot_rng))
        lab = np.zeros((grid, grid), np.int64)
        for (r, c), (ci, si) in cells.items():  # a cell's label: its object, not its dot
            lab[r, c] = 1 + ci * len(SHAPES) + si
        labels.append(lab)
        name = {rc: f"{list(COLOURS)[ci]}_{SHAPES[si]}" for rc, (ci, si) in cells.items()}
        unique = [rc for rc in cells if list(name.values()).count(name[rc]) == 1]
        for t in rng.permutation(QTYPES * -(-questions_per_image // len(QTYPES)))[:questions_per_image]:
            if t == "what_at":
                r, c = all_cells[rng.integers(len(all_cells))]
                q, answer = ["what", "is", "at", rows[r], cols[c]], name.get((r, c), "nothing")
            elif t == "where" and unique:
                rc = unique[rng.integers(len(unique))]
                q, answer = ["where", "is", "the", *name[rc].split("_")], f"{rows[rc[0]]}_{cols[rc[1]]}"
            elif t == "count":
                s = SHAPES[rng.integers(len(SHAPES))]
                q, answer = ["how", "many", s], str(sum(n.endswith(s) for n in name.values()))
            elif t == "left_of" and (pairs := [(p, o) for p in unique for o in unique if o[1] - p[1] >= left_of_gap]):
                # two objects at least `left_of_gap` columns apart (a clear answer), asked either way round: half yes
                p, o = pairs[rng.integers(len(pairs))]
                if rng.random() < 0.5:
                    p, o = o, p
                q = ["is", "the", *name[p].split("_"), "left", "of", "the", *name[o].split("_")]
                answer = "yes" if p[1] < o[1] else "no"
            elif t == "exists":
                obj = f"{list(COLOURS)[rng.integers(len(COLOURS))]}_{SHAPES[rng.integers(len(SHAPES))]}"
                q, answer = ["is", "there", "a", *obj.split("_")], "yes" if obj in name.values() else "no"
            else:
                continue
            qs.append([w[t_] for t_ in q])
            ans.append(a[answer])
            img_of.append(i)
            types.append(str(t))
        for _ in range(dot_questions if unique else 0):  # of an object named once in the image
            rc = unique[dot_rng.integers(len(unique))]
            q, answer, t = ["where", "is", "the", "dot", "on", "the", *name[rc].split("_")], DOTS[dots[rc]], "dot"
            qs.append([w[t_] for t_ in q])
            ans.append(a[answer])
            img_of.append(i)
            types.append(str(t))
    length = max(map(len, qs))
    questions = torch.tensor([q + [0] * (length - len(q)) for q in qs])
    train, test = split_indices(num_images, test_fraction, seed)
    return TaskData("shapes_vqa", torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), questions,
                    torch.tensor(ans), torch.tensor(img_of), types, train, test, torch.from_numpy(np.stack(labels)),
                    len(answers), len(words))
