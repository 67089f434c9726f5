"""A bench-only Lightning callback: steady-state throughput and data wait of vitcls's own loops.

Add it to a run without touching vitcls: `python train.py +callbacks.timer._target_=bench.timing.LoopTimer
+callbacks.timer.output=timer.json +callbacks.timer.warmup=3`.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L

from bench.common import mark_phase
from vitcls.io import write_json_atomic


class LoopTimer(L.Callback):
    """Times training batches after `warmup` of them, and test batches after the first.

    - train images/s: images of the measured batches / time from the end of the last warm-up batch
      to the end of the last batch (so it includes waiting for data and the loop's own overhead);
    - data wait: time between the end of one training batch and the start of the next (Lightning
      fetches the next batch there), as a fraction of that same span;
    - test images/s: the same over the test loop (eval mode, no gradients);
    - what was run: parameter count, batch size, precision, images measured (for checks of same work).
    The run enters the "train" memory phase (`bench.common.mark_phase`) when training starts.
    """

    def __init__(self, output: str, warmup: int = 3):
        self.output = Path(output)
        self.warmup = warmup
        self.results: dict = {}
        self._train: dict = {"images": 0, "wait_s": 0.0, "batches": 0}
        self._test: dict = {"images": 0, "batches": 0}
        self._last_end: float | None = None
        self._start: float | None = None

    def on_train_start(self, trainer, pl_module):
        mark_phase("train")
        self.results.update(
            params=sum(p.numel() for p in pl_module.net.parameters()),
            batch_size=trainer.datamodule.hparams.batch_size,
            precision=str(trainer.precision),
            img_size=pl_module.data_config["input_size"][-1],
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = time.perf_counter()
        if self._start is not None and self._last_end is not None:
            self._train["wait_s"] += now - self._last_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        self._train["batches"] += 1
        if self._train["batches"] == self.warmup:
            self._start = now
        elif self._start is not None:
            self._train["images"] += len(batch[1])
            self._train["span_s"] = now - self._start
        self._last_end = now

    def on_validation_start(self, trainer, pl_module):
        self._last_end = None  # validation between epochs is not data wait

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        now = time.perf_counter()
        self._test["batches"] += 1
        if self._test["batches"] == 1:
            self._test["start"] = now
        else:
            self._test["images"] += len(batch[1])
            self._test["span_s"] = now - self._test["start"]

    def on_train_end(self, trainer, pl_module):
        span = self._train.get("span_s")
        if span:
            self.results.update(
                train_ips=self._train["images"] / span,
                train_measured_steps=self._train["batches"] - self.warmup,
                train_measured_images=self._train["images"],
                data_wait_s=self._train["wait_s"],
                data_wait_fraction=self._train["wait_s"] / span,
                step_s=span / (self._train["batches"] - self.warmup),
            )
        write_json_atomic(self.output, self.results)

    def on_test_end(self, trainer, pl_module):
        span = self._test.get("span_s")
        if span:
            self.results.update(
                eval_ips=self._test["images"] / span,
                eval_measured_batches=self._test["batches"] - 1,
                eval_measured_images=self._test["images"],
            )
        write_json_atomic(self.output, self.results)
