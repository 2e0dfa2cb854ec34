"""`accuracy.device`: where the encoder and every model of the accuracy proxy train. The CPU path runs here;
the CUDA and MPS tests run where torch sees such a device and are skipped elsewhere (none is faked)."""
from __future__ import annotations

import pytest
import torch

import projector_bench.accuracy.evaluate as acc
from projector_bench import ConfigError
from projector_bench.accuracy import pool
from projector_bench.core.env import training_device
from projector_bench.jobs.validate import validate
from tests.test_accuracy import cfg_for

CUDA = torch.cuda.is_available()
MPS = torch.backends.mps.is_available()
FAST = ["accuracy.seeds=1", "accuracy.training.lr=[0.001]"]


def test_auto_takes_the_first_device_torch_can_use():
    want = "cuda" if CUDA else "mps" if MPS else "cpu"
    assert training_device("auto").type == want and training_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name,says", [("bogus", "is not a device"), ("meta", "not a device the proxy trains on"),
                                       ("cuda:99", "CUDA device"), ("mps", "MPS")])
def test_a_device_torch_cannot_use_is_refused_naming_the_fix(name, says):
    if name == "mps" and MPS:
        pytest.skip("this machine has MPS")
    with pytest.raises(ValueError, match=f"{says}.*(use auto, cpu|use accuracy.device=auto or cpu)"):
        training_device(name)


def test_a_job_asking_for_an_absent_device_fails_before_it_measures(tmp_path):
    name = "cuda:99" if CUDA else "cuda"
    with pytest.raises(ConfigError, match=f"^accuracy.device='{name}': torch sees .* use accuracy.device=auto or cpu"):
        validate(cfg_for(tmp_path, f"accuracy.device={name}"))


def test_cpu_named_explicitly_is_the_cpu_path_and_shares_its_cache(tmp_path):
    """On the CPU the key adds nothing for the device: `cpu` and, on a machine without accelerators, `auto` are the
    same models."""
    r = acc.evaluate_projector(cfg_for(tmp_path, "accuracy.device=cpu", *FAST))
    assert r["acc_device"] == "cpu" and 0 <= r["accuracy"] <= 100 and not r["acc_cached"]
    if not (CUDA or MPS):
        again = acc.evaluate_projector(cfg_for(tmp_path, "accuracy.device=auto", *FAST))
        assert again["acc_cached"] and again["accuracy"] == r["accuracy"] and again["acc_device"] == "cpu"


def test_the_default_workers_follow_the_cores_on_the_cpu_and_are_one_on_an_accelerator(monkeypatch):
    monkeypatch.setattr(pool, "usable_cores", lambda: 32)
    monkeypatch.setattr(pool, "available_memory", lambda: 1e12)
    assert pool.training_workers(None, 4) == 4 and pool.training_workers(None, 64) == 32
    assert pool.training_workers(None, 4, "cuda") == 1 and pool.training_workers(3, 4, "cuda") == 3


@pytest.mark.parametrize("device", [
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="torch sees no CUDA device here")),
    pytest.param("mps", marks=pytest.mark.skipif(not MPS, reason="torch cannot use MPS here"))])
def test_an_accelerator_trains_the_encoder_and_the_models_there_keyed_apart_from_the_cpu(tmp_path, device):
    cpu = acc.evaluate_projector(cfg_for(tmp_path, "accuracy.device=cpu", *FAST))
    r = acc.evaluate_projector(cfg_for(tmp_path, f"accuracy.device={device}", *FAST))
    assert r["acc_device"].startswith(device) and not r["acc_cached"] and 0 <= r["accuracy"] <= 100
    assert r["acc_code_version"] == cpu["acc_code_version"]
    again = acc.evaluate_projector(cfg_for(tmp_path, f"accuracy.device={device}", *FAST))
    assert again["acc_cached"] and again["accuracy"] == r["accuracy"]  # its cache, read back on the CPU scorer
