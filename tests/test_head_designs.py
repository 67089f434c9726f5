"""Head designs: feature taps x heads x trainable backbone parts."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from conftest import FAST_OVERRIDES, run_cli

from vitcls.errors import ConfigError
from vitcls.models.classifier import ImageClassifier
from vitcls.models.lightning_module import ClassifierModule

# Real timm ids, cut to a few blocks (timm's `depth`) to keep CPU tests short.
TINY = "vit_tiny_patch16_224"  # width 192; at 32 px: CLS + 4 patches
REGISTERS = "vit_small_patch14_reg4_dinov2"  # width 384; at 28 px: CLS + 4 registers + 4 patches
VECTOR_TAPS = ("cls", "mean", "cls+mean", "last_k")
VECTOR_HEADS = ("linear", "mlp", "cosine", "norm_linear")


def make_classifier(
    head="linear", features="cls", last_k=2, name=TINY, img_size=32, classes=3, depth=3,
    train_blocks="all", bitfit=False, **backbone
):
    return ClassifierModule(
        net={
            "backbone": {"name": name, "img_size": img_size, "depth": depth, **backbone},
            "head": {"name": head},
            "class_names": [f"c{i}" for i in range(classes)],
            "tap": {"features": features, "last_k": last_k},
        },
        train_blocks=train_blocks,
        bitfit=bitfit,
        scheduler=None,
    )


@pytest.mark.parametrize("name, img_size, width, tokens", [(TINY, 32, 192, 5), (REGISTERS, 28, 384, 9)])
@pytest.mark.parametrize(
    "head, features",
    [(h, f) for h in VECTOR_HEADS for f in VECTOR_TAPS] + [("attention_pool", "tokens")],
)
def test_every_tap_and_head_gives_logits(name, img_size, width, tokens, head, features):
    torch.manual_seed(0)
    module = make_classifier(head, features, name=name, img_size=img_size).eval()
    images = torch.randn(2, 3, img_size, img_size)
    expected = {"cls+mean": (2, 2 * width), "last_k": (2, 2 * width), "tokens": (2, tokens, width)}
    [tapped] = module.net.features(images)  # one head: one tap
    assert tapped.shape == expected.get(features, (2, width))
    assert module(images).shape == (2, 3)
    assert torch.equal(module(images), module.net.head(tapped))


def test_taps_match_an_independent_computation_and_skip_register_tokens():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 28, 28)
    taps = {
        f: make_classifier("linear", f, name=REGISTERS, img_size=28).eval() for f in ("cls", "mean", "last_k")
    }
    reference = timm.create_model(REGISTERS, img_size=28, num_classes=0, depth=3).eval()
    for module in taps.values():
        module.net.backbone.load_state_dict(reference.state_dict())
    assert reference.num_prefix_tokens == 5
    outputs = {}
    hooks = [
        block.register_forward_hook(lambda m, i, o, k=k: outputs.__setitem__(k, o))
        for k, block in enumerate(reference.blocks)
    ]
    with torch.no_grad():
        tokens = reference.forward_features(images)
        [cls], [mean], [last_k] = (taps[f].net.features(images) for f in ("cls", "mean", "last_k"))
        torch.testing.assert_close(cls, reference(images))  # timm's own CLS pooling
        torch.testing.assert_close(mean, tokens[:, 5:].mean(dim=1))
        expected = torch.cat([reference.norm(outputs[k])[:, 0] for k in (1, 2)], dim=-1)
        torch.testing.assert_close(last_k, expected)
    for hook in hooks:
        hook.remove()


@pytest.mark.parametrize(
    "head, features, message",
    [
        ("linear", "tokens", "needs a pooled vector"),
        ("attention_pool", "cls", "tap.features=tokens"),
        ("linear", "max", "tap.features='max' is not supported"),
    ],
)
def test_incompatible_tap_and_head_is_a_config_error(head, features, message):
    with pytest.raises(ConfigError, match=message):
        make_classifier(head, features)


def test_cls_taps_need_a_cls_token():
    with pytest.raises(ConfigError, match="needs a CLS token"):
        make_classifier("linear", "cls", name="vit_pwee_patch16_reg1_gap_256", depth=1)


@pytest.mark.parametrize(
    "setting, message",
    [
        (
            {"train_blocks": 4},
            "model.train_blocks must be none, all or an integer from 1 to the backbone depth 3",
        ),
        ({"train_blocks": "some"}, "model.train_blocks"),
        ({"train_blocks": "none", "bitfit": True}, "model.bitfit=true"),
        ({"freeze": True}, "model.train_blocks=none"),
    ],
)
def test_bad_trainability_settings_name_the_setting(setting, message):
    with pytest.raises(ConfigError, match=message):
        make_classifier(**setting)


# Hand counts for vit_tiny (width 192, MLP 768) cut to 4 blocks and a linear head on the CLS token, 3 classes.
D, HIDDEN = 192, 768
BLOCK = 2 * D + (D * 3 * D + 3 * D) + (D * D + D) + 2 * D + (D * HIDDEN + HIDDEN) + (HIDDEN * D + D)
BLOCK_BIASES_AND_NORMS = 2 * D + 3 * D + D + 2 * D + HIDDEN + D
FINAL_NORM, PATCH_BIAS = 2 * D, D
LINEAR_HEAD = D * 3 + 3


@pytest.mark.parametrize(
    "setting, trainable",
    [
        ({"train_blocks": "none"}, LINEAR_HEAD),
        ({"train_blocks": 2}, 2 * BLOCK + FINAL_NORM + LINEAR_HEAD),
        (
            {"train_blocks": "all", "bitfit": True},
            4 * BLOCK_BIASES_AND_NORMS + PATCH_BIAS + FINAL_NORM + LINEAR_HEAD,
        ),
        ({"train_blocks": 2, "bitfit": True}, 2 * BLOCK_BIASES_AND_NORMS + FINAL_NORM + LINEAR_HEAD),
    ],
)
def test_trainable_parameter_counts_match_a_hand_count(setting, trainable):
    module = make_classifier(depth=4, **setting)
    total = sum(p.numel() for p in timm.create_model(TINY, img_size=32, num_classes=0, depth=4).parameters())
    total += LINEAR_HEAD
    assert module.parameter_counts == {"total": total, "trainable": trainable}
    optimizer = module.configure_optimizers()["optimizer"]
    assert sum(p.numel() for group in optimizer.param_groups for p in group["params"]) == trainable


@pytest.mark.parametrize(
    "setting, frozen_blocks",
    [
        ({"train_blocks": "none"}, range(4)),
        ({"train_blocks": 2}, range(2)),
        ({"train_blocks": "all", "bitfit": True}, ()),
    ],
)
def test_frozen_parts_get_no_gradients_and_do_not_change_after_a_step(setting, frozen_blocks):
    torch.manual_seed(0)
    module = make_classifier(
        head="linear", features="cls+mean", depth=4, drop_path_rate=0.1, **setting
    ).train()
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    outputs = {}
    for index, block in enumerate(module.net.backbone.blocks):
        block.register_forward_hook(lambda m, i, o, k=index: outputs.__setitem__(k, o))
    optimizer = module.configure_optimizers()["optimizer"]
    loss = module.criterion(module(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()

    for index in frozen_blocks:  # no autograd graph, hence no activations kept for them
        assert outputs[index].grad_fn is None and not module.net.backbone.blocks[index].training
    for index in set(range(4)) - set(frozen_blocks):
        assert outputs[index].grad_fn is not None and module.net.backbone.blocks[index].training
    assert not module.net.backbone.patch_embed.training or not frozen_blocks
    for name, parameter in module.named_parameters():
        changed = not torch.equal(parameter, before[name])
        if parameter.requires_grad:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None and not changed, name
    assert not torch.equal(module.net.head.fc.weight, before["net.heads.0.fc.weight"])
    if setting.get("bitfit"):
        assert not module.net.backbone.blocks[0].attn.qkv.weight.requires_grad
        assert not torch.equal(
            module.net.backbone.blocks[0].attn.qkv.bias, before["net.backbone.blocks.0.attn.qkv.bias"]
        )


@pytest.mark.parametrize(
    "head, features",
    [(h, "cls+mean") for h in VECTOR_HEADS] + [("linear", "last_k"), ("attention_pool", "tokens")],
)
def test_each_head_learns_a_separable_problem_on_cached_features(head, features):
    """Bright vs dark images through a frozen random ViT: the features are cached once, the head trains."""
    torch.manual_seed(0)
    module = make_classifier(head, features, classes=2, train_blocks="none")
    images = torch.cat([torch.rand(16, 3, 32, 32) * 0.5, torch.rand(16, 3, 32, 32) * 0.5 + 0.5])
    targets = torch.tensor([0] * 16 + [1] * 16)
    module.eval()
    with torch.no_grad():
        [cached] = module.net.features(images)
    module.net.head.train()
    optimizer = torch.optim.Adam(module.net.head.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss = module.criterion(module.net.head(cached), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    module.net.head.eval()
    assert (module.net.head(cached).argmax(dim=-1) == targets).float().mean() >= 0.9


def test_a_checkpoint_rebuilds_tap_head_and_trainability_from_its_hyperparameters(tmp_path):
    torch.manual_seed(0)
    module = make_classifier("cosine", "last_k", train_blocks=2, bitfit=True).eval()
    path = tmp_path / "model.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    loaded, _ = ClassifierModule.from_checkpoint(path)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(images), module(images))
    assert loaded.parameter_counts == module.parameter_counts
    for key in ("heads", "adapter", "class_names"):
        assert loaded.net.config[key] == module.net.config[key], key
    # the pretrained weights are in the checkpoint: nothing is downloaded again
    assert loaded.net.config["backbone"] == {**module.net.config["backbone"], "pretrained": False, "weights": None}
    # the network alone, without Lightning, from the same checkpoint
    net, _ = ImageClassifier.from_checkpoint(path)
    torch.testing.assert_close(net(images), module(images))
    assert net.tap.features == "last_k" and net.tap.last_k == 2 and type(net.head).name == "cosine"


@pytest.mark.slow
def test_head_design_sweep_over_two_heads_and_two_taps_completes(image_folder_factory, tmp_path):
    root = image_folder_factory({"a": 4, "b": 4})
    sweep_dir = tmp_path / "sweep"
    run_cli(
        "train.py",
        "-m",
        "sweep=heads",
        "seed=1",
        f"feature_cache.dir={tmp_path / 'cache'}",
        f"data.root={root}",
        "head=linear,cosine",
        "tap.features=cls,mean",
        "model.train_blocks=none",
        "debug=limit",
        "data.batch_size=4",
        *FAST_OVERRIDES,
        f"hydra.sweep.dir={sweep_dir}",
    )
    jobs = sorted(p for p in sweep_dir.iterdir() if (p / "summary.json").is_file())
    assert len(jobs) == 4
    seen = set()
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        hparams = torch.load(summary["best_ckpt"], weights_only=True)["hyper_parameters"]
        (entry,) = hparams["net"]["heads"]
        head, features = entry["head"]["name"], entry["tap"]["features"]
        seen.add((head, features))
        head_parameters = {"linear": D * 2 + 2, "cosine": D * 2 + 1}[head]
        assert summary["params"]["trainable"] == head_parameters
        assert hparams["train_blocks"] == "none"
    assert seen == {(h, f) for h in ("linear", "cosine") for f in ("cls", "mean")}
