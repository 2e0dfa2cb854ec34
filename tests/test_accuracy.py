"""The accuracy pipeline at a tiny scale: fields, caches, determinism, divergence, every task."""
import pytest
import torch
from hydra import compose, initialize_config_dir

import projector_bench.accuracy as acc
from projector_bench.__main__ import config_dir
from projector_bench.tasks.classify import write_image_folder
from projector_bench.tasks.shapes_vqa import QTYPES

TINY = ["quiet=true", "task.num_images=100", "task.img_size=32", "accuracy.encoder.weights=random",
        "accuracy.encoder_training.epochs=1", "accuracy.training.epochs=2", "accuracy.training.width=16",
        "accuracy.training.layers=1", "accuracy.training.heads=2", "accuracy.training.batch_size=32"]


def cfg_for(tmp_path, *overrides, task="shapes_vqa"):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        extra = TINY if task == "shapes_vqa" else [o for o in TINY if not o.startswith("task.")] + ["task.img_size=32"]
        return compose("config", overrides=[f"results_dir={tmp_path}", f"task={task}", *extra, *overrides])


def test_row_holds_accuracy_per_type_with_a_confidence_interval(tmp_path):
    r = acc.evaluate_projector(cfg_for(tmp_path))
    assert r["accuracy_ci_low"] <= r["accuracy"] <= r["accuracy_ci_high"] and 0 <= r["accuracy"] <= 100
    assert set(r["accuracy_by_type"]) == set(QTYPES) == set(r["accuracy_ci_by_type"])
    assert 0 < r["majority_baseline"] < 100 and r["train_time_s"] > 0 and r["acc_grid"] == "4x4"
    assert r["acc_encoder_source"].startswith("trained on shapes_vqa") and r["accuracy_ci_method"].startswith("bootstrap")


def test_features_and_encoder_are_cached_across_designs(tmp_path, monkeypatch):
    acc.evaluate_projector(cfg_for(tmp_path))
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 1

    def forbidden(*args, **kwargs):
        raise AssertionError("recomputed what the cache holds")

    monkeypatch.setattr(acc, "_pretrain_encoder", forbidden)
    monkeypatch.setattr(acc.TimmEncoder, "forward", forbidden)
    r = acc.evaluate_projector(cfg_for(tmp_path, "projector=ldp"))  # another design: same features
    assert r["acc_tokens_out"] == 4
    monkeypatch.setattr(acc, "_train", forbidden)
    q = acc.evaluate_projector(cfg_for(tmp_path, "projector=mlp_int8"))  # reuses the trained mlp, quantized
    assert q["acc_tokens_out"] == 16


def test_same_seed_same_accuracy(tmp_path):
    a = acc.evaluate_projector(cfg_for(tmp_path / "a"))
    b = acc.evaluate_projector(cfg_for(tmp_path / "b"))
    assert abs(a["accuracy"] - b["accuracy"]) <= 0.5


def test_divergence_is_an_error_naming_the_fix(tmp_path):
    with pytest.raises(acc.DivergedError, match="training diverged: loss is nan .* lower accuracy.training.lr"):
        acc.evaluate_projector(cfg_for(tmp_path, "accuracy.training.lr=1e30"))


def test_digits_and_image_folder_tasks_run(tmp_path):
    d = acc.evaluate_projector(cfg_for(tmp_path, "accuracy.training.epochs=1", task="digits"))
    assert d["task"] == "digits" and set(d["accuracy_by_type"]) == {"digit"}
    root = write_image_folder(tmp_path / "imgs", classes=3, per_class=10, size=32)
    f = acc.evaluate_projector(cfg_for(tmp_path, f"task.root={root}", task="image_folder"))
    assert f["task"] == "image_folder" and f["acc_test_questions"] == 6


def test_int8_design_is_scored_after_quantizing_its_trained_twin(tmp_path, monkeypatch):
    seen = []
    real = acc.quantize_linear_int8
    monkeypatch.setattr(acc, "quantize_linear_int8", lambda m: seen.append(type(m).__name__) or real(m))
    acc.evaluate_projector(cfg_for(tmp_path, "projector=ldp_int8"))
    assert seen == ["LDP"]
    assert not any(isinstance(m, torch.nn.Linear) and type(m) is torch.nn.Linear for m in real(acc.create_projector("ldp", 8, 8)).modules())


def test_a_changed_image_folder_is_not_served_from_the_cache(tmp_path):
    from omegaconf import OmegaConf

    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=4, size=16)
    cfg = OmegaConf.create({"_target_": "projector_bench.tasks.classify.image_folder", "root": str(root)})
    before = acc.task_key(cfg)
    write_image_folder(root, classes=3, per_class=4, size=16)
    assert acc.task_key(cfg) != before
