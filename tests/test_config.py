"""The real configs compose, and every option of every group builds what it names."""

import hydra.utils
import pytest
from conftest import CONF_DIR, FAST_OVERRIDES, compose_config
from conftest import build_module_of as build_module
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf

from vitcls.config import instantiate_dict_group
from vitcls.run.design_plan import head_spec_of

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


@pytest.mark.parametrize(
    "choice", [f"experiment={name}" for name in EXPERIMENTS] + [f"sweep={name}" for name in SWEEPS]
)
def test_every_experiment_composes_and_resolves(choice, tmp_path):
    assert EXPERIMENTS and SWEEPS
    cfg = compose_config("train", [choice, f"paths.output_dir={tmp_path}"])
    OmegaConf.resolve(cfg)
    assert cfg.data._target_.endswith("ImageFolderDataModule")


def test_tutorial_recipe_values():
    cfg = compose_config("train", ["experiment=tutorial", "paths.output_dir=/tmp/x"])
    assert cfg.model.name == "vit_base_patch16_224.augreg_in21k" and cfg.model.pretrained
    assert cfg.model.img_size == 224 and cfg.tap.features == "cls"
    assert cfg.head._target_ == "vitcls.models.heads.LinearHead"
    assert head_spec_of(cfg.head) == {"name": "linear", "module": "vitcls.models.heads", "dropout": 0.0}
    assert (cfg.optim.opt, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 2e-4, 0.01)
    assert cfg.data.batch_size == 16 and cfg.data.val_fraction == 0.2
    assert cfg.trainer.max_epochs == 3 and cfg.trainer.check_val_every_n_epoch == 1
    assert cfg.seed == 42 and cfg.data.split_seed == 42


@pytest.mark.parametrize("model", [m for m in MODELS if m != "timm_vit"])
def test_model_configs_name_real_timm_models(model):
    import timm

    cfg = compose_config("train", [f"model={model}", "data.root=/x", "paths.output_dir=/tmp/x"])
    assert timm.is_model(cfg.model.name.split(".")[0])
    assert cfg.model.name in timm.list_pretrained(cfg.model.name)
    # every named model is the timm_vit base with a name
    base = compose_config("train", ["model=timm_vit", f"model.name={cfg.model.name}", "data.root=/x",
                                    "paths.output_dir=/tmp/x"])
    assert cfg.model == base.model


def test_the_timm_vit_base_needs_a_model_name():
    from omegaconf.errors import MissingMandatoryValue

    cfg = compose_config("train", ["model=timm_vit", "data.root=/x", "paths.output_dir=/tmp/x"])
    assert "timm_vit" in MODELS
    with pytest.raises(MissingMandatoryValue, match="model.name"):
        cfg.model.name  # noqa: B018


@pytest.mark.parametrize("head", sorted(p.stem for p in (CONF_DIR / "head").glob("*.yaml")))
def test_module_builds_from_config_for_each_head(head):
    cfg = compose_config("train", [f"head={head}", "data.root=/x", "paths.output_dir=/tmp/x", *FAST_OVERRIDES])
    module = build_module(cfg, ["a", "b", "c"])
    assert module.net.head.num_classes == 3
    assert module.class_names == module.hparams.net["class_names"] == ["a", "b", "c"]
    [entry] = module.hparams.net["heads"]
    assert entry["head"]["name"] == head


def test_callbacks_loggers_and_trainer_instantiate(tmp_path):
    cfg = compose_config("train", ["data.root=/x", f"paths.output_dir={tmp_path}", "logger=tensorboard"])
    callbacks = instantiate_dict_group(cfg.callbacks)
    assert {type(c).__name__ for c in callbacks} == {
        "ModelCheckpoint", "LearningRateMonitor", "InterruptedCheckpoint", "RestoreRNGStates", "NonFiniteLossGuard",
        "TrainCost", "StopOnCtrlC"}
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
    from lightning.pytorch.loggers import WandbLogger

    wandb_logger = next(lg for lg in loggers if isinstance(lg, WandbLogger))
    assert wandb_logger._offline is True
    assert any(isinstance(lg, CSVLogger) for lg in loggers)


def test_slurm_launcher_config_composes_and_the_launcher_instantiates(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp", "hydra.launcher.gpus_per_node=4",
                                          "data.root=/x", f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
    launcher_cfg = cfg.hydra.launcher
    assert launcher_cfg.tasks_per_node == 4 and launcher_cfg.nodes == 1
    assert launcher_cfg.submitit_folder == f"{tmp_path}/.submitit/%j"
    launcher = hydra.utils.instantiate(launcher_cfg)
    assert isinstance(launcher, SlurmLauncher)
    assert launcher.params["gpus_per_node"] == 4 and launcher.params["tasks_per_node"] == 4
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == "auto"


def test_distributed_trainer_presets(monkeypatch):
    monkeypatch.delenv("VITCLS_NUM_NODES", raising=False)
    monkeypatch.setenv("SLURM_NNODES", "3")
    multinode = compose_config("train", ["data.root=/x", "trainer=ddp_multinode"]).trainer
    assert multinode.num_nodes == 3 and multinode.strategy == "ddp" and multinode.accelerator == "gpu"
    monkeypatch.setenv("VITCLS_NUM_NODES", "2")
    assert compose_config("train", ["data.root=/x", "trainer=ddp_multinode"]).trainer.num_nodes == 2
    cpu = compose_config("train", ["data.root=/x", "trainer=ddp_cpu"]).trainer
    assert (cpu.accelerator, cpu.devices, cpu.strategy) == ("cpu", 2, "ddp")


def test_precision_preset_follows_the_hardware(cpu_kind):
    from vitcls.precision import precision_preset

    expected = "bf16-mixed" if cpu_kind.amx_bf16 else "32-true"
    assert precision_preset("cpu") == precision_preset("auto") == expected
    assert compose_config("train", ["data.root=/x", "trainer=gpu"]).trainer.precision == expected
