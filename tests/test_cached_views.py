"""Augmented views in the feature cache (feature_cache.views=V): computed once, one view per epoch, keyed by the
augmentation and V; and two runs filling one cache entry at once (one backbone pass)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST_OVERRIDES, REPO_ROOT, build_module_of, compose_config, make_image_folder

from vitcls.config.validation import check_train_config
from vitcls.data.feature_cache import ViewsDataset, view_seed
from vitcls.errors import ConfigError
from vitcls.run import inputs
from vitcls.run.lifecycle import build_datamodule, build_trainer
from vitcls.run.studies import study_of

AUGMENT = "data.train_augment={hflip:0.5,scale:[0.5,1.0]}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("views") / "images"
    for index, split in enumerate(("train", "test")):
        make_image_folder(root, {"a": 8, "b": 8, "c": 8}, split, seed=index)
    return root


def prepared(folder: Path, tmp_path: Path, *overrides: str):
    cfg = compose_config("train", [f"data.root={folder}", f"paths.output_dir={tmp_path / 'run'}", *FAST_OVERRIDES,
                                   "model.train_blocks=none", "feature_cache.enabled=true",
                                   f"feature_cache.dir={tmp_path / 'cache'}", *overrides])
    datamodule = build_datamodule(cfg)
    torch.manual_seed(0)  # the same backbone weights in every call
    module = build_module_of(cfg, datamodule.class_names)
    datamodule.set_data_config(module.data_config)
    return cfg, datamodule, module, build_trainer(cfg, study_of(cfg))


def test_one_view_without_augmentation_is_the_plain_cache_and_views_get_keys_of_their_own(folder, tmp_path):
    _, datamodule, module, _ = prepared(folder, tmp_path)
    (plain,) = inputs.feature_keys(datamodule, module, "32-true")
    _, augmented_dm, augmented_module, _ = prepared(folder, tmp_path, AUGMENT)
    (four,) = inputs.feature_keys(augmented_dm, augmented_module, "32-true", views=4)
    (eight,) = inputs.feature_keys(augmented_dm, augmented_module, "32-true", views=8)
    assert four["val"] == eight["val"] == plain["val"] and four["test"] == plain["test"]  # eval transform
    assert len({plain["train"], four["train"], eight["train"]}) == 3
    _, other_dm, other_module, _ = prepared(folder, tmp_path, "data.train_augment={hflip:0.5}")
    assert inputs.feature_keys(other_dm, other_module, "32-true", views=4)[0]["train"] != four["train"]


def test_each_epoch_serves_one_cached_view_of_every_image_starting_at_its_own_offset(folder, tmp_path):
    cfg, datamodule, module, trainer = prepared(folder, tmp_path, AUGMENT, "feature_cache.views=4")
    served = inputs.training_inputs(cfg, datamodule, module, trainer)
    train = served.datasets["train"]
    assert isinstance(train, ViewsDataset) and train.tensors[0].shape[:2] == (4, len(datamodule.splits["train"]))
    # view v of image i is the backbone's features of the image under the transform seeded by (v, i) alone
    pool = [s.path for s in datamodule.train_pool]
    for index in (0, 5):
        position = pool.index(datamodule.splits["train"][index].path)
        for view in (0, 3):
            image, label = datamodule.datasets["train"][(index, view_seed(0, view, position))]
            with torch.no_grad():
                (features,) = module.eval().net.features(image[None])
            torch.testing.assert_close(features[0], train.tensors[0][view, index])
            assert label == int(train.labels[index])
    # epoch e serves view (e + offset) mod V; over V epochs every view once
    seen = {int(train.offsets[2] + epoch) % 4 for epoch in range(4)}
    assert seen == {0, 1, 2, 3}
    first, second = train[(2, 0)][0], train[(2, 1)][0]
    assert not torch.equal(first, second)
    sampler = served.train_dataloader().sampler
    assert sampler.with_epoch and all(isinstance(item, tuple) and item[1] == sampler.epoch for item in sampler)


def test_views_need_augmentation_and_a_positive_count(folder, tmp_path):
    cfg = compose_config("train", [f"data.root={folder}", "feature_cache.enabled=true", "feature_cache.views=4"])
    with pytest.raises(ConfigError, match="data.train_augment is null"):
        check_train_config(cfg)
    cfg = compose_config("train", [f"data.root={folder}", "feature_cache.enabled=true", "feature_cache.views=0",
                                   AUGMENT])
    with pytest.raises(ConfigError, match="feature_cache.views"):
        check_train_config(cfg)


def train(folder: Path, run_dir: Path, cache: Path, *overrides: str) -> subprocess.Popen:
    command = [sys.executable, str(REPO_ROOT / "train.py"), f"data.root={folder}", f"hydra.run.dir={run_dir}",
               *FAST_OVERRIDES, "model.train_blocks=none", "trainer.max_epochs=2", "feature_cache.enabled=true",
               f"feature_cache.dir={cache}", *overrides]
    return subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ})


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], [AUGMENT, "feature_cache.views=3"], ["model.train_blocks=1"]],
                         ids=["features", "views", "tokens"])
def test_two_runs_started_together_on_one_cache_pass_the_backbone_once_and_end_equal(folder, tmp_path, extra):
    cache = tmp_path / "cache"
    processes = [train(folder, tmp_path / f"run{i}", cache, *extra) for i in range(2)]
    logs = [process.communicate(timeout=900)[0] for process in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(log[-2000:] for log in logs)
    computing = [log.count("feature cache: computing") for log in logs]
    assert sorted(computing) == [0, 1], computing  # one filled the cache, the other waited and loaded it
    summaries = [json.loads((tmp_path / f"run{i}" / "summary.json").read_text()) for i in range(2)]
    assert summaries[0]["test"] == summaries[1]["test"] and summaries[0]["val"] == summaries[1]["val"]


@pytest.mark.slow
def test_views_work_for_a_bank_and_for_cached_tokens(folder, tmp_path):
    from vitcls.cli.train import run_training

    common = [f"data.root={folder}", *FAST_OVERRIDES, "trainer.max_epochs=2", "feature_cache.enabled=true",
              f"feature_cache.dir={tmp_path / 'cache'}", AUGMENT, "feature_cache.views=2"]
    bank = run_training(compose_config("train", [f"paths.output_dir={tmp_path / 'bank'}", *common, "bank=default",
                                                 "bank.heads=[linear,mlp]", "bank.features=[cls,mean]"]))
    assert bank["bank"]["num_heads"] == 4
    assert json.loads((tmp_path / "bank" / "bank.json").read_text())["inputs"] == "features"
    tokens = run_training(compose_config("train", [f"paths.output_dir={tmp_path / 'tokens'}", *common,
                                                   "model.train_blocks=1"]))
    assert tokens["test"]["acc"] >= 0.0
    entries = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*.json")]
    views = [e for e in entries if (e.get("description") or {}).get("views") == 2]
    assert len(views) == 3  # the train entry of each tap (cls, mean) and of the tokens
