"""The real configs compose, and every option of every group builds what it names."""

import hydra.utils
import pytest
from conftest import CONF_DIR, FAST_OVERRIDES, compose_config
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf

from vitcls.instantiate import instantiate_dict_group
from vitcls.train import build_module

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_resolves(experiment, tmp_path):
    cfg = compose_config("train", [f"experiment={experiment}", f"paths.output_dir={tmp_path}"])
    OmegaConf.resolve(cfg)
    assert cfg.data._target_.endswith("ImageFolderDataModule")


def test_tutorial_recipe_values():
    cfg = compose_config("train", ["experiment=tutorial", "paths.output_dir=/tmp/x"])
    assert cfg.model.name == "vit_base_patch16_224.augreg_in21k" and cfg.model.pretrained
    assert cfg.model.img_size == 224 and cfg.model.pool == "token"
    assert cfg.head._target_ == "vitcls.models.heads.LinearHead"
    assert (cfg.optim.opt, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 2e-4, 0.01)
    assert cfg.data.batch_size == 16 and cfg.data.val_fraction == 0.2
    assert cfg.trainer.max_epochs == 3 and cfg.trainer.check_val_every_n_epoch == 1
    assert cfg.seed == 42 and cfg.data.split_seed == 42


@pytest.mark.parametrize("model", MODELS)
def test_model_configs_name_real_timm_models(model):
    import timm

    cfg = compose_config("train", [f"model={model}", "data.root=/x", "paths.output_dir=/tmp/x"])
    assert timm.is_model(cfg.model.name.split(".")[0])
    assert cfg.model.name in timm.list_pretrained(cfg.model.name)


@pytest.mark.parametrize("head", sorted(p.stem for p in (CONF_DIR / "head").glob("*.yaml")))
def test_module_builds_from_config_for_each_head(head):
    cfg = compose_config("train", [f"head={head}", "data.root=/x", "paths.output_dir=/tmp/x", *FAST_OVERRIDES])
    module = build_module(cfg, ["a", "b", "c"])
    assert module.head.num_classes == 3
    assert module.hparams.class_names == ["a", "b", "c"]


def test_callbacks_loggers_and_trainer_instantiate(tmp_path):
    cfg = compose_config("train", ["data.root=/x", f"paths.output_dir={tmp_path}", "logger=tensorboard"])
    callbacks = instantiate_dict_group(cfg.callbacks)
    assert {type(c).__name__ for c in callbacks} == {
        "ModelCheckpoint", "LearningRateMonitor", "OnExceptionCheckpoint", "RestoreRNGStates"}
    cfg.logger.tensorboard = None  # tensorboard is an optional extra
    loggers = instantiate_dict_group(cfg.logger)
    assert [type(lg).__name__ for lg in loggers] == ["ResumableCSVLogger"]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    assert trainer.max_epochs == 3


def test_wandb_logger_goes_offline_without_an_api_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose_config("train", ["data.root=/x", f"paths.output_dir={tmp_path}", "logger=wandb"])
    loggers = instantiate_dict_group(cfg.logger)
    wandb_logger = next(lg for lg in loggers if type(lg).__name__ == "WandbLogger")
    assert wandb_logger._offline is True
    assert any(isinstance(lg, CSVLogger) for lg in loggers)
