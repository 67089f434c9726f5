"""Parameter-efficient adapters: LoRA through peft and visual prompt tuning (adapter=lora|vpt)."""

from __future__ import annotations

import json
import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import FAST_OVERRIDES, REPO_ROOT, compose_config, run_cli, tiny_net_config, train_in_process

from vitcls.config.validation import check_train_config
from vitcls.errors import ConfigError
from vitcls.models.lightning_module import ClassifierModule

# vit_tiny_patch16_224: width 192, 12 blocks, qkv 192 -> 576, proj 192 -> 192, fc1 192 -> 768, fc2 768 -> 192
WIDTH, DEPTH = 192, 12
LORA = {"name": "lora", "rank": 8, "alpha": 16, "dropout": 0.0, "targets": ["qkv"]}
VPT = {"name": "vpt", "num_prompts": 10, "deep": False}
VPT_DEEP = {**VPT, "deep": True}


def adapted_module(adapter, head="linear", train_blocks="none", tap=None, **kwargs) -> ClassifierModule:
    net = {**tiny_net_config(head, tap), "adapter": adapter}
    return ClassifierModule(net=net, train_blocks=train_blocks, scheduler=None, **kwargs)


def linear_head(num_classes=3) -> int:
    return WIDTH * num_classes + num_classes


# --- what trains ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("adapter", "expected"),
    [
        (LORA, 73_728),  # 12 blocks x (A: 8 x 192 + B: 576 x 8)
        # 12 x 4 x ((192 + 576) + (192 + 192) + (192 + 768) + (768 + 192)): A r x in, B out x r per layer
        ({**LORA, "rank": 4, "targets": ["qkv", "proj", "fc1", "fc2"]}, 147_456),
        (VPT, 1_920),  # 10 prompts x 192
        (VPT_DEEP, 23_040),  # 12 blocks x 10 prompts x 192
    ],
    ids=["lora_qkv_r8", "lora_all_r4", "vpt_shallow", "vpt_deep"],
)
def test_trainable_parameters_are_the_adapter_and_the_head(adapter, expected):
    module = adapted_module(adapter)
    assert module.parameter_counts["trainable"] == expected + linear_head()
    frozen_total = adapted_module(None).parameter_counts["total"]
    assert module.parameter_counts["total"] == frozen_total + expected


def _step(module, steps=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    optimizer = module.configure_optimizers()["optimizer"]
    module.train()
    for _ in range(steps):
        images = torch.randn(4, 3, 32, 32, generator=generator)
        targets = torch.tensor([0, 1, 2, 0])
        optimizer.zero_grad()
        module.criterion(module(images), targets).backward()
        optimizer.step()


@pytest.mark.parametrize("adapter", [LORA, VPT, VPT_DEEP], ids=["lora", "vpt_shallow", "vpt_deep"])
def test_a_step_changes_the_adapter_and_the_head_and_nothing_else(adapter):
    torch.manual_seed(0)
    module = adapted_module(adapter)
    before = {name: p.detach().clone() for name, p in module.net.named_parameters()}
    _step(module)  # two steps: LoRA's A gets a gradient only once B is no longer zero
    adapter_names = {n for n, p in module.net.named_parameters() if any(p is q for q in module.net.adapter_parameters())}
    assert adapter_names and all("lora_" in n or n.startswith("adapter_module.") for n in adapter_names)
    for name, parameter in module.net.named_parameters():
        changed = not torch.equal(parameter, before[name])
        assert changed == (name in adapter_names or name.startswith("heads.")), name


def test_lora_with_trained_blocks_trains_those_blocks_too():
    torch.manual_seed(0)
    module = adapted_module(LORA, train_blocks=2)
    before = {name: p.detach().clone() for name, p in module.net.backbone.named_parameters()}
    _step(module)
    for name, parameter in module.net.backbone.named_parameters():
        in_trained_block = name.startswith(("blocks.10.", "blocks.11.", "norm."))
        assert (not torch.equal(parameter, before[name])) == (in_trained_block or "lora_" in name), name


def test_frozen_parts_run_in_eval_mode_but_blocks_with_lora_train():
    module = adapted_module({**LORA, "dropout": 0.5}).train()
    assert module.net.backbone.patch_embed.training is False
    assert all(block.training for block in module.net.backbone.blocks)  # LoRA's dropout applies
    assert module.net.backbone.blocks[0].attn.qkv.lora_dropout["default"].training
    vpt = adapted_module(VPT).train()
    assert not any(m.training for m in vpt.net.backbone.modules())


def test_layer_decay_groups_lora_factors_by_block_and_prompts_apart():
    from vitcls.models.optim import create_optimizer

    lora = adapted_module(LORA)
    optimizer = create_optimizer(lora.net.backbone, lora.net.head, lr=1e-3, layer_decay=0.5)
    by_parameter = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    last = lora.net.backbone.blocks[11].attn.qkv.lora_A["default"].weight
    first = lora.net.backbone.blocks[0].attn.qkv.lora_A["default"].weight
    assert by_parameter[id(last)]["lr"] == pytest.approx(1e-3 * 0.5)
    assert by_parameter[id(first)]["lr"] == pytest.approx(1e-3 * 0.5**12)

    vpt = adapted_module(VPT_DEEP)
    optimizer = create_optimizer(vpt.net.backbone, vpt.net.head, lr=1e-3, layer_decay=0.5,
                                 adapter_parameters=vpt.net.adapter_parameters())
    (group,) = [g for g in optimizer.param_groups if g["name"] == "adapter_no_decay"]
    assert group["params"][0] is vpt.net.adapter_module.tokens and group["lr"] == 1e-3 and group["weight_decay"] == 0


# --- LoRA merging and export --------------------------------------------------------------------
def _perturbed_lora_net():
    torch.manual_seed(1)
    net = adapted_module(LORA).net.eval()
    with torch.no_grad():  # B starts at zero: give the update something to merge
        for parameter in net.adapter_parameters():
            parameter.normal_(0, 0.05)
    return net


def test_merged_lora_gives_the_same_logits_as_the_unmerged_module():
    net = _perturbed_lora_net()
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    merged = net.with_adapter_merged()
    with torch.no_grad():
        unmerged_logits, merged_logits = net(images), merged(images)
        base = adapted_module(None).net.eval()
        base.load_state_dict(merged.state_dict())  # a plain timm ViT takes the merged weights as they are
        plain_logits = base(images)
    assert torch.allclose(merged_logits, unmerged_logits, atol=1e-5)
    assert torch.allclose(plain_logits, unmerged_logits, atol=1e-5)
    assert not torch.allclose(unmerged_logits, adapted_module(None).net.eval()(images), atol=1e-3)
    assert merged.config["adapter"] is None and net.config["adapter"] == LORA  # the original is untouched
    assert not any("lora_" in key for key in merged.state_dict())


def test_lora_export_is_a_plain_model_that_loads_without_peft(tmp_path):
    from vitcls.inference.export_dir import export_model, load_exported_network

    net = _perturbed_lora_net()
    out = export_model(net, tmp_path / "export", net.data_config)
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["adapter"] is None and config["source"]["merged_adapter"] == LORA
    assert "lora adapter" in (out / "README.md").read_text()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    loaded, _ = load_exported_network(out)
    with torch.no_grad():
        assert torch.allclose(loaded(images), net(images), atol=1e-5)
    torch.save(images, tmp_path / "images.pt")
    torch.save(net(images).detach(), tmp_path / "logits.pt")
    code = (
        "import sys, torch\n"
        "from vitcls import Predictor\n"
        "from vitcls.inference.export_dir import load_exported_network\n"
        f"Predictor.from_pretrained({str(out)!r})\n"
        f"net, _ = load_exported_network({str(out)!r})\n"
        f"images = torch.load({str(tmp_path / 'images.pt')!r})\n"
        "with torch.no_grad():\n"
        "    logits = net(images)\n"
        f"assert torch.allclose(logits, torch.load({str(tmp_path / 'logits.pt')!r}), atol=1e-5)\n"
        "print(sorted({'peft', 'transformers'} & {m.split('.')[0] for m in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


# --- VPT ----------------------------------------------------------------------------------------
def _final_norm_input_and_output(net, images):
    """What the backbone's final norm sees and gives: the whole sequence, prompts included."""
    seen = {}
    handle = net.backbone.norm.register_forward_hook(lambda m, args, out: seen.update(out=out))
    with torch.no_grad():
        (features,) = net.features(images)
    handle.remove()
    return features, seen["out"]


@pytest.mark.parametrize("adapter", [VPT, VPT_DEEP], ids=["shallow", "deep"])
def test_prompts_are_excluded_from_the_mean_tap_and_the_tokens(adapter):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    net = adapted_module(adapter, tap={"features": "mean"}).net.eval()
    features, sequence = _final_norm_input_and_output(net, images)
    assert sequence.shape[1] == 1 + 10 + 4  # CLS, 10 prompts, 4 patches of a 32 px image
    assert torch.allclose(features, sequence[:, 11:].mean(dim=1), atol=1e-6)
    assert not torch.allclose(features, sequence[:, 1:].mean(dim=1), atol=1e-4)

    pooled = adapted_module(adapter, head="attention_pool").net.eval()
    tokens, sequence = _final_norm_input_and_output(pooled, images)
    assert torch.equal(tokens, torch.cat([sequence[:, :1], sequence[:, 11:]], dim=1))


def test_prompts_enter_after_the_prefix_tokens_and_deep_prompts_replace_them_at_every_block():
    net = adapted_module(VPT_DEEP).net.eval()
    inputs = {}
    handles = [
        block.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args[0]))
        for i, block in enumerate(net.backbone.blocks)
    ]
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 32))
    for handle in handles:
        handle.remove()
    for index in range(DEPTH):
        assert torch.equal(inputs[index][0, 1:11], net.adapter_module.tokens[index]), index

    shallow = adapted_module(VPT).net.eval()
    with torch.no_grad():
        images = torch.randn(2, 3, 32, 32)
        before = shallow(images)
        shallow.adapter_module.tokens.add_(torch.randn_like(shallow.adapter_module.tokens))
        assert not torch.allclose(shallow(images), before, atol=1e-4)  # the prompts are in the sequence


def test_last_k_tap_with_prompts_reads_the_cls_token_of_the_last_blocks():
    net = adapted_module(VPT_DEEP, tap={"features": "last_k", "last_k": 2}).net.eval()
    outputs = {}
    handles = [
        net.backbone.blocks[i].register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out))
        for i in (10, 11)
    ]
    with torch.no_grad():
        (features,) = net.features(torch.randn(2, 3, 32, 32))
        expected = torch.cat([net.backbone.norm(outputs[i])[:, 0] for i in (10, 11)], dim=-1)
    for handle in handles:
        handle.remove()
    assert torch.allclose(features, expected, atol=1e-6)


def test_vpt_export_keeps_the_prompts_and_predicts_like_the_network(tmp_path):
    from vitcls.inference.export_dir import export_model, load_exported_network

    net = adapted_module(VPT_DEEP).net.eval()
    out = export_model(net, tmp_path / "export", net.data_config)
    from safetensors.torch import load_file

    assert torch.equal(load_file(out / "model.safetensors")["adapter_module.tokens"], net.adapter_module.tokens)
    assert json.loads((out / "config.json").read_text())["model"]["adapter"] == VPT_DEEP
    loaded, _ = load_exported_network(out)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), net(images))


@pytest.mark.slow
def test_vpt_and_merged_lora_onnx_exports_match_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from vitcls.inference.export_dir import export_model
    from vitcls.inference.predictor import Predictor

    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    verify = []
    for index in range(2):
        path = tmp_path / f"image_{index}.png"
        from torchvision.transforms.functional import to_pil_image

        to_pil_image(images[index]).save(path)
        verify.append(str(path))
    for name, net in (("vpt", adapted_module(VPT_DEEP).net.eval()), ("lora", _perturbed_lora_net())):
        out = export_model(net, tmp_path / name, net.data_config, onnx=True, verify_images=verify)
        config = json.loads((out / "config.json").read_text())
        assert config["onnx"]["max_abs_diff_logits"] <= 1e-3, name
        torch_scores = Predictor.from_pretrained(out).predict_proba(verify)
        onnx_scores = Predictor.from_pretrained(out, backend="onnx").predict_proba(verify)
        assert abs(torch_scores - onnx_scores).max() < 1e-4, name


# --- bad settings -------------------------------------------------------------------------------
def _checked(*overrides, tmp_path):
    check_train_config(compose_config("train", [f"paths.output_dir={tmp_path}", *FAST_OVERRIDES, *overrides]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["adapter=lora", "adapter.rank=0"], r"adapter.rank=0 is not allowed: a positive integer"),
        (["adapter=lora", "adapter.alpha=-1"], r"adapter.alpha=-1 is not allowed"),
        (["adapter=lora", "adapter.dropout=1.0"], r"adapter.dropout=1.0 is not allowed"),
        (["adapter=lora", "adapter.targets=[qkv,query]"],
         r"\['query'\] are not linear layers of the backbone's blocks; its linear layers are "
         r"\['fc1', 'fc2', 'proj', 'qkv'\]"),
        (["adapter=lora", "adapter.targets=[]"], r"adapter.targets=\[\] is not allowed"),
        (["adapter=vpt", "model=timm_vit", "model.name=resnet18", "model.img_size=null"],
         r"adapter=vpt needs a timm VisionTransformer backbone .* builds a ResNet"),
        (["adapter=vpt", "model=timm_vit", "model.name=resnet18"], r"model.name='resnet18' does not take .*img_size"),
        (["adapter=vpt", "adapter.num_prompts=0"], r"adapter.num_prompts=0 is not allowed"),
        (["adapter=vpt", "feature_cache.enabled=true"], r"feature_cache.enabled=true with adapter=vpt"),
    ],
    ids=["rank0", "alpha", "dropout", "unknown_target", "no_targets", "vpt_resnet", "resnet_img_size", "no_prompts",
         "cache"],
)
def test_bad_adapter_settings_are_clear_errors_before_any_work(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        _checked(*overrides, tmp_path=tmp_path)


def test_a_bad_adapter_setting_on_the_command_line_is_one_line_and_exit_2(image_folder_factory, tmp_path):
    root = image_folder_factory({"a": 4, "b": 4})
    result = run_cli(
        "train.py", f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}", *FAST_OVERRIDES,
        "adapter=lora", "adapter.targets=[mlp]", expect_success=False,
    )
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "its linear layers are ['fc1', 'fc2', 'proj', 'qkv']" in output
    assert "Traceback" not in output
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- whole runs ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter_runs(tmp_path_factory):
    """One short run per adapter on a small generated folder (train + test), with an export."""
    from conftest import make_image_folder

    base = tmp_path_factory.mktemp("adapter_runs")
    for index, split in enumerate(("train", "test")):
        make_image_folder(base / "images", {"a": 10, "b": 10, "c": 10}, split, seed=10 + index)
    runs = {}
    for name, overrides in {
        "lora": ["adapter=lora", "adapter.dropout=0.1"],
        "vpt": ["adapter=vpt", "adapter.deep=true", "head=attention_pool"],
    }.items():
        summary = train_in_process(
            base / name, f"data.root={base / 'images'}", "trainer.max_epochs=2", "optim.lr=1e-3",
            "export.enabled=true", *overrides,
        )
        runs[name] = summary
    return base, runs


@pytest.mark.parametrize("name", ["lora", "vpt"])
def test_summary_counts_what_trains_and_what_a_step_costs(adapter_runs, name):
    _, runs = adapter_runs
    summary = runs[name]
    module, _ = ClassifierModule.from_checkpoint(summary["best_ckpt"])
    assert summary["params"] == module.parameter_counts
    adapter_size = 73_728 if name == "lora" else DEPTH * 10 * WIDTH
    assert summary["params"]["trainable"] == adapter_size + sum(p.numel() for p in module.net.head.parameters())
    cost = summary["train"]
    train_images = summary["num_samples"]["train"]
    first_batch = 4
    assert cost["timed_images"] == 2 * train_images - first_batch and cost["images_per_s"] > 0
    parts = cost["step_mem_parts_mb"]
    assert parts["parameters"] == pytest.approx(summary["params"]["total"] * 4 / 2**20, abs=1e-3)
    assert parts["gradients"] == pytest.approx(summary["params"]["trainable"] * 4 / 2**20, abs=1e-3)
    # AdamW: two moments per trainable value, plus one step counter per trainable tensor
    assert 2 * parts["gradients"] <= parts["optimizer_state"] <= 2 * parts["gradients"] + 0.01
    assert parts["activations"] > 0
    assert cost["peak_mem_method"] == "counted" and cost["peak_mem_mb"] == cost["step_mem_mb"]
    assert cost["step_mem_mb"] == pytest.approx(sum(parts.values()), abs=2e-3)


def test_eval_rebuilds_the_adapter_from_the_checkpoint_alone(adapter_runs, tmp_path):
    from vitcls.run.evaluate import run as evaluate

    _, runs = adapter_runs
    for name, summary in runs.items():
        cfg = compose_config("eval", [f"ckpt_path={summary['best_ckpt']}", f"paths.output_dir={tmp_path / name}",
                                      "trainer=cpu", "data.num_workers=0", "gallery.num_images=2"])
        report = evaluate(cfg)
        for metric, value in summary["test"].items():
            assert report["test"][metric] == pytest.approx(value, abs=1e-6), (name, metric)


def test_exports_of_adapter_runs_predict_the_test_metrics(adapter_runs):
    from vitcls.inference.predictor import Predictor

    base, runs = adapter_runs
    for name, summary in runs.items():
        export_dir = summary["paths"]["export_dir"]
        config = json.loads((base / name / "export" / "config.json").read_text())
        assert config["model"]["adapter"] == (None if name == "lora" else VPT_DEEP)
        predictor = Predictor.from_pretrained(export_dir)
        files = sorted((base / "images" / "test").rglob("*.png"))
        scores = predictor.predict_proba([str(f) for f in files])
        labels = torch.tensor([predictor.class_names.index(f.parent.name) for f in files])
        accuracy = (scores.argmax(1) == labels).float().mean().item()
        assert accuracy == pytest.approx(summary["test"]["acc"], abs=1e-6), name


class StopAtSecondEpoch(L.Callback):
    """Test helper, instantiated from the config: fails the run once the first epoch's checkpoint exists."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("stopped for the test")


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["lora", "vpt"])
def test_an_adapter_run_resumed_from_its_checkpoint_ends_like_an_uninterrupted_one(
    adapter, image_folder_factory, tmp_path
):
    root = image_folder_factory({"a": 8, "b": 8, "c": 8}, seed=3)
    common = [f"data.root={root}", "trainer.max_epochs=2", "optim.lr=1e-3", f"adapter={adapter}"]
    reference = train_in_process(tmp_path / "reference", *common)
    with pytest.raises(RuntimeError, match="stopped for the test"):
        train_in_process(tmp_path / "resumed", *common, f"+callbacks.stop._target_={__name__}.StopAtSecondEpoch")
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    resumed = train_in_process(tmp_path / "resumed", *common, f"ckpt_path={last}")
    assert resumed["test"] == reference["test"]
    final = [torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=True) for d in ("reference", "resumed")]
    adapter_keys = [k for k in final[0]["state_dict"] if "lora_" in k or k.startswith("net.adapter_module.")]
    assert adapter_keys
    for key, value in final[0]["state_dict"].items():
        assert torch.equal(value, final[1]["state_dict"][key]), key


@pytest.mark.slow
def test_adapters_with_ema_and_ddp(image_folder_factory, tmp_path):
    root = image_folder_factory({"a": 9, "b": 9}, seed=4)
    ema = train_in_process(tmp_path / "ema", f"data.root={root}", "trainer.max_epochs=1", "adapter=lora",
                           "callbacks=ema", "callbacks.ema.decay=0.5", "optim.lr=1e-2")
    checkpoint = torch.load(ema["best_ckpt"], weights_only=True)
    key = "net.backbone.blocks.0.attn.qkv.lora_B.default.weight"
    assert not torch.equal(checkpoint["state_dict"][key], checkpoint["current_model_state"][key])

    run_dir = tmp_path / "ddp"
    fast = [o for o in FAST_OVERRIDES if not o.startswith(("trainer=", "data.batch_size"))]
    run_cli("train.py", f"data.root={root}", f"hydra.run.dir={run_dir}", *fast, "trainer=ddp_cpu",
            "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0", "adapter=vpt", "data.batch_size=2")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["params"]["trainable"] == 10 * WIDTH + 2 * WIDTH + 2
    assert summary["train"]["timed_images"] > 0


# --- the ladder ---------------------------------------------------------------------------------
RUNGS = ["linear_probe", "attention_probe", "last2_blocks", "bitfit", "lora", "vpt_shallow", "vpt_deep",
         "full_finetune"]


def test_every_rung_composes_to_what_it_names():
    seen = {}
    for rung in RUNGS:
        cfg = compose_config("train", ["sweep=adaptation_ladder", f"ladder={rung}"])
        adapter = cfg.adapter._target_.rsplit(".", 1)[-1] if cfg.adapter else None
        seen[rung] = (cfg.head._target_.rsplit(".", 1)[-1], str(cfg.model.train_blocks), cfg.model.bitfit, adapter,
                      cfg.adapter.get("deep") if cfg.adapter else None)
    assert seen == {
        "linear_probe": ("LinearHead", "none", False, None, None),
        "attention_probe": ("AttentionPoolHead", "none", False, None, None),
        "last2_blocks": ("LinearHead", "2", False, None, None),
        "bitfit": ("LinearHead", "all", True, None, None),
        "lora": ("LinearHead", "none", False, "LoRA", None),
        "vpt_shallow": ("LinearHead", "none", False, "VPT", False),
        "vpt_deep": ("LinearHead", "none", False, "VPT", True),
        "full_finetune": ("LinearHead", "all", False, None, None),
    }
    sweep = compose_config("train", ["sweep=adaptation_ladder"])
    assert sweep.model.img_size == 64 and sweep.trainer.max_epochs == 2
    # the command line still wins over a rung and over an adapter's frozen backbone
    assert compose_config("train", ["ladder=lora", "model.train_blocks=2"]).model.train_blocks == 2


@pytest.mark.slow
def test_the_ladder_runs_end_to_end_and_compare_shows_its_cost(image_folder_factory, tmp_path):
    from vitcls.compare import compare

    root = image_folder_factory({"a": 6, "b": 6}, seed=7)
    sweep_dir = tmp_path / "ladder"
    run_cli(
        "train.py", "-m", "sweep=adaptation_ladder", f"data.root={root}", f"hydra.sweep.dir={sweep_dir}",
        "model.pretrained=false", "model.img_size=32", "trainer.max_epochs=1", "data.batch_size=4",
        "data.num_workers=0", "trainer.enable_progress_bar=false",
    )
    summaries = {}
    for job in sweep_dir.iterdir():
        if (job / "summary.json").is_file():
            overrides = (job / ".hydra" / "overrides.yaml").read_text()
            rung = next(r for r in RUNGS if f"ladder={r}\n" in overrides)
            summaries[rung] = json.loads((job / "summary.json").read_text())
    assert sorted(summaries) == sorted(RUNGS)
    trainable = {rung: s["params"]["trainable"] for rung, s in summaries.items()}
    head = linear_head(2)
    assert trainable["linear_probe"] == head
    assert trainable["lora"] == 73_728 + head
    assert trainable["vpt_shallow"] == 1_920 + head and trainable["vpt_deep"] == 23_040 + head
    assert trainable["full_finetune"] == summaries["full_finetune"]["params"]["total"]
    assert trainable["linear_probe"] < trainable["vpt_shallow"] < trainable["vpt_deep"] < trainable["lora"]
    assert trainable["lora"] < trainable["last2_blocks"] < trainable["full_finetune"]
    assert all(s["train"]["images_per_s"] > 0 for s in summaries.values())

    text, _ = compare(sweep_dir)
    header = next(line for line in text.splitlines() if line.startswith("| rank"))
    for column in ("design", "val/f1_macro", "params_trainable", "images_per_s", "peak_mem_mb"):
        assert column in header
    assert sum(f"ladder={rung} " in text for rung in RUNGS) == len(RUNGS)
