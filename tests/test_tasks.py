import numpy as np
import pytest
import torch

from projector_bench import ConfigError
from projector_bench.tasks.classify import digits, image_folder, write_image_folder
from projector_bench.tasks.shapes_vqa import (
    COLOURS,
    DOTS,
    QTYPES,
    SHAPES,
    _vocab,
    shapes_vqa,
)


def test_shapes_vqa_is_deterministic_for_a_seed():
    a, b, c = (shapes_vqa(40, img_size=48, seed=3), shapes_vqa(40, img_size=48, seed=3),
               shapes_vqa(40, img_size=48, seed=4))
    assert (torch.equal(a.images, b.images) and torch.equal(a.questions, b.questions)
            and torch.equal(a.answers, b.answers))
    assert not torch.equal(a.images, c.images)


def test_shapes_vqa_answers_agree_with_the_scene():
    d = shapes_vqa(60, img_size=48, seed=1)
    words, answers = _vocab(3, dots=False)
    objects = [f"{c}_{s}" for c in COLOURS for s in SHAPES]
    cells = [f"{r}_{c}" for r in ("top", "middle", "bottom") for c in ("left", "center", "right")]
    assert set(d.qtype) == set(QTYPES) and d.images.shape == (60, 3, 48, 48) and d.images.dtype == torch.uint8
    for q, a, i, t in zip(d.questions.tolist(), d.answers.tolist(), d.image_of.tolist(), d.qtype):
        lab = d.labels[i].flatten().tolist()  # 0 empty, else 1 + colour * 3 + shape, row-major cells
        text = [words[w] for w in q if w]
        names = ["nothing" if v == 0 else objects[v - 1] for v in lab]
        if t == "what_at":
            assert answers[a] == names[cells.index(f"{text[3]}_{text[4]}")]
        elif t == "where":
            assert names[cells.index(answers[a])] == f"{text[3]}_{text[4]}"
        elif t == "count":
            assert int(answers[a]) == sum(n.endswith(text[2]) for n in names)
        elif t == "exists":
            assert (answers[a] == "yes") == (f"{text[3]}_{text[4]}" in names)
        else:  # left_of: "is the c s left of the c s"
            p, o = names.index(f"{text[2]}_{text[3]}") % 3, names.index(f"{text[7]}_{text[8]}") % 3
            assert (answers[a] == "yes") == (p < o)


def test_dot_questions_ask_where_on_a_named_object_its_dot_is():
    """Read back from the pixels: the dark dot inside the named object's box lies off its body's centre the way
    the answer says."""
    d = shapes_vqa(60, img_size=64, seed=1, questions_per_image=15, dot_questions=3)
    words, answers = _vocab(3, dots=True)
    objects = [f"{c}_{s}" for c in COLOURS for s in SHAPES]
    asked = [i for i, t in enumerate(d.qtype) if t == "dot"]
    assert len(asked) == 3 * 60 and set(d.qtype) == {*QTYPES, "dot"} and (
        {answers[d.answers[i]] for i in asked} == set(DOTS))
    for i in asked:  # "where is the dot on the c s"
        text = [words[w] for w in d.questions[i].tolist() if w]
        r, c = (int(x) for x in torch.nonzero(d.labels[d.image_of[i]] == objects.index(f"{text[6]}_{text[7]}") + 1)[0])
        win = d.images[d.image_of[i], :, r * 64 // 3:(r + 1) * 64 // 3, c * 64 // 3:(c + 1) * 64 // 3].float()
        body = (win - torch.tensor(COLOURS[text[6]]).float()[:, None, None]).norm(dim=0) < 60
        ys, xs = torch.nonzero(body, as_tuple=True)
        dark = torch.zeros_like(body)
        dark[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = (
            win.mean(0)[ys.min():ys.max() + 1, xs.min():xs.max() + 1] < 80)
        dy, dx = torch.nonzero(dark).float().mean(0) - torch.nonzero(body | dark).float().mean(0)
        seen = (("dot_left" if dx < 0 else "dot_right") if abs(dx) > abs(dy)
                else ("dot_above" if dy < 0 else "dot_below"))
        assert seen == answers[d.answers[i]]


def test_dots_change_only_the_objects_pixels_and_add_only_dot_questions():
    """The dots have their own random stream: the scenes, the other questions, their answers and the cells' labels
    are those of the task without dots, so the new type adds headroom without changing what the others measure."""
    plain, marked = (shapes_vqa(40, img_size=64, seed=2, questions_per_image=15, dot_questions=m) for m in (0, 3))
    words, answers = _vocab(3, dots=False)
    mwords, manswers = _vocab(3, dots=True)
    keep = [i for i, t in enumerate(marked.qtype) if t != "dot"]
    assert [marked.qtype[i] for i in keep] == plain.qtype and "dot" not in plain.qtype
    assert [[mwords[w] for w in marked.questions[i].tolist() if w] for i in keep] == \
           [[words[w] for w in q if w] for q in plain.questions.tolist()]
    assert [manswers[marked.answers[i]] for i in keep] == [answers[a] for a in plain.answers.tolist()]
    changed = (marked.images != plain.images).any(1)  # (N, H, W): where a glyph was drawn
    assert changed.any(-1).any(-1).all()  # every image has marked objects
    assert (marked.images.float().mean(1)[changed] < 80).float().mean() > 0.9  # and the marks are dark dots
    assert torch.equal(plain.labels, marked.labels)


def test_shapes_vqa_splits_by_image_and_validates_difficulty():
    d = shapes_vqa(50, img_size=48, test_fraction=0.2)
    assert len(d.test) == 10 and not set(d.train.tolist()) & set(d.test.tolist())
    assert set(d.image_of[d.split("test")].tolist()) <= set(d.test.tolist())
    with pytest.raises(ConfigError, match="min_objects"):
        shapes_vqa(5, min_objects=4, max_objects=2)
    with pytest.raises(ConfigError, match="dot_questions >= 0"):
        shapes_vqa(5, dot_questions=-1)


def test_digits_come_from_scikit_learn():
    d = digits(img_size=32)
    assert d.images.shape == (1797, 3, 32, 32) and d.num_answers == 10 and set(d.answers.tolist()) == set(range(10))
    assert d.qtype[0] == "digit" and torch.equal(d.image_of, torch.arange(1797))


def test_image_folder_reads_generated_pngs(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=3, per_class=5, size=24)
    d = image_folder(str(root), img_size=32)
    assert d.images.shape == (15, 3, 32, 32) and d.num_answers == 3 and (
        sorted(np.bincount(d.answers.numpy())) == [5, 5, 5])


def test_a_16_bit_greyscale_folder_keeps_its_pixels(tmp_path):
    """PIL's convert("RGB") clips 16-bit greyscale to 255: such a folder must load as its images, not as white ones."""
    import numpy as np
    from PIL import Image

    for k in range(2):
        (tmp_path / f"c{k}").mkdir()
        for i in range(3):
            a = np.full((16, 16), 1000 * (i + 1), np.uint16)
            a[: 8 * (k + 1)] = 60000
            Image.fromarray(a).save(tmp_path / f"c{k}" / f"{i}.png")
    assert Image.open(tmp_path / "c0" / "0.png").mode.startswith("I")
    d = image_folder(str(tmp_path), img_size=16)
    assert d.images.dtype == torch.uint8 and len(d.images) == 6
    first = d.images[0, 0]  # class c0, image 0: 60000 on the top half, 1000 below: 234 and 3 in 8 bits
    assert first[0, 0] == 60000 >> 8 and first[-1, -1] == 1000 >> 8 and d.images.float().std() > 50


def test_a_linked_folder_that_loops_is_refused(tmp_path):
    import os

    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=4, size=8)
    os.symlink("..", root / "class_0" / "up")  # every image again under class_0/up/class_*/..., mislabelled
    with pytest.raises(ConfigError, match="reaches .* twice .* remove the link"):
        image_folder(str(root), img_size=8)


def test_image_folder_errors_are_one_line(tmp_path):
    cases = [(None, "needs its folder"), (str(tmp_path / "missing"), "does not exist")]
    (tmp_path / "empty").mkdir()
    cases.append((str(tmp_path / "empty"), "holds no images"))
    write_image_folder(tmp_path / "one", classes=1, per_class=3, size=8)
    cases.append((str(tmp_path / "one"), "has a single class"))
    for root, message in cases:
        with pytest.raises(ConfigError, match=message) as e:
            image_folder(root)
        assert "\n" not in str(e.value)


def test_an_unreadable_image_is_skipped_and_named(tmp_path, caplog):
    root = write_image_folder(tmp_path / "f", classes=2, per_class=3, size=8)
    (root / "class_0" / "0.png").write_bytes(b"not a png")
    d = image_folder(str(root), img_size=8)
    assert len(d.images) == 5
    assert any("skipped 1 unreadable image(s)" in r.getMessage() and "class_0/0.png" in r.getMessage()
               for r in caplog.records)
    for p in (root / "class_1").iterdir():
        p.write_bytes(b"broken")
    with pytest.raises(ConfigError, match="readable images in fewer than two classes"):
        image_folder(str(root), img_size=8)


def test_left_of_asks_about_clearly_separate_columns_with_balanced_answers():
    d = shapes_vqa(400, img_size=32, seed=5, questions_per_image=15)
    words, answers = _vocab(3, dots=False)
    objects = [f"{c}_{s}" for c in COLOURS for s in SHAPES]
    yes = []
    for q, a, i, t in zip(d.questions.tolist(), d.answers.tolist(), d.image_of.tolist(), d.qtype):
        if t != "left_of":
            continue
        names = ["nothing" if v == 0 else objects[v - 1] for v in d.labels[i].flatten().tolist()]
        text = [words[w] for w in q if w]
        assert abs(names.index(f"{text[2]}_{text[3]}") % 3 - names.index(f"{text[7]}_{text[8]}") % 3) == 2
        yes.append(answers[a] == "yes")
    assert len(yes) > 200 and 0.42 < np.mean(yes) < 0.58


def test_more_questions_than_types_take_the_types_in_turn():
    task = shapes_vqa(num_images=40, img_size=32, questions_per_image=15, max_objects=6, min_objects=4, seed=1)
    kinds = np.array(task.qtype)
    for i in range(40):
        counts = {k: int((kinds[task.image_of.numpy() == i] == k).sum()) for k in ("what_at", "count", "exists")}
        assert counts == {"what_at": 3, "count": 3, "exists": 3}  # these are always askable


def test_scenes_are_deterministic_for_a_seed():
    from projector_bench.tasks.scenes import scenes

    a, ka, ca = scenes(6, 32, seed=1)
    b, kb, cb = scenes(6, 32, seed=1)
    assert torch.equal(a, b) and torch.equal(ka, kb) and torch.equal(ca, cb) and a.shape == (6, 3, 32, 32)
    assert not torch.equal(a, scenes(6, 32, seed=2)[0]) and a.float().std() > 10


def test_a_cells_targets_are_the_thing_covering_it_its_colour_and_its_pooled_pixels():
    from projector_bench.tasks.scenes import COLOUR_BINS, cell_targets

    kinds = torch.zeros(1, 16, 16, dtype=torch.uint8)
    colours = torch.full((1, 16, 16), COLOUR_BINS, dtype=torch.uint8)
    kinds[0, :8, :8], colours[0, :8, :8] = 2, 5  # cell (0, 0) of a 2x2 grid wholly covered
    kinds[0, 8:10, 8:9], colours[0, 8:10, 8:9] = 3, 1  # 2 of cell (1, 1)'s 64 pixels: under an eighth
    images = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    images[0, 0, :8, :8] = 255
    kind, colour, pix = cell_targets(kinds, colours, images, (2, 2))
    assert kind.tolist() == [[[2, 0], [0, 0]]] and colour.tolist() == [[[5, COLOUR_BINS], [COLOUR_BINS, COLOUR_BINS]]]
    assert (pix.shape == (1, 2, 2, 48) and pix[0, 0, 0, :16].eq(1).all() and pix[0, 1, 1].eq(-1).all()
            and pix.dtype == torch.half)


def _clusters(lab: torch.Tensor) -> list[set]:
    """The 4-connected groups of occupied cells that hold one object."""
    seen, groups = set(), []
    for start in map(tuple, torch.nonzero(lab).tolist()):
        if start in seen:
            continue
        group, todo = set(), [start]
        while todo:
            r, c = todo.pop()
            if (r, c) in group:
                continue
            group.add((r, c))
            todo += [(r + dr, c + dc) for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
                     if 0 <= r + dr < lab.shape[0] and 0 <= c + dc < lab.shape[1] and lab[r + dr, c + dc] == lab[r, c]]
        seen |= group
        groups.append(group)
    return groups


def test_related_scenes_cluster_repeats_of_an_object_and_keep_the_object_count():
    """`related` turns independent cells into clusters of one object (the neighbouring tokens of a real image are
    alike); 0 is the independent task itself, 1 one cluster an image; as many objects an image as before."""
    plain = shapes_vqa(80, img_size=48, grid=6, seed=3, questions_per_image=5)
    assert all(torch.equal(getattr(plain, f), getattr(shapes_vqa(80, img_size=48, grid=6, seed=3, questions_per_image=5,
                                                                  related=0.0), f))
               for f in ("images", "questions", "answers", "labels"))
    one = shapes_vqa(80, img_size=48, grid=6, seed=3, questions_per_image=5, related=1.0)
    some = shapes_vqa(80, img_size=48, grid=6, seed=3, questions_per_image=5, related=0.75)
    def count(d):  # objects per image
        return (d.labels > 0).sum((1, 2))

    assert all(abs(count(d).float().mean() - count(plain).float().mean()) < 0.6 for d in (one, some))  # 2-6 each
    assert all(len(_clusters(lab)) == 1 for lab in one.labels)
    def alone(d):  # the share of objects with no repeat beside them
        return sum(len(g) == 1 for lab in d.labels for g in _clusters(lab)) / count(d).sum().item()

    assert alone(some) < 0.5 < 0.8 < alone(plain)
    with pytest.raises(ConfigError, match="0 <= related <= 1"):
        shapes_vqa(5, related=1.5)
