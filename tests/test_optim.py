import math

import pytest
import torch
from conftest import tiny_module

from vitcls.errors import ConfigError
from vitcls.models.optim import create_optimizer, create_scheduler


def make_module(train_blocks="all"):
    return tiny_module(head={"name": "mlp", "hidden_dims": [16]}, train_blocks=train_blocks)


def group_of(optimizer, parameter):
    return next(g for g in optimizer.param_groups if any(p is parameter for p in g["params"]))


def test_groups_separate_lr_and_no_decay_on_norms_biases_and_tokens():
    module = make_module()
    opt = create_optimizer(module.net.backbone, module.net.head, lr=1e-4, head_lr=1e-3, weight_decay=0.05)
    assert isinstance(opt, torch.optim.AdamW)
    backbone, head = module.net.backbone, module.net.head
    for no_decay in (backbone.cls_token, backbone.pos_embed, backbone.norm.weight, backbone.blocks[0].attn.qkv.bias):
        assert group_of(opt, no_decay)["weight_decay"] == 0.0
    assert group_of(opt, backbone.blocks[0].attn.qkv.weight)["weight_decay"] == 0.05
    assert group_of(opt, backbone.blocks[0].attn.qkv.weight)["lr"] == 1e-4
    assert group_of(opt, head.fc.weight)["lr"] == 1e-3
    assert group_of(opt, head.fc.weight)["weight_decay"] == 0.05
    assert group_of(opt, head.fc.bias)["weight_decay"] == 0.0
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(module.net.backbone.parameters())) + len(list(module.net.head.parameters()))


def test_frozen_backbone_is_not_optimised_and_stays_in_eval_mode():
    module = make_module(train_blocks="none")
    opt = create_optimizer(module.net.backbone, module.net.head, lr=1e-3)
    optimised = {id(p) for g in opt.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in module.net.head.parameters()}
    module.train()
    assert not module.net.backbone.training and module.net.head.training


def test_warmup_then_cosine_per_step_keeps_each_groups_lr():
    module = make_module()
    opt = create_optimizer(module.net.backbone, module.net.head, lr=1e-3, head_lr=1e-2)
    sched = create_scheduler(opt, total_steps=100, warmup_steps=10)
    lrs = []
    for step in range(100):
        sched.step_update(num_updates=step)
        lrs.append([g["lr"] for g in opt.param_groups])
    backbone_lr = [row[0] for row in lrs]
    assert backbone_lr[0] == 0.0
    assert backbone_lr[5] == pytest.approx(5e-4)
    assert backbone_lr[10] == max(backbone_lr) == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(backbone_lr[10:], backbone_lr[11:], strict=False))
    assert backbone_lr[-1] < 1e-5
    head_index = next(i for i, g in enumerate(opt.param_groups) if g["name"].startswith("head"))
    assert lrs[50][head_index] == pytest.approx(10 * lrs[50][0])


def test_linear_decay_and_warmup_fraction():
    module = make_module()
    opt = create_optimizer(module.net.backbone, module.net.head, lr=1.0)
    sched = create_scheduler(opt, total_steps=10, decay="linear", warmup_fraction=0.0)
    values = []
    for step in range(10):
        sched.step_update(num_updates=step)
        values.append(opt.param_groups[0]["lr"])
    assert values[0] == pytest.approx(1.0)
    assert values[5] == pytest.approx(0.5)


def test_bad_settings_are_named():
    module = make_module()
    with pytest.raises(ValueError, match="optim.lr"):
        create_optimizer(module.net.backbone, module.net.head, lr=0)
    with pytest.raises(ValueError, match="sched.decay"):
        create_scheduler(create_optimizer(module.net.backbone, module.net.head), total_steps=5, decay="step")


@pytest.mark.parametrize("with_scheduler", [True, False])
def test_layer_decay_gives_each_block_its_lr_after_a_step(with_scheduler):
    module = make_module()
    decay, lr, head_lr = 0.5, 1e-3, 4e-3
    opt = create_optimizer(module.net.backbone, module.net.head, lr=lr, head_lr=head_lr, layer_decay=decay)
    scheduler = create_scheduler(opt, total_steps=10, warmup_steps=0) if with_scheduler else None
    module(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    if scheduler is not None:
        scheduler.step_update(num_updates=1)
    factor = 0.5 * (1 + math.cos(math.pi * 1 / 10)) if scheduler else 1.0  # cosine over 10 steps, at step 1
    backbone = module.net.backbone
    depth = len(backbone.blocks)  # vit_tiny: 12 blocks; the last one is one step below the head
    for index, block in enumerate(backbone.blocks):
        expected = lr * decay ** (depth - index) * factor
        assert group_of(opt, block.attn.qkv.weight)["lr"] == pytest.approx(expected, rel=1e-9), index
        assert group_of(opt, block.norm1.weight)["lr"] == pytest.approx(expected, rel=1e-9), index
    assert group_of(opt, backbone.patch_embed.proj.weight)["lr"] == pytest.approx(lr * decay ** (depth + 1) * factor)
    assert group_of(opt, module.net.head.fc.weight)["lr"] == pytest.approx(head_lr * factor)
    assert group_of(opt, backbone.blocks[0].norm1.weight)["weight_decay"] == 0.0
    assert all("lr_scale" not in group for group in opt.param_groups)  # no second scaling by timm schedulers
    assert len({group["name"] for group in opt.param_groups}) == len(opt.param_groups)  # LearningRateMonitor needs this


def test_layer_decay_must_be_a_fraction():
    module = make_module()
    with pytest.raises(ConfigError, match="optim.layer_decay"):
        create_optimizer(module.net.backbone, module.net.head, layer_decay=1.5)
