"""train.precision = "auto": bf16 only where the device computes it natively, resolved the same way
by training, the teachers, `arvision check` and the ablation runner's run identities."""

import pytest
import torch

from arvision import precision as optim
from arvision.ablate.plan import identity
from arvision.precision import planned_precision, resolve_precision
from arvision.recipe.schema import TrainConfig
from conftest import REPO, run_cli


@pytest.fixture
def bf16_units(monkeypatch):
    """Pretend this machine does (True) or does not (False) compute bf16 natively."""
    def pretend(native: bool) -> None:
        monkeypatch.setattr(optim, "fast_bf16", lambda device_type: native)
    return pretend


def test_auto_is_the_default_and_explicit_choices_stay():
    assert TrainConfig().precision == "auto"
    for precision in ("bf16", "fp16", "fp32"):
        assert resolve_precision(precision, "cpu") == precision


@pytest.mark.parametrize(("native", "cpu", "cuda"), [(True, "bf16", "bf16"),
                                                     (False, "fp32", "fp16")])
def test_auto_follows_the_hardware(bf16_units, native, cpu, cuda):
    bf16_units(native)
    assert resolve_precision("auto", torch.device("cpu")) == cpu
    assert resolve_precision("auto", "cuda:1") == cuda
    assert planned_precision("auto", "cpu") == cpu


def test_this_machines_answer_is_onednns():
    expected = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    assert resolve_precision("auto", "cpu") == expected


def test_autocast_is_off_where_auto_means_fp32(bf16_units):
    bf16_units(False)
    with optim.autocast(torch.device("cpu"), "auto"):
        assert not torch.is_autocast_enabled("cpu")
    bf16_units(True)
    with optim.autocast(torch.device("cpu"), "auto"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and \
            torch.is_autocast_enabled("cpu")


def test_an_ablation_run_on_other_hardware_is_another_run(bf16_units):
    record = {"train": {"precision": "auto", "steps": 4}}
    bf16_units(True)
    with_units = identity(record, 1)
    bf16_units(False)
    without = identity(record, 1)
    assert with_units != without
    explicit = {"train": {"precision": "fp32", "steps": 4}}  # resolves the same everywhere
    assert identity(explicit, 1) == (bf16_units(True) or identity(explicit, 1))


def test_check_prints_what_auto_resolves_to(capsys, monkeypatch, bf16_units):
    bf16_units(False)
    monkeypatch.setenv("COLUMNS", "200")
    code, stdout, stderr = run_cli(capsys, "check", REPO / "recipes" / "quickstart.toml")
    assert code == 0, stderr
    expected = "fp16 (auto)" if torch.cuda.is_available() else "fp32 (auto)"
    assert f"precision      │ {expected} on this machine" in stdout
