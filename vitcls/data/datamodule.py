"""LightningDataModule over an image folder: scan once, split deterministically, decode in workers."""

from __future__ import annotations

import copy
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import torch
from timm.data import Mixup
from torch.utils.data import DataLoader, Dataset, Sampler

from vitcls.data.dataset import ImageFileDataset, collate_skipping_bad, default_num_workers
from vitcls.data.folder import FolderScan, Sample, read_folder, validate_scan
from vitcls.data.images import DEFAULT_MAX_IMAGE_PIXELS
from vitcls.data.loaders import EpochSampler, EvaluationDataLoader, EvaluationSampler, ResumableDataLoader
from vitcls.data.quality import (
    CheckMemo,
    apply_bad_image_policy,
    check_file,
    check_files,
    file_stat,
    warn_about_leakage,
)
from vitcls.data.split import stratified_split, stratified_subset
from vitcls.errors import ConfigError
from vitcls.preprocessing import apply_preprocessing_overrides, build_eval_transform, build_train_transform

log = logging.getLogger(__name__)


class FolderSource(Protocol):
    """Something that can put a labelled image folder at `root` (a generator, a downloader...)."""

    def prepare(self, root: Path) -> None: ...


class ImageFolderDataModule(L.LightningDataModule):
    """Train/val/test dataloaders over `root` (see `vitcls.data.folder` for the accepted layouts).

    Split rules: a val/ folder is used as is, otherwise `val_fraction` of train is held out
    (stratified, seeded by `split_seed`). Without a test/ folder, `test_fraction` of train is held out
    first. Then `train_per_class` images per class (or `train_fraction` of each class) of what remains
    for training are kept, drawn by `subset_seed` (nested across sizes); val and test never change with
    them. Transforms come from the backbone: call `set_data_config` (done by `vitcls.run.lifecycle.run`)
    or let `setup` take `trainer.lightning_module.data_config`.

    Bad files: before any split is made, every image is decoded once (`vitcls.data.quality`).
    `on_bad_image="error"` stops with the list of bad files; `"skip"` leaves them out with a warning,
    and a file that goes bad later is dropped from its batch (`skipped_files()` counts both).
    `image_check_cache_dir` remembers those checks across runs (files unchanged since are not decoded
    again); it is not a hyperparameter, so checkpoints keep only what defines the data.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        split_seed: int = 42,
        shuffle_seed: int = 42,
        train_per_class: int | None = None,
        train_fraction: float | None = None,
        subset_seed: int = 42,
        train_augment: dict[str, Any] | None = None,
        crop_pct: float | None = None,
        interpolation: str | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        drop_last: bool = True,
        on_bad_image: str = "error",
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        mixup: dict[str, Any] | None = None,
        source: FolderSource | None = None,
        image_check_cache_dir: str | os.PathLike | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["source", "image_check_cache_dir"])
        self.hparams.root = str(Path(root).expanduser().resolve())
        self.root = Path(self.hparams.root)
        self.source = source
        self.data_config: dict[str, Any] | None = None
        self._scan: FolderScan | None = None
        self._splits: dict[str, list[Sample]] | None = None
        self._train_pool: list[Sample] = []
        self._skipped: dict[str, str] = {}  # path -> reason, found by the scan
        self._file_stats: dict[str, tuple[int, int] | None] = {}  # path -> (size, mtime) at scan time
        self.datasets: dict[str, ImageFileDataset] = {}
        self.mixup: Mixup | None = None
        self.check_memo = CheckMemo.in_directory(image_check_cache_dir, self.root) if image_check_cache_dir else None
        self._loader_workers = num_workers
        self._train_position: dict[str, int] | None = None  # from a checkpoint, for the next training loader

    def serving(self, datasets: dict[str, Dataset]) -> ImageFolderDataModule:
        """A copy that serves other datasets of the same samples (in-memory tensors, e.g. cached features)
        with everything else unchanged: hyperparameters (checkpoints record the image settings, so eval.py
        scores images), samplers, batch sizes, drop rule and loader seeds, so the random stream is the one
        of the image run. In-memory tensors need no worker processes."""
        served = copy.copy(self)
        served.datasets = dict(datasets)
        served._loader_workers = 0
        return served

    # --- folder and splits -------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.source is not None:
            self.source.prepare(self.root)

    def scan(self) -> FolderScan:
        """Validate the folder (raises DatasetLayoutError with the expected layout) and cache the scan."""
        if self._scan is None:
            scan = read_folder(self.root)
            checks = check_files(scan.all_files(), self.hparams.max_image_pixels, memo=self.check_memo)
            self._skipped = apply_bad_image_policy(scan, checks, self.hparams.on_bad_image)
            self._scan = validate_scan(scan)
            warn_about_leakage(scan, [c for c in checks if c.path not in self._skipped])
            self._file_stats = {path: file_stat(path) for path in scan.all_files()}
            log.info("data.root %s: %s", self.root, self._scan.summary())
        return self._scan

    def skipped_files(self) -> dict[str, str]:
        """{path: reason} of every file left out: by the scan, and (files changed since) during the run.

        Files that DataLoader workers dropped are found again here, in the main process, by re-checking
        the files whose size or modification time changed since the scan.
        """
        skipped = dict(self._skipped)
        for path, stat in self._file_stats.items():
            if file_stat(path) != stat:
                check = check_file(path, self.hparams.max_image_pixels)
                if not check.ok:
                    skipped[path] = check.reason
        return skipped

    @property
    def class_names(self) -> list[str]:
        return self.scan().class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def splits(self) -> dict[str, list[Sample]]:
        if self._splits is None:
            scan = self.scan()
            train = scan.samples("train")
            seed = self.hparams.split_seed
            test = scan.samples("test") if "test" in scan.splits else None
            if test is None:
                train, test = stratified_split(train, self.hparams.test_fraction, seed)
            val = scan.samples("val") if "val" in scan.splits else None
            if val is None:
                train, val = stratified_split(train, self.hparams.val_fraction, seed + 1)
            self._train_pool = train
            self._splits = {"train": self._training_subset(train), "val": val, "test": test}
        return self._splits

    @property
    def train_pool(self) -> list[Sample]:
        """The training split before `train_per_class` / `train_fraction` keep a subset of it: what a feature cache
        stores, so that every subset (few-shot draws, learning curves) is served from one backbone pass."""
        self.splits  # noqa: B018 (computes the splits)
        return self._train_pool

    def _training_subset(self, train: list[Sample]) -> list[Sample]:
        per_class = self.hparams.get("train_per_class")
        subset = stratified_subset(train, per_class, self.hparams.get("train_fraction"), self.hparams.subset_seed)
        if per_class is not None:
            counts = Counter(self.class_names[s.label] for s in train)
            short = {name: n for name, n in sorted(counts.items()) if n < per_class}
            if short:
                log.warning("data.train_per_class=%d: these classes have fewer training images and keep them "
                            "all: %s", per_class, short)
        if len(subset) < len(train):
            log.info("training subset: %d of %d images (seed %d)", len(subset), len(train), self.hparams.subset_seed)
        return subset

    # --- transforms and datasets -------------------------------------------------------------
    def set_data_config(self, data_config: dict[str, Any]) -> None:
        """Use the backbone's preprocessing; config-level crop_pct/interpolation overrides win."""
        self.data_config = apply_preprocessing_overrides(data_config, self.hparams)
        self.datasets = {}

    def setup(self, stage: str | None = None) -> None:
        if self.data_config is None:
            module = getattr(self.trainer, "lightning_module", None) if self.trainer else None
            if module is None or not hasattr(module, "data_config"):
                raise RuntimeError("ImageFolderDataModule needs the backbone's data config: call set_data_config().")
            self.set_data_config(module.data_config)
        if stage in (None, "fit"):
            self._check_batch_size()
        if self.datasets:
            return
        eval_transform = build_eval_transform(self.data_config)
        train_transform = build_train_transform(self.data_config, self.hparams.train_augment)
        options = {"max_pixels": self.hparams.max_image_pixels, "skip_bad": self.hparams.on_bad_image == "skip"}
        self.datasets = {
            "train": ImageFileDataset(self.splits["train"], train_transform, **options),
            "val": ImageFileDataset(self.splits["val"], eval_transform, **options),
            "test": ImageFileDataset(self.splits["test"], eval_transform, **options),
        }
        for split, dataset in self.datasets.items():
            if len(dataset) == 0:
                raise ConfigError(f"the {split} split of {self.root} is empty; check data.val_fraction/test_fraction.")
        if self.hparams.mixup:
            self.mixup = self._create_mixup()

    def _create_mixup(self) -> Mixup:
        # timm's Mixup pairs each image with its mirror in the batch: it needs even, full batches.
        batch_size = self.hparams.batch_size
        if batch_size % 2 or not self.hparams.drop_last or len(self.datasets["train"]) < batch_size:
            raise ConfigError(
                f"data.mixup needs an even data.batch_size (got {batch_size}), data.drop_last=true and at least "
                f"one full batch of training images ({len(self.datasets['train'])})."
            )
        return Mixup(**self.hparams.mixup, num_classes=self.num_classes)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches only: mix images and turn the labels into soft targets (class probabilities)."""
        if self.mixup is not None and self.trainer is not None and self.trainer.training:
            return self.mixup(*batch)
        return batch

    def _check_batch_size(self) -> None:
        per_device = len(self.splits["train"]) // self._devices()
        if self.hparams.batch_size > per_device:
            raise ConfigError(
                f"data.batch_size={self.hparams.batch_size} is larger than the training set "
                f"({per_device} images per device after the val/test split of {self.root}): "
                f"pass data.batch_size={max(1, per_device)} or less."
            )

    # --- dataloaders -------------------------------------------------------------------------
    def _devices(self) -> int:
        return getattr(self.trainer, "num_devices", 1) if self.trainer is not None else 1

    def _on_cuda(self) -> bool:
        if self.trainer is not None:
            return self.trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def _replicas(self) -> tuple[int, int]:
        """(world size, global rank) of the attached trainer; (1, 0) without one."""
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _train_sampler(self) -> EpochSampler:
        # A DistributedSampler even on one process: the order is a function of (shuffle_seed, epoch) that
        # Lightning sets through `set_epoch`, so a resumed run sees the same order as an uninterrupted one.
        # Lightning keeps a DistributedSampler it is given instead of replacing it. With random augmentation
        # every sample gets a seed of its own (see vitcls.data.loaders).
        world_size, rank = self._replicas()
        train = self.datasets["train"]
        with_epoch = bool(getattr(train, "views_per_epoch", False))  # cached augmented views
        return EpochSampler(train, num_replicas=world_size, rank=rank, seed=self.hparams.shuffle_seed,
                            seeded=bool(self.hparams.train_augment) and not with_epoch, with_epoch=with_epoch)

    def _eval_sampler(self, split: str) -> Sampler | None:
        # Unlike DistributedSampler, no padding: every image is evaluated exactly once across ranks.
        world_size, rank = self._replicas()
        if world_size == 1:
            return None
        return EvaluationSampler(self.datasets[split], num_replicas=world_size, rank=rank)

    def _loader(
        self, split: str, batch_size: int, sampler: Sampler | None, loader_class: type[DataLoader] = DataLoader,
        **options: Any,
    ) -> DataLoader:
        workers = self._loader_workers
        if workers is None:
            workers = default_num_workers(self._devices())
        pin = self.hparams.pin_memory if self.hparams.pin_memory is not None else self._on_cuda()
        return loader_class(
            self.datasets[split],
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=self.hparams.persistent_workers and workers > 0,
            collate_fn=collate_skipping_bad if self.hparams.on_bad_image == "skip" else None,
            generator=self._loader_generator(),
            **options,
        )

    def train_dataloader(self) -> DataLoader:
        # Dropping the ragged last batch (a different one each epoch, as the order is shuffled) avoids
        # a batch of one, which BatchNorm in a head cannot train on; tiny training sets keep it.
        batch_size = self.hparams.batch_size
        sampler = self._train_sampler()
        drop_last = self.hparams.drop_last and len(sampler) >= batch_size
        loader = self._loader("train", batch_size, sampler, ResumableDataLoader, drop_last=drop_last,
                              batches_done=self._batches_trained_this_epoch)
        if self._train_position is not None:
            loader.load_state_dict(self._train_position)
            self._train_position = None
        return loader

    # --- resuming: where training stands, in every checkpoint ------------------------------------
    def state_dict(self) -> dict[str, Any]:
        loader = self.trainer.train_dataloader if self.trainer is not None else None
        return {"train_position": loader.state_dict()} if isinstance(loader, ResumableDataLoader) else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores the DataModule before it asks for any loader (see vitcls.data.loaders).
        self._train_position = state_dict.get("train_position")

    def _batches_trained_this_epoch(self) -> int:
        trainer = self.trainer
        if trainer is None:
            return 0
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        batch_size = self.hparams.eval_batch_size or self.hparams.batch_size
        return self._loader(split, batch_size, self._eval_sampler(split), EvaluationDataLoader)

    def _loader_generator(self) -> torch.Generator:
        # Every iterator a DataLoader creates draws its worker base seed from this generator, not from the global
        # RNG: how many iterators there are (persistent workers or not, a sanity check or not) must not shift the
        # random numbers of dropout and drop-path (see vitcls.callbacks.rng_states.RestoreRNGStates).
        return torch.Generator().manual_seed(self.hparams.shuffle_seed)
