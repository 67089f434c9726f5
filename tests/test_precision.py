"""The precision preset follows the hardware (each test runs on three faked CPU kinds: AVX2 only, AVX-512
without AMX, AMX bf16), and so do the Predictor's dtype="auto", what train.py and vitcls-predict record."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_config, make_image_folder, tiny_net, train_in_process
from cpu_kinds import CPU_KINDS

from vitcls.errors import ConfigError
from vitcls.inference.export_dir import export_model
from vitcls.inference.predictor import Predictor
from vitcls.precision import choose_precision, precision_preset


def test_cpu_preset_is_bf16_only_with_amx(cpu_kind):
    expected = "bf16-mixed" if cpu_kind.amx_bf16 else "32-true"
    assert precision_preset("cpu") == precision_preset("auto") == expected
    for trainer in ("cpu", "default", "ddp_cpu"):
        assert compose_config("train", ["data.root=/x", f"trainer={trainer}"]).trainer.precision == expected
    assert compose_config("eval", ["ckpt_path=/x.ckpt"]).trainer.precision == expected
    reason = choose_precision("cpu").reason
    assert ("AMX" in reason) and (("no AMX" in reason) == (not cpu_kind.amx_bf16))
    assert f"CPU capability {cpu_kind.capability}" in reason  # names what was detected
    assert ("amx_bf16" in reason) == cpu_kind.amx_bf16


def test_the_faked_cpu_facts_are_the_ones_torch_reports():
    """The fakes (tests/cpu_kinds.py) use the names and values this torch really reports on any machine."""
    real = torch.cpu.get_capabilities()
    for kind in CPU_KINDS.values():
        assert set(kind.capabilities()) <= set(real), kind.name
        assert kind.capability in ("NO AVX", "AVX2", "AVX512")  # torch.backends.cpu.get_cpu_capability's x86 names
    assert isinstance(torch.backends.cpu.get_cpu_capability(), str)
    assert isinstance(torch.cpu._is_amx_tile_supported(), bool)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    torch.manual_seed(0)
    net = tiny_net("linear", class_names=["blue", "green", "red"]).eval()
    return export_model(net, tmp_path_factory.mktemp("export") / "model", net.data_config)


def test_predictor_auto_dtype_follows_the_cpu_and_can_be_forced(cpu_kind, export_dir):
    auto = Predictor.from_pretrained(export_dir, device="cpu")
    assert auto.dtype == ("bfloat16" if cpu_kind.amx_bf16 else "float32")
    assert auto.precision.reason.startswith("dtype=auto")
    forced = {name: Predictor.from_pretrained(export_dir, device="cpu", dtype=name) for name in ("float32", "bfloat16")}
    assert forced["float32"].dtype == "float32" and forced["bfloat16"].dtype == "bfloat16"
    assert Predictor.from_pretrained(export_dir, device="cpu", dtype=torch.bfloat16).dtype == "bfloat16"

    images = torch.rand(6, 3, 32, 32)
    fp32, bf16 = (forced[name].predict_proba(images) for name in ("float32", "bfloat16"))
    assert not torch.equal(fp32, bf16)  # bf16 autocast really ran
    torch.testing.assert_close(bf16, fp32, atol=0.02, rtol=0)
    assert all(p.dtype == torch.float32 for p in forced["bfloat16"].runner.module.parameters())  # autocast


def test_predictor_refuses_unknown_dtypes_and_bf16_on_onnx(export_dir):
    with pytest.raises(ConfigError, match="dtype must be one of"):
        Predictor.from_pretrained(export_dir, device="cpu", dtype="int8")
    with pytest.raises(ConfigError, match="backend='onnx'.*float32"):
        Predictor.from_pretrained(export_dir, device="cpu", backend="onnx", dtype="bfloat16")


def test_predict_cli_records_its_dtype_in_metrics_json(cpu_kind, export_dir, tmp_path):
    from vitcls.cli.predict import parse_args, run

    make_image_folder(tmp_path / "photos", {"blue": 2, "red": 2})
    output = tmp_path / "out" / "preds.csv"
    run(parse_args([str(export_dir), str(tmp_path / "photos"), "--output", str(output), "--labels-from-folders",
                    "--num-workers", "0", "--no-progress"]))
    metrics = json.loads((output.parent / "metrics.json").read_text())
    assert metrics["dtype"] == ("bfloat16" if cpu_kind.amx_bf16 else "float32")
    assert metrics["dtype_reason"].startswith("dtype=auto")


def test_train_runs_in_the_preset_and_records_it(cpu_kind, image_folder_factory, tmp_path):
    root = image_folder_factory({"a": 6, "b": 6})
    summary = train_in_process(tmp_path / "run", f"data.root={root}", "trainer.max_epochs=1")
    expected = "bf16-mixed" if cpu_kind.amx_bf16 else "32-true"
    assert summary["precision"]["precision"] == summary["precision"]["preset"] == expected
    assert summary["precision"]["dtype"] == ("bfloat16" if cpu_kind.amx_bf16 else "float32")
    assert "AMX" in summary["precision"]["reason"]
    forced = train_in_process(tmp_path / "forced", f"data.root={root}", "trainer.max_epochs=1",
                              "trainer.precision=32-true")
    assert forced["precision"]["precision"] == "32-true"
    assert forced["precision"]["preset"] == expected
    if cpu_kind.amx_bf16:
        assert forced["precision"]["reason"] == "set by trainer.precision (preset: bf16-mixed)"
