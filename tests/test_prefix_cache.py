"""The prefix cache: with model.train_blocks=N, the tokens entering the first trainable block are cached, and
training on them gives the uncached run's results (float32 storage: float tolerance; bfloat16 storage: within
the rounding it introduces, stated and checked here)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAST_OVERRIDES, compose_config, tiny_module, tiny_net
from safetensors.torch import load_file

from vitcls.cli.train import run_training as run
from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.errors import ConfigError
from vitcls.models.lightning_module import ClassifierModule
from vitcls.models.trainable import first_trainable_block
from vitcls.run import inputs

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
# bfloat16 keeps 8 significant bits: rounding to nearest moves a value by at most 2^-8 of its magnitude.
BF16_RELATIVE_ROUNDING = 2.0**-8


@pytest.mark.parametrize(
    "head, tap",
    [
        ("linear", {"features": "cls"}),
        ("linear", {"features": "mean"}),
        ("mlp", {"features": "cls+mean"}),
        ("attention_pool", {"features": "tokens"}),
        ("linear", {"features": "last_k", "last_k": 3}),
    ],
)
@pytest.mark.parametrize("block", [0, 9, 11])
def test_features_from_cached_tokens_equal_the_full_forward(head, tap, block):
    torch.manual_seed(0)
    net = tiny_net(head, tap).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = net.tokens_before(images, block)
        assert tokens.shape == (3, 5, 192)  # CLS + 4 patches at 32 px
        if tap.get("last_k", 0) > 12 - block + 1:  # needs blocks before the cached tokens
            with pytest.raises(ConfigError, match="tap.last_k"):
                net.features_from_tokens(tokens, block)
            return
        torch.testing.assert_close(net.features_from_tokens(tokens, block), net.features(images), rtol=0, atol=0)


def test_last_k_reaching_before_the_cached_tokens_is_refused():
    net = tiny_net("linear", {"features": "last_k", "last_k": 4})
    net.tap.check_split(net.backbone, 9)  # block 8's output is the cached tokens themselves
    with pytest.raises(ConfigError, match=r"tap\.last_k <= 3"):
        net.tap.check_split(net.backbone, 10)


@pytest.mark.parametrize("train_blocks, expected", [("none", None), (2, 10), (12, 0)])
def test_first_trainable_block(train_blocks, expected):
    assert first_trainable_block(tiny_module(train_blocks=train_blocks).net.backbone) == expected


def test_full_fine_tuning_cannot_be_cached():
    with pytest.raises(ConfigError, match="model.train_blocks=all trains the patch embedding"):
        first_trainable_block(tiny_module(train_blocks="all").net.backbone)


def token_keys(root, module, block=10, token_dtype="bfloat16"):
    images = ImageFolderDataModule(root, num_workers=0, batch_size=4)
    images.set_data_config(module.data_config)
    images.setup()
    return inputs.token_keys(images, module, "32-true", block, token_dtype)


def test_token_keys_follow_the_block_and_dtype_but_not_the_feature_tap(image_folder_factory):
    root = image_folder_factory({"a": 4, "b": 4})
    torch.manual_seed(0)
    cls_tap = tiny_module(train_blocks=2, tap={"features": "cls"})
    torch.manual_seed(0)
    mean_tap = tiny_module(train_blocks=2, tap={"features": "mean"})
    assert token_keys(root, cls_tap) == token_keys(root, mean_tap)
    base = token_keys(root, cls_tap)
    for changed in (token_keys(root, cls_tap, block=9), token_keys(root, cls_tap, token_dtype="float32")):
        assert all(changed[split] != base[split] for split in base)


def train(tmp_path, name, root, *overrides):
    cfg = compose_config(
        "train",
        [
            f"paths.output_dir={tmp_path / name}",
            *FAST_OVERRIDES,
            f"data.root={root}",
            "data.batch_size=8",
            "data.num_workers=1",
            "trainer.max_epochs=2",
            "model.train_blocks=2",
            "head=mlp",
            "head.dropout=0.2",
            "model.drop_path_rate=0.1",  # random numbers drawn in the trainable blocks: the streams must match
            f"feature_cache.dir={tmp_path / 'cache'}",
            *overrides,
        ],
    )
    return run(cfg)


@pytest.fixture
def colours(image_folder_factory):
    return image_folder_factory({name: 12 for name in COLOURS}, colours=COLOURS)


def test_float32_tokens_reproduce_the_uncached_run(colours, tmp_path):
    uncached = train(tmp_path, "uncached", colours)
    cached = train(tmp_path, "cached", colours, "feature_cache.enabled=true", "feature_cache.token_dtype=float32")
    entries = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert len(entries) == 3
    stamps = [p.stat().st_mtime_ns for p in entries]
    again = train(tmp_path, "again", colours, "feature_cache.enabled=true", "feature_cache.token_dtype=float32")
    assert [p.stat().st_mtime_ns for p in entries] == stamps  # loaded, not recomputed

    for summary in (cached, again):
        for name, value in uncached["test"].items():
            assert summary["test"][name] == pytest.approx(value, abs=1e-5), name
        assert summary["best_epoch"] == uncached["best_epoch"]
        assert summary["params"] == uncached["params"]
    states = [torch.load(s["best_ckpt"], weights_only=True)["state_dict"] for s in (uncached, cached)]
    assert states[0].keys() == states[1].keys()  # the whole backbone: eval.py scores images as usual
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value, msg=key)


def test_bfloat16_tokens_stay_within_their_rounding_of_the_uncached_run(colours, tmp_path):
    uncached = train(tmp_path, "uncached", colours)
    cached = train(tmp_path, "cached", colours, "feature_cache.enabled=true")
    stored = {
        json.loads(p.with_suffix(".json").read_text())["description"]["split"]: load_file(p)["features"]
        for p in (tmp_path / "cache").glob("*.safetensors")
    }
    assert set(stored) == {"train", "val", "test"}
    assert all(t.dtype == torch.bfloat16 and t.shape[1:] == (5, 192) for t in stored.values())

    # The stored tokens are the float32 tokens rounded to bfloat16: at most 2^-8 of each value away. (The
    # frozen part never changes, so the trained checkpoint recomputes them.)
    module, _ = ClassifierModule.from_checkpoint(cached["best_ckpt"])
    images = ImageFolderDataModule(colours, num_workers=0, batch_size=8)
    images.set_data_config(module.data_config)
    images.setup()
    test_images = torch.stack([image for image, _ in images.datasets["test"]])
    reference = module.net.tokens_before(test_images, 10)
    error = (stored["test"].float() - reference).abs()
    assert (error <= BF16_RELATIVE_ROUNDING * reference.abs() * 1.001 + 1e-6).all()
    assert error.max() > 0  # really rounded
    # That moves the trained model's logits by under 2% of their scale...
    with torch.no_grad():
        exact = module.net(test_images)
        [features] = module.net.features_from_tokens(stored["test"], 10)
        rounded = module.net.head(features)
    assert (rounded - exact).abs().max() <= 0.02 * exact.abs().max()
    # ...and the run's test metrics by at most the tolerance the README states (0.02).
    for name, value in uncached["test"].items():
        assert cached["test"][name] == pytest.approx(value, abs=0.02), name


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.train_blocks=all"], "model.train_blocks=all trains the patch embedding"),
        (["feature_cache.token_dtype=int8"], r"feature_cache\.token_dtype='int8' is not allowed"),
    ],
)
def test_prefix_cache_refuses_what_it_cannot_cache(image_folder_factory, tmp_path, overrides, message):
    # (Training augmentation is cached as augmented views of the tokens: tests/test_cached_views.py.)
    root = image_folder_factory({"a": 4, "b": 4})
    with pytest.raises(ConfigError, match=message):
        train(tmp_path, "run", root, "feature_cache.enabled=true", *overrides)
