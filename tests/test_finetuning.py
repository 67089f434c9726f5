"""Fine-tuning switches: EMA of weights, augmentation (RandAugment, random erasing), Mixup/CutMix."""

from __future__ import annotations

import torch
from conftest import FAST_OVERRIDES, compose_config
from lightning.pytorch.callbacks import Callback

from vitcls.train import run

DECAY = 0.6


class RecordHeadWeights(Callback):
    """Test helper, instantiated from the config: the head weights after every optimizer step."""

    history: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        RecordHeadWeights.history.append(pl_module.head.fc.weight.detach().clone())


def test_ema_weights_are_the_checkpoint_weights_and_differ_from_the_raw_ones(image_folder_factory, tmp_path):
    root = image_folder_factory({"a": 8, "b": 8})
    RecordHeadWeights.history = []
    cfg = compose_config("train", [
        f"paths.output_dir={tmp_path}", *FAST_OVERRIDES, f"data.root={root}", "data.batch_size=4",
        "trainer.max_epochs=1", "optim.lr=1e-2", "callbacks=ema", f"callbacks.ema.decay={DECAY}",
        f"+callbacks.record._target_={__name__}.RecordHeadWeights",
    ])
    summary = run(cfg)
    checkpoint = torch.load(summary["best_ckpt"], weights_only=True)
    steps = RecordHeadWeights.history
    assert len(steps) == summary["global_steps"] >= 3
    expected = steps[0]  # the first update copies the weights, then ema = decay * ema + (1 - decay) * w
    for weights in steps[1:]:
        expected = DECAY * expected + (1 - DECAY) * weights
    saved = checkpoint["state_dict"]["head.fc.weight"]
    assert torch.allclose(saved, expected, atol=1e-6)
    assert torch.equal(checkpoint["current_model_state"]["head.fc.weight"], steps[-1])
    assert not torch.allclose(saved, steps[-1], atol=1e-4)

    # eval.py and exports load `state_dict`: the EMA weights
    from vitcls.models.module import load_classifier

    module, _ = load_classifier(summary["best_ckpt"])
    assert torch.equal(module.head.fc.weight, saved)
