"""Fine-tuning switches: EMA of weights, augmentation (RandAugment, random erasing), Mixup/CutMix."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST_OVERRIDES, compose_config, tiny_module, train_in_process
from lightning.pytorch.callbacks import Callback

from vitcls.cli.train import run_training as run

DECAY = 0.6


@pytest.fixture
def data_config():
    from vitcls.models.backbone import create_backbone
    from vitcls.preprocessing import resolve_data_config

    return resolve_data_config(create_backbone("vit_tiny_patch16_224", img_size=32))


class RecordHeadWeights(Callback):
    """Test helper, instantiated from the config: the head weights after every optimizer step."""

    history: list[torch.Tensor] = []
    tested: torch.Tensor | None = None
    validated: torch.Tensor | None = None  # by trainer.validate after fitting (summary.json's val)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        RecordHeadWeights.history.append(pl_module.net.head.fc.weight.detach().clone())

    def on_test_start(self, trainer, pl_module):
        RecordHeadWeights.tested = pl_module.net.head.fc.weight.detach().clone()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.state.fn == "validate":  # after the EMA callback's epoch-start hook
            RecordHeadWeights.validated = pl_module.net.head.fc.weight.detach().clone()


def test_ema_weights_are_the_checkpoint_weights_and_differ_from_the_raw_ones(image_folder_factory, tmp_path):
    root = image_folder_factory({"a": 8, "b": 8})
    RecordHeadWeights.history = []
    cfg = compose_config(
        "train",
        [
            f"paths.output_dir={tmp_path}",
            *FAST_OVERRIDES,
            f"data.root={root}",
            "data.batch_size=4",
            "trainer.max_epochs=1",
            "optim.lr=1e-2",
            "callbacks=ema",
            f"callbacks.ema.decay={DECAY}",
            f"+callbacks.record._target_={__name__}.RecordHeadWeights",
        ],
    )
    summary = run(cfg)
    checkpoint = torch.load(summary["best_ckpt"], weights_only=True)
    steps = RecordHeadWeights.history
    assert len(steps) == summary["global_steps"] >= 3
    expected = steps[0]  # the first update copies the weights, then ema = decay * ema + (1 - decay) * w
    for weights in steps[1:]:
        expected = DECAY * expected + (1 - DECAY) * weights
    saved = checkpoint["state_dict"]["net.heads.0.fc.weight"]
    assert torch.allclose(saved, expected, atol=1e-6)
    assert torch.equal(checkpoint["current_model_state"]["net.heads.0.fc.weight"], steps[-1])
    assert not torch.allclose(saved, steps[-1], atol=1e-4)
    assert torch.equal(RecordHeadWeights.tested, saved)  # summary.json's test metrics are the EMA model's
    assert torch.equal(RecordHeadWeights.validated, saved)  # and its val metrics too
    assert summary["val"]["f1_macro"] == pytest.approx(summary["best_val_score"])

    # eval.py and exports load `state_dict`: the EMA weights
    from vitcls.models.classifier import ImageClassifier
    from vitcls.models.lightning_module import ClassifierModule

    module, _ = ClassifierModule.from_checkpoint(summary["best_ckpt"])
    assert torch.equal(module.net.head.fc.weight, saved)
    net, _ = ImageClassifier.from_checkpoint(summary["best_ckpt"])
    assert torch.equal(net.head.fc.weight, saved)


def attached_datamodule(root, data_config, **kwargs):
    import lightning as L

    from vitcls.data.datamodule import ImageFolderDataModule

    datamodule = ImageFolderDataModule(root, num_workers=0, **{"batch_size": 4, **kwargs})
    datamodule.set_data_config(data_config)
    datamodule.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    datamodule.setup("fit")
    return datamodule


def test_mixup_mixes_training_batches_only(image_folder_factory, data_config):
    root = image_folder_factory({"a": 8, "b": 8, "c": 8}, splits=("train", "test"))
    datamodule = attached_datamodule(
        root,
        data_config,
        batch_size=6,
        mixup={"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "label_smoothing": 0.0},
    )
    images, labels = next(iter(datamodule.train_dataloader()))
    datamodule.trainer.training = True
    mixed, soft = datamodule.on_after_batch_transfer((images.clone(), labels.clone()), 0)
    assert soft.shape == (6, 3) and torch.allclose(soft.sum(1), torch.ones(6))
    assert not torch.equal(mixed, images)
    # each row mixes the image's own label with its mirror's: weights lam and 1 - lam
    own = soft.gather(1, labels[:, None]).squeeze(1)
    assert bool(((own > 0) | (labels == labels.flip(0))).all())
    datamodule.trainer.validating = True
    assert datamodule.on_after_batch_transfer((images, labels), 0)[1] is labels


def test_mixup_refuses_odd_batches(image_folder_factory, data_config):
    from vitcls.errors import ConfigError

    root = image_folder_factory({"a": 8, "b": 8}, splits=("train", "test"))
    with pytest.raises(ConfigError, match="even data.batch_size"):
        attached_datamodule(root, data_config, batch_size=5, mixup={"mixup_alpha": 0.8})


def test_randaugment_and_random_erasing_come_from_train_augment(image_folder_factory, data_config):
    root = image_folder_factory({"a": 4, "b": 4}, splits=("train", "test"))
    datamodule = attached_datamodule(
        root, data_config, train_augment={"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 1.0}
    )
    description = str(datamodule.datasets["train"].transform)
    assert "RandAugment" in description and "RandomErasing" in description
    assert "RandAugment" not in str(datamodule.datasets["test"].transform)
    torch.manual_seed(0)
    first, second = datamodule.datasets["train"][0][0], datamodule.datasets["train"][0][0]
    assert first.shape == (3, 32, 32) and not torch.equal(first, second)


def test_training_with_mixup_and_augmentation_logs_loss_but_no_train_accuracy(image_folder_factory, tmp_path):
    import csv

    root = image_folder_factory({"a": 8, "b": 8})
    summary = train_in_process(
        tmp_path, f"data.root={root}", "data.batch_size=4", "trainer.max_epochs=1",
        "data.mixup={mixup_alpha:0.8,cutmix_alpha:1.0}",
        "data.train_augment={auto_augment:rand-m9-mstd0.5-inc1,re_prob:0.25,hflip:0.5}",
    )
    with open(tmp_path / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert any(r.get("train/loss_epoch") for r in rows)
    assert "train/acc" not in rows[0]
    # Test images keep hard labels (mixing is for training batches only): accuracy counts whole images.
    assert summary["num_samples"]["test"] == 16
    correct = summary["test"]["acc"] * 16
    assert correct == pytest.approx(round(correct), abs=1e-4)


@pytest.mark.slow
def test_compiled_backbone_trains_and_its_checkpoint_loads_uncompiled(image_folder_factory, tmp_path):
    from vitcls.models.lightning_module import ClassifierModule

    root = image_folder_factory({"a": 4, "b": 4})
    torch._dynamo.reset()
    summary = train_in_process(
        tmp_path, f"data.root={root}", "data.batch_size=4", "trainer.max_epochs=1",
        "model.compile=true",
        "trainer.num_sanity_val_steps=0",
    )
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the features really ran compiled
    checkpoint = torch.load(summary["best_ckpt"], weights_only=True)
    assert not any("_orig_mod" in key for key in checkpoint["state_dict"])
    assert checkpoint["hyper_parameters"]["compile"] is True
    module, _ = ClassifierModule.from_checkpoint(summary["best_ckpt"])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert module(images).shape == (2, 2)


def test_compiled_model_evaluates_eagerly_without_recompiling():
    """model.compile compiles the training graph only: evaluation in eval mode, any batch size, runs the
    eager tap on the same weights (no compilation, identical logits)."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    module = tiny_module("linear", compile=True)
    eager = tiny_module("linear")
    eager.load_state_dict(module.state_dict())
    torch._dynamo.reset()
    counters.clear()
    module.train()
    module(torch.randn(4, 3, 32, 32)).sum().backward()
    assert counters["stats"]["unique_graphs"] >= 1  # training ran the compiled graph
    compiled_graphs = counters["stats"]["unique_graphs"]
    module.eval()
    eager.eval()
    with torch.inference_mode():
        for batch in (4, 3):  # a full and a ragged batch
            images = torch.randn(batch, 3, 32, 32)
            torch.testing.assert_close(module(images), eager(images), rtol=0, atol=0)
    assert counters["stats"]["unique_graphs"] == compiled_graphs  # nothing compiled for evaluation


class RecordBlockModes(Callback):
    """Which backbone blocks are in training mode at each training batch (class-level: Hydra builds it)."""

    seen: list[list[bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        RecordBlockModes.seen.append([block.training for block in pl_module.net.backbone.blocks])


def test_frozen_blocks_stay_in_eval_mode_through_fit(image_folder_factory, tmp_path):
    """No dropout or drop-path noise in frozen blocks, from the first batch and after each validation."""
    root = image_folder_factory({"a": 4, "b": 4})
    RecordBlockModes.seen = []
    train_in_process(
        tmp_path, f"data.root={root}", "trainer.max_epochs=2", "model.train_blocks=2", "model.drop_path_rate=0.1",
        "+callbacks.modes._target_=test_finetuning.RecordBlockModes",
    )
    assert len(RecordBlockModes.seen) == 2  # one batch per epoch, the second after a validation
    assert all(modes == [False] * 10 + [True] * 2 for modes in RecordBlockModes.seen)


class PutHeadInEvalMode(Callback):
    """A module left in eval mode by mistake (the head): Lightning's warning about it must still show."""

    def setup(self, trainer, pl_module, stage):
        pl_module.net.head.eval()


EVAL_MODE_WARNING = "module(s) in eval mode at the start of training"


def test_the_eval_mode_warning_is_silenced_for_frozen_blocks_only(image_folder_factory, tmp_path, recwarn):
    root = image_folder_factory({"a": 4, "b": 4})
    train_in_process(tmp_path / "frozen", f"data.root={root}", "trainer.max_epochs=1", "model.train_blocks=2")
    assert not [w for w in recwarn if EVAL_MODE_WARNING in str(w.message)]

    train_in_process(tmp_path / "head_in_eval", f"data.root={root}", "trainer.max_epochs=1", "model.train_blocks=2",
                     "+callbacks.eval_head._target_=test_finetuning.PutHeadInEvalMode")
    assert len([w for w in recwarn if EVAL_MODE_WARNING in str(w.message)]) == 1
