"""The precision preset follows the hardware (torch's CPU capability check, mocked both ways), and so do the
Predictor's dtype="auto", what train.py, eval.py and vitcls-predict record."""

from __future__ import annotations

import json
import types

import pytest
import torch
from conftest import compose_config, make_image_folder, tiny_net, train_in_process

from vitcls.errors import ConfigError
from vitcls.inference.export_dir import export_model
from vitcls.inference.predictor import Predictor
from vitcls.precision import choose_precision, precision_preset

AMX_CPU = {"architecture": "x86_64", "avx2": True, "avx512_bf16": True, "amx_tile": True, "amx_bf16": True}
AVX2_CPU = {"architecture": "x86_64", "avx2": True}


@pytest.fixture(params=["amx", "avx2"])
def cpu(request, monkeypatch):
    """A CPU-only machine whose torch reports AMX bf16, or only AVX2."""
    capabilities = AMX_CPU if request.param == "amx" else AVX2_CPU
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: types.MappingProxyType(capabilities))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return request.param


def test_cpu_preset_is_bf16_only_with_amx(cpu):
    expected = "bf16-mixed" if cpu == "amx" else "32-true"
    assert precision_preset("cpu") == precision_preset("auto") == expected
    for trainer in ("cpu", "default", "ddp_cpu"):
        assert compose_config("train", ["data.root=/x", f"trainer={trainer}"]).trainer.precision == expected
    assert compose_config("eval", ["ckpt_path=/x.ckpt"]).trainer.precision == expected
    reason = choose_precision("cpu").reason
    assert ("AMX" in reason) and (("no AMX" in reason) == (cpu == "avx2"))
    assert "AVX2" in reason or "amx_bf16" in reason  # names what was detected


def test_cpu_preset_reads_torch_capabilities_not_a_fixed_answer():
    capabilities = torch.cpu.get_capabilities()
    expected = "bf16-mixed" if capabilities.get("amx_bf16") and capabilities.get("amx_tile") else "32-true"
    assert precision_preset("cpu") == expected


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    torch.manual_seed(0)
    net = tiny_net("linear", class_names=["blue", "green", "red"]).eval()
    return export_model(net, tmp_path_factory.mktemp("export") / "model", net.data_config)


def test_predictor_auto_dtype_follows_the_cpu_and_can_be_forced(cpu, export_dir):
    auto = Predictor.from_pretrained(export_dir, device="cpu")
    assert auto.dtype == ("bfloat16" if cpu == "amx" else "float32")
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


def test_predict_cli_records_its_dtype_in_metrics_json(cpu, export_dir, tmp_path):
    from vitcls.cli.predict import parse_args, run

    make_image_folder(tmp_path / "photos", {"blue": 2, "red": 2})
    output = tmp_path / "out" / "preds.csv"
    run(parse_args([str(export_dir), str(tmp_path / "photos"), "--output", str(output), "--labels-from-folders",
                    "--num-workers", "0", "--no-progress"]))
    metrics = json.loads((output.parent / "metrics.json").read_text())
    assert metrics["dtype"] == ("bfloat16" if cpu == "amx" else "float32")
    assert metrics["dtype_reason"].startswith("dtype=auto")


def test_train_runs_in_the_preset_and_records_it(cpu, image_folder_factory, tmp_path):
    root = image_folder_factory({"a": 6, "b": 6})
    summary = train_in_process(tmp_path / "run", f"data.root={root}", "trainer.max_epochs=1")
    expected = "bf16-mixed" if cpu == "amx" else "32-true"
    assert summary["precision"]["precision"] == summary["precision"]["preset"] == expected
    assert summary["precision"]["dtype"] == ("bfloat16" if cpu == "amx" else "float32")
    assert "AMX" in summary["precision"]["reason"]
    forced = train_in_process(tmp_path / "forced", f"data.root={root}", "trainer.max_epochs=1",
                              "trainer.precision=32-true")
    assert forced["precision"]["precision"] == "32-true"
    assert forced["precision"]["preset"] == expected
    if cpu == "amx":
        assert forced["precision"]["reason"] == "set by trainer.precision (preset: bf16-mixed)"
