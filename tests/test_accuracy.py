"""The accuracy pipeline at a tiny scale: splits, training to convergence, the learning-rate choice, seeds,
the two-level interval, caches keyed by code, the packed VLM, every task."""
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import projector_bench.accuracy.evaluate as acc
from projector_bench import ConfigError
from projector_bench.accuracy import cache, features, pool, proxy, standin, stats, training
from projector_bench.core.settings import config_dir
from projector_bench.tasks import carve
from projector_bench.tasks.classify import write_image_folder
from projector_bench.tasks.shapes_vqa import QTYPES

STEPS = ["accuracy.training.min_steps=4", "accuracy.training.max_steps=8", "accuracy.training.eval_every=2",
         "accuracy.training.warmup_steps=2", "accuracy.training.patience=2"]
TINY = ["quiet=true", "task.num_images=100", "task.questions_per_image=5", "task.img_size=32",
        "accuracy.encoder.weights=random",
        "accuracy.standin.images=40", "accuracy.standin.min_steps=2", "accuracy.standin.max_steps=4",
        "accuracy.standin.eval_every=2", "accuracy.standin.batch_size=16", "accuracy.encoder_training.min_steps=2",
        "accuracy.encoder_training.max_steps=4", "accuracy.encoder_training.eval_every=2",
        "accuracy.encoder_training.batch_size=16", *STEPS,
        "accuracy.training.width=16", "accuracy.training.layers=1", "accuracy.training.heads=2",
        "accuracy.training.batch_size=8", "accuracy.workers=1", "accuracy.training.lr=[0.001,0.003]",
        "accuracy.seeds=2"]


def cfg_for(tmp_path, *overrides, task="shapes_vqa"):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        extra = TINY if task == "shapes_vqa" else [o for o in TINY if not o.startswith("task.")] + ["task.img_size=32"]
        return compose("config", overrides=[f"results_dir={tmp_path}", f"task={task}", *extra, *overrides])


def test_the_opt_in_dot_type_is_scored_as_its_own_type(tmp_path):
    r = acc.evaluate_projector(cfg_for(tmp_path, "task.dot_questions=3", "accuracy.seeds=1",
                                       "accuracy.training.lr=[0.001]"))
    assert set(r["accuracy_by_type"]) == {*QTYPES, "dot"} and 0 <= r["accuracy_by_type"]["dot"] <= 100
    assert r["majority_by_type"]["dot"] < 50  # four places a dot can be, about equally often


def test_row_holds_accuracy_over_seeds_with_a_two_level_interval_and_the_training_record(tmp_path):
    r = acc.evaluate_projector(cfg_for(tmp_path))
    assert r["accuracy_ci_low"] <= r["accuracy"] <= r["accuracy_ci_high"] and 0 <= r["accuracy"] <= 100
    assert set(r["accuracy_by_type"]) == set(QTYPES) == set(r["accuracy_ci_by_type"]) == set(r["majority_by_type"])
    assert r["seeds"] == [0, 1] and len(r["accuracy_by_seed"]) == 2 and r["accuracy"] == pytest.approx(
        np.mean(r["accuracy_by_seed"]))
    assert r["accuracy_ci_method"].startswith("two-level bootstrap 95% over 2 seeds")
    assert set(r["lr_grid"]) == {"0.001", "0.003"} and f"{r['lr']:g}" == min(r["lr_grid"], key=r["lr_grid"].get)
    assert all(4 <= s <= 8 for s in r["train_steps"]) and all(
        0 < b <= s for b, s in zip(r["best_step"], r["train_steps"]))
    assert isinstance(r["converged"], bool) and len(r["val_curves"]) == 2 and 0 <= r["val_accuracy"] <= 100
    assert [p[0] for p in r["val_curves"][0]][:2] == [2, 4] and r["acc_val_questions"] > 0
    assert ("stand-in, trained from random weights on 40 generated scenes at 32 px ("
            in r["acc_encoder_source"].replace(":", ","))
    assert r["acc_grid"] == "4x4" and 0 <= r["acc_encoder_chance"] <= 100 and 0 <= r["acc_encoder_val_accuracy"] <= 100
    assert r["accuracy_note"].startswith("small test split: ") and r["acc_cached"] is False


def test_the_validation_split_comes_from_train_and_never_from_test():
    train, test = torch.arange(0, 80), torch.arange(80, 100)
    fit_part, val = carve(train, 0.1, seed=3)
    assert len(val) == 8 and set(val.tolist()) | set(fit_part.tolist()) == set(train.tolist())
    assert not set(val.tolist()) & set(fit_part.tolist()) and not set(val.tolist()) & set(test.tolist())
    assert torch.equal(carve(train, 0.1, seed=3)[1], val) and not torch.equal(carve(train, 0.1, seed=4)[1], val)
    with pytest.raises(ConfigError, match="accuracy.val_fraction"):
        carve(train, 1.5, seed=0)


def _fit_line(max_steps, patience, lr=0.05):
    """fit() on y = 3x with a linear model: it learns, then plateaus."""
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    x = torch.linspace(-1, 1, 64)[:, None]
    y = 3 * x + 0.1 * torch.randn_like(x)
    t = OmegaConf.create({"warmup_steps": 1, "min_steps": 10, "max_steps": max_steps, "eval_every": 5,
                          "patience": patience, "min_delta": 0.01, "lr_drops": 1})

    def val():
        loss = torch.nn.functional.mse_loss(model(x), y).item()
        return loss, 100.0 - loss

    batches = training.batches(torch.arange(64), 16, seed=0)
    run = training.fit(model, lambda b: torch.nn.functional.mse_loss(model(x[b]), y[b]), val, batches, t, lr, "line",
                       True)
    return model, run, val


def test_fit_stops_on_a_plateau_and_restores_the_best_checkpoint():
    model, run, val = _fit_line(max_steps=5000, patience=3)
    assert run["converged"] and run["steps"] < 5000 and run["best_step"] <= run["steps"]
    best = min(run["curve"], key=lambda p: p[1])
    assert run["best_step"] == best[0] and val()[0] == pytest.approx(best[1]) == pytest.approx(run["val_loss"])
    assert abs(model.weight.item() - 3) < 0.1


def test_fit_that_reaches_the_ceiling_is_not_converged():
    _, run, _ = _fit_line(max_steps=12, patience=50, lr=1e-4)
    assert run["steps"] == 12 and not run["converged"] and run["curve"][-1][0] == 12


@pytest.mark.parametrize("floor,converged", [(0.0, False), (1e-3, True)])
def test_a_loss_that_keeps_halving_near_zero_is_a_plateau_only_with_an_absolute_floor(floor, converged):
    """A model at 100% whose loss keeps halving makes a 1% relative gain forever; min_delta_abs stops it."""
    model = torch.nn.Linear(1, 1)
    losses = iter(0.01 * 0.5 ** k for k in range(1000))
    t = OmegaConf.create({"warmup_steps": 1, "min_steps": 10, "max_steps": 200, "eval_every": 5, "patience": 3,
                          "min_delta": 0.01, "min_delta_abs": floor, "lr_drops": 1})
    run = training.fit(model, lambda b: (model.weight ** 2).sum(), lambda: (next(losses), 100.0),
                  training.batches(torch.arange(8), 4, seed=0), t, 1e-3, "halving", True)
    assert run["converged"] is converged and (run["steps"] < 200) is converged


@pytest.mark.parametrize("drop_patience,steps", [(None, 1 + 2 + 2), (4, 1 + 4 + 2)])
def test_the_rate_drop_waits_drop_patience_evaluations_and_the_stop_waits_patience(drop_patience, steps):
    """A flat validation loss: the first evaluation sets the reference, then `drop_patience` (default
    `patience`) stale evaluations drop the rate and `patience` more stop the run."""
    model = torch.nn.Linear(1, 1)
    t = OmegaConf.create({"warmup_steps": 1, "min_steps": 1, "max_steps": 100, "eval_every": 1, "patience": 2,
                          "drop_patience": drop_patience, "min_delta": 0.01, "lr_drops": 1})
    run = training.fit(model, lambda b: (model.weight ** 2).sum(), lambda: (1.0, 50.0),
                  training.batches(torch.arange(8), 4, seed=0), t, 1e-3, "flat", True)
    assert run["converged"] and run["steps"] == steps


def test_divergence_is_an_error_naming_the_fix(tmp_path):
    with pytest.raises(acc.DivergedError, match="training diverged: loss is nan .* lower accuracy.training.lr"):
        acc.evaluate_projector(cfg_for(tmp_path, "accuracy.training.lr=1e30"))


def test_the_learning_rate_is_chosen_on_validation_and_a_diverging_one_is_skipped(tmp_path):
    r = acc.evaluate_projector(cfg_for(tmp_path, "accuracy.training.lr=[1e30,0.003]"))
    assert r["lr"] == 0.003 and r["lr_grid"]["1e+30"] is None and r["lr_grid"]["0.003"] > 0  # None: diverged


def test_two_level_bootstrap_widens_with_the_spread_between_seeds():
    rng = np.random.default_rng(0)
    same = np.tile(rng.random(400) < 0.7, (3, 1)).astype(float)
    spread = np.stack([rng.random(400) < p for p in (0.55, 0.7, 0.85)]).astype(float)
    lo1, hi1 = stats.two_level_bootstrap(same, 0)
    lo2, hi2 = stats.two_level_bootstrap(spread, 0)
    assert lo1 < 100 * same.mean() < hi1 and lo2 < 100 * spread.mean() < hi2 and hi2 - lo2 > 1.5 * (hi1 - lo1)
    assert stats.bootstrap_ci(same[0], 0) == pytest.approx((lo1, hi1), abs=1.0)  # one seed: questions only


def test_a_small_test_without_errors_still_gets_an_interval_as_wide_as_its_size_allows():
    lo36, hi36 = stats.two_level_bootstrap(np.ones((2, 36)), 0)   # the bootstrap alone: [100, 100]
    lo3k, hi3k = stats.two_level_bootstrap(np.ones((2, 3000)), 0)
    assert hi36 == hi3k == 100 and lo36 < 91 and 99.8 < lo3k < 100  # exact binomial: 90.3 on 36, 99.88 on 3000


def test_features_and_encoder_are_cached_across_designs(tmp_path, monkeypatch):
    acc.evaluate_projector(cfg_for(tmp_path))
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 1

    def forbidden(*args, **kwargs):
        raise AssertionError("recomputed what the cache holds")

    monkeypatch.setattr(standin, "pretrain", forbidden)
    monkeypatch.setattr(features.TimmEncoder, "forward", forbidden)
    r = acc.evaluate_projector(cfg_for(tmp_path, "projector=ldp"))  # another design: same features
    assert r["acc_tokens_out"] == 4
    monkeypatch.setattr(acc, "fit", forbidden)
    q = acc.evaluate_projector(cfg_for(tmp_path, "projector=mlp_int8"))  # reuses the trained mlp, quantized
    assert q["acc_tokens_out"] == 16 and q["acc_cached"]


def test_an_edited_projector_is_retrained_not_served_from_the_cache(tmp_path, monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(cache.SOURCE_ROOT, src, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "SOURCE_ROOT", src)
    cfg = cfg_for(tmp_path / "run")
    first = acc.evaluate_projector(cfg)
    again = acc.evaluate_projector(cfg)
    assert not first["acc_cached"] and again["acc_cached"] and again["accuracy"] == first["accuracy"]
    mlp = src / "models" / "projectors" / "mlp.py"
    mlp.write_text(mlp.read_text().replace('"""', '"""Edited. ', 1))
    edited = acc.evaluate_projector(cfg)
    assert not edited["acc_cached"] and edited["acc_code_version"] != first["acc_code_version"]


def test_same_seed_same_accuracy(tmp_path):
    a = acc.evaluate_projector(cfg_for(tmp_path / "a"))
    b = acc.evaluate_projector(cfg_for(tmp_path / "b"))
    assert a["accuracy_by_seed"] == b["accuracy_by_seed"]


def test_each_question_sees_the_image_and_itself_only():
    torch.manual_seed(0)
    proj = acc.create_projector("mlp", 8, 16)
    model = proxy.TinyVLM(proj, (4, 4), vocab=12, q_len=3, answers=5, width=16, layers=2, heads=2).eval()
    visual, q = torch.randn(2, 16, 8), torch.randint(1, 12, (2, 3, 3))
    other = q.clone()
    other[:, 1:] = torch.randint(1, 12, (2, 2, 3))  # change the other questions about the same images
    alone = q.clone()
    alone[:, 1:] = 0  # or leave their slots empty
    with torch.no_grad():
        out, out2, out3 = model(visual, q), model(visual, other), model(visual, alone)
        moved = model(visual.roll(1, 0), q)
    assert torch.allclose(out[:, 0], out2[:, 0], atol=1e-5) and torch.allclose(out[:, 0], out3[:, 0], atol=1e-5)
    assert not torch.allclose(out[:, 0], moved[:, 0], atol=1e-3)  # but it does see its image


def test_prefix_block_is_attention_masked_to_the_image_and_each_question_itself():
    torch.manual_seed(0)
    block = proxy.PrefixBlock(16, 2).eval()
    m, s, x = 5, 3, torch.randn(2, 8, 16)
    allowed = torch.zeros(8, 8, dtype=torch.bool)
    allowed[:, :m] = True  # everyone sees the image; the image nothing else; a question itself too
    allowed[:m, m:] = False
    allowed[range(m, m + s), range(m, m + s)] = True
    q, k, v = block.qkv(block.norm1(x)).view(2, 8, 3, 2, 8).permute(2, 0, 3, 1, 4)
    att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).transpose(1, 2).reshape(2, 8, 16)
    ref = x + block.proj(att)
    ref = ref + block.mlp(block.norm2(ref))
    with torch.no_grad():
        assert torch.allclose(block(x, m), ref, atol=1e-5)


def test_question_slots_hold_each_question_of_an_image_once():
    from projector_bench.tasks.shapes_vqa import shapes_vqa

    d = shapes_vqa(30, img_size=32, seed=2)
    slots = proxy.question_slots(d)
    assert sorted(slots[slots >= 0].tolist()) == list(range(len(d.answers)))
    for i, row in enumerate(slots.tolist()):
        assert all(d.image_of[q] == i for q in row if q >= 0)


def test_digits_and_image_folder_tasks_run(tmp_path):
    d = acc.evaluate_projector(cfg_for(tmp_path, task="digits"))
    assert d["task"] == "digits" and set(d["accuracy_by_type"]) == {"digit"}
    root = write_image_folder(tmp_path / "imgs", classes=3, per_class=10, size=32)
    f = acc.evaluate_projector(cfg_for(tmp_path, f"task.root={root}", task="image_folder"))
    assert f["task"] == "image_folder" and f["acc_test_questions"] == 6 and (
        "small test split: 6 questions" in f["accuracy_note"])
    assert f["accuracy_warning"].startswith("only 6 test questions: this accuracy and its interval mean little")


def test_int8_design_is_scored_after_quantizing_its_trained_twin(tmp_path, monkeypatch):
    seen = []
    real = acc.quantize_linear_int8
    monkeypatch.setattr(acc, "quantize_linear_int8", lambda m: seen.append(type(m).__name__) or real(m))
    acc.evaluate_projector(cfg_for(tmp_path, "projector=ldp_int8"))
    assert seen == ["LDP", "LDP"]  # one per seed
    assert not any(isinstance(m, torch.nn.Linear) and type(m) is torch.nn.Linear
                   for m in real(acc.create_projector("ldp", 8, 8)).modules())


def test_a_changed_image_folder_is_not_served_from_the_cache(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=4, size=16)
    cfg = OmegaConf.create({"_target_": "projector_bench.tasks.classify.image_folder", "root": str(root)})
    before = cache.task_key(cfg)
    write_image_folder(root, classes=3, per_class=4, size=16)
    assert cache.task_key(cfg) != before


def test_trainings_in_worker_processes_fill_the_same_cache(tmp_path):
    r = acc.evaluate_projector(cfg_for(tmp_path, "accuracy.workers=2"))
    assert r["train_workers"] == 2 and not r["acc_cached"] and (
        len(list((tmp_path / "cache" / "models").glob("*.pt"))) == 4)
    again = acc.evaluate_projector(cfg_for(tmp_path, "accuracy.workers=1"))
    assert again["acc_cached"] and again["accuracy_by_seed"] == r["accuracy_by_seed"] and again["lr"] == r["lr"]


def test_the_training_pool_is_kept_from_design_to_design_and_not_started_for_cached_models(tmp_path):
    pool.close_pool()
    acc.evaluate_projector(cfg_for(tmp_path, "accuracy.workers=2"))
    pids = sorted(w.pid for w in pool._POOL[2]._pool)
    ldp = acc.evaluate_projector(cfg_for(tmp_path, "accuracy.workers=2", "projector=ldp"))
    assert not ldp["acc_cached"] and sorted(w.pid for w in pool._POOL[2]._pool) == pids  # the same workers trained it
    pool.close_pool()
    q = acc.evaluate_projector(cfg_for(tmp_path, "accuracy.workers=2", "projector=mlp_int8"))
    assert q["acc_cached"] and pool._POOL == {}  # loaded here: no worker started to read four files


def test_a_training_worker_killed_mid_training_fails_the_job_with_the_cause_instead_of_hanging(tmp_path):
    """The out-of-memory killer ends a worker with SIGKILL: multiprocessing.Pool starts another, but the task it
    had never completes, so waiting for it hung the run for ever. Now the job raises within seconds."""
    import os
    import signal
    import threading
    import time

    pool.close_pool()
    cfg = cfg_for(tmp_path, "accuracy.workers=2", "accuracy.training.min_steps=100000",
                  "accuracy.training.max_steps=100000")
    out: dict = {}
    job = threading.Thread(target=_catch, args=(out, cfg), daemon=True)
    job.start()
    try:
        deadline = time.time() + 120
        while 2 not in pool._POOL and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(8)  # both workers have their model and train it (for 100000 steps)
        os.kill(pool._POOL[2]._pool[0].pid, signal.SIGKILL)
        job.join(60)
        assert not job.is_alive(), "the job still waits for the dead worker's model"
        assert isinstance(out["error"], pool.WorkerDiedError) and (
            "killed by SIGKILL: out of memory?" in str(out["error"]))
        assert pool._POOL == {}  # the other worker, whose model nobody will read, was ended
    finally:
        pool.close_pool()


def _catch(out: dict, cfg) -> None:
    try:
        out["row"] = acc.evaluate_projector(cfg)
    except Exception as e:
        out["error"] = e


def test_the_accuracy_table_marks_a_type_no_design_learned_and_an_unconverged_design():
    import pandas as pd

    from projector_bench.analysis.tables import accuracy_table

    def row(name, left, where, converged):
        return {"projector": name, "acc_tokens_out": 4, "accuracy": 60.0, "accuracy_ci_low": 58.0,
                "accuracy_ci_high": 62.0, "accuracy_by_type": {"left_of": left, "where": where},
                "majority_baseline": 30.0, "converged": converged,
                "accuracy_ci_by_type": {"left_of": (left - 3, left + 3), "where": (where - 3, where + 3)},
                "majority_by_type": {"left_of": 50.0, "where": 11.0}}

    text = accuracy_table(pd.DataFrame([row("mlp", 52.0, 80.0, True), row("pool", 50.0, 12.0, False)]))
    assert "left_of (NOT LEARNED)" in text and "where (NOT LEARNED)" not in text
    assert "not learned by any design (no interval above the type's majority answer): left_of" in text
    assert "(majority answer)" in text and " NO" in text and "two-level bootstrap" in text


def test_a_damaged_cache_entry_is_named_discarded_and_rebuilt(tmp_path, caplog):
    path = tmp_path / "models" / "x.pt"
    assert training.cached(path, lambda: {"a": 1}) == ({"a": 1}, False)
    path.write_bytes(path.read_bytes()[:20])  # truncated
    assert training.cached(path, lambda: {"a": 2}) == ({"a": 2}, False)
    assert any(str(path) in r.getMessage() and "discarding and rebuilding" in r.getMessage() for r in caplog.records)
    assert training.cached(path, lambda: {"a": 3}) == ({"a": 2}, True)


def test_training_workers_are_capped_at_the_trainings_and_the_free_memory(monkeypatch):
    """`accuracy.workers=64` for 4 trainings started 64 processes of ~0.6 GB: the out-of-memory killer's work."""
    monkeypatch.setattr(pool, "available_memory", lambda: 100e9)
    assert pool.training_workers(64, 4) == 4 and pool.training_workers(None, 1) == 1
    monkeypatch.setattr(pool, "available_memory", lambda: 1.5 * pool.WORKER_BYTES)
    assert pool.training_workers(4, 4) == 1  # what fits, at least one
    monkeypatch.setattr(pool, "available_memory", lambda: None)  # not Linux: no cap from memory
    assert pool.training_workers(3, 4) == 3


def test_a_training_worker_watches_its_parent_before_it_imports_torch():
    """A worker's first code (its pool initializer) loads without torch or the package's heavy modules, so that a
    parent killed while its workers still import (seconds; minutes short of memory) leaves none behind for long."""
    import subprocess
    import sys

    code = ("import sys; import projector_bench.core._worker as w; w.init(); "
            "print(sorted(m for m in ('torch', 'timm', 'hydra', 'projector_bench.accuracy.evaluate') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_a_small_folder_trains_only_what_the_proxy_trains_and_its_row_says_so(tmp_path):
    """The stand-in is fine-tuned on a task only where validation shows the gain: a handful of validation images
    cannot, so a small folder keeps it frozen; and what a few images cannot show better than chance is a warning."""
    from projector_bench.tasks.classify import write_blob_folder

    root = write_blob_folder(tmp_path / "blobs", classes=3, per_class=10, size=32, blob=6)
    r = acc.evaluate_projector(cfg_for(tmp_path, f"task.root={root}", task="image_folder"))
    assert r["acc_encoder_fine_tuned"] is False and r["acc_encoder_kept"] == "frozen" and (
        "kept frozen" in r["acc_encoder_source"])
    assert r["acc_encoder_source"].startswith("stand-in: trained from random weights on 40 generated scenes at 32 px")
    assert "no better than chance on its own validation" in r["accuracy_warning"]


def test_a_candidate_encoder_replaces_the_kept_one_only_when_validation_shows_it():
    """Paired exact test at 5%: more labels gained than lost is not enough on a handful of them."""
    old = torch.zeros(40, dtype=torch.bool)
    assert not features._beats(old.clone(), old)
    assert not features._beats(torch.arange(40) < 4, old)  # 4 gained, none lost: p = 0.0625
    assert features._beats(torch.arange(40) < 5, old)  # 5 gained: p = 0.031
    assert not features._beats(torch.arange(40) < 12, torch.arange(40) >= 32)  # 12 gained, 8 lost


def test_the_row_names_the_encoder_validation_kept_with_every_candidate_s_score(tmp_path):
    r = acc.evaluate_projector(cfg_for(tmp_path))
    scores = {name: float(m) for name, m in re.findall(r"(frozen|fine-tuned|task-only) ([\d.]+)% / ",
                                                       r["acc_encoder_source"])}
    assert r["acc_encoder_kept"] in features.KEPT and r["acc_encoder_kept"] not in scores and len(scores) == 2
    assert (f"on shapes_vqa's per cell validation labels {r['acc_encoder_val_accuracy']:.1f}% right, loss "
            in r["acc_encoder_source"])


def test_the_stand_in_encoder_is_kept_when_a_design_or_a_task_is_added_or_edited(tmp_path):
    """Its cache key hashes the code that trains it, not the projectors, the tasks or the proxy VLM: adding a design
    (one file), a question type or editing the proxy must not retrain a stand-in that took minutes."""
    from projector_bench.core.env import code_hash

    tree = tmp_path / "pkg"
    shutil.copytree(cache.SOURCE_ROOT, tree, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_hash(*standin.STANDIN_SOURCES, root=tree)
    (tree / "models" / "projectors" / "new_design.py").write_text("# a new design\n")
    assert code_hash(*standin.STANDIN_SOURCES, root=tree) == before
    (tree / "tasks" / "shapes_vqa.py").write_text((tree / "tasks" / "shapes_vqa.py").read_text() + "\n# edited\n")
    assert code_hash(*standin.STANDIN_SOURCES, root=tree) == before
    assert code_hash(*cache.SOURCES, root=tree) != code_hash(*cache.SOURCES, root=cache.SOURCE_ROOT)  # models retrain
    (tree / "accuracy" / "evaluate.py").write_text(
        (tree / "accuracy" / "evaluate.py").read_text() + "\n# the proxy VLM edited\n")
    assert code_hash(*standin.STANDIN_SOURCES, root=tree) == before
    (tree / "tasks" / "scenes.py").write_text((tree / "tasks" / "scenes.py").read_text() + "\n# edited\n")
    assert code_hash(*standin.STANDIN_SOURCES, root=tree) != before


@pytest.mark.parametrize("keep", ["frozen", "task-only"])
def test_an_ablation_names_the_encoder_to_keep(tmp_path, keep):
    r = acc.evaluate_projector(cfg_for(tmp_path, f"accuracy.encoder_training.keep={keep}", "accuracy.seeds=1",
                                       "accuracy.training.lr=[0.001]"))
    assert r["acc_encoder_kept"] == keep
    assert r["acc_encoder_source"].startswith("trained from random weights on shapes_vqa alone" if keep == "task-only"
                                              else "stand-in: ")


def test_an_encoder_to_keep_that_is_not_a_candidate_is_refused(tmp_path):
    from projector_bench.jobs.validate import validate

    with pytest.raises(ConfigError, match="accuracy.encoder_training.keep='scratch' is not valid: .*task-only"):
        validate(cfg_for(tmp_path, "accuracy.encoder_training.keep=scratch"))
