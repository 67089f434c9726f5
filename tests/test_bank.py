"""Head banks (python train.py bank=...): the designs of the lists, bad input, each head the same as its lone run,
selection on validation, the feature cache, export of a bank head, vitcls-compare reading a bank."""

from __future__ import annotations

import csv
import json
import re
import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_OVERRIDES, compose_config, make_image_folder, run_cli

from vitcls.errors import ConfigError
from vitcls.models.heads import HEADS
from vitcls.run.design_plan import expand_bank

# Three head types on three taps: 5 designs (attention_pool only on tokens, the others never on tokens).
BANK_LISTS = ["bank=default", "bank.heads=[linear,mlp,attention_pool]", "bank.features=[cls,mean,tokens]"]
EPOCHS = ["trainer.max_epochs=2"]
# Class colours close together: the heads disagree on some images, so equal predictions mean something.
COLOURS = {"a": (120, 120, 120), "b": (132, 124, 116), "c": (116, 128, 134)}


def read_predictions(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    columns = [c for c in rows[0] if c.startswith("prob_")] if rows else []
    return [r["pred_label"] for r in rows], np.array([[float(r[c]) for c in columns] for r in rows])


@pytest.fixture(scope="module")
def close_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bank") / "images"
    for index, split in enumerate(("train", "test")):
        make_image_folder(root, {"a": 14, "b": 14, "c": 14}, split, seed=index, colours=COLOURS)
    return root


@pytest.fixture(scope="module")
def bank_run(close_folder, tmp_path_factory) -> Path:
    """A bank of 5 designs trained from images by train.py, as a user runs it."""
    run_dir = tmp_path_factory.mktemp("bank") / "run"
    run_cli("train.py", *BANK_LISTS, f"data.root={close_folder}", f"hydra.run.dir={run_dir}", *FAST_OVERRIDES,
            *EPOCHS)
    return run_dir


def bank_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "bank.json").read_text())


# --- the designs -------------------------------------------------------------------------------------------
def test_the_bank_is_the_product_of_its_lists_minus_the_combinations_that_cannot_work():
    cfg = compose_config("train", ["bank=default", "bank.heads=[linear,cosine,attention_pool]",
                                   "bank.features=[cls,mean,tokens]", "bank.lrs=[1e-3,1e-2]",
                                   "bank.weight_decays=[0,1e-4]"])
    plan = expand_bank(cfg)
    # linear and cosine on cls and mean, attention_pool on tokens: (2*2 + 1) * 2 lrs * 2 decays
    assert len(plan.designs) == 20 and len(plan.excluded) == 3 * 3 * 2 * 2 - 20
    pairs = {(d.head["name"], d.tap["features"]) for d in plan.designs}
    assert pairs == {("linear", "cls"), ("linear", "mean"), ("cosine", "cls"), ("cosine", "mean"),
                     ("attention_pool", "tokens")}
    reasons = " ".join(e["reason"] for e in plan.excluded)
    assert "attention_pool pools tokens itself" in reasons and "needs a pooled vector" in reasons
    assert {d.lr for d in plan.designs} == {1e-3, 1e-2} and {d.weight_decay for d in plan.designs} == {0.0, 1e-4}
    names = [d.name for d in plan.designs]
    assert len(set(names)) == len(names)
    assert names[0] == "head=linear,tap.features=cls,optim.head_lr=0.001,optim.weight_decay=0.0"
    assert plan.designs[0].overrides == ("head=linear", "tap.features=cls", "optim.head_lr=0.001",
                                         "optim.weight_decay=0.0")


def test_full_head_configs_in_the_list_give_their_own_settings_and_overrides():
    cfg = compose_config("train", ["bank=default", "bank.heads=[linear,{name:mlp,hidden_dims:[32],dropout:0.1}]",
                                   "bank.features=[mean]"])
    plan = expand_bank(cfg)
    mlp = plan.designs[1]
    assert mlp.head["hidden_dims"] == [32] and mlp.head["dropout"] == 0.1
    assert "head.hidden_dims=[32]" in mlp.overrides and "head.dropout=0.1" in mlp.overrides
    assert mlp.name == "head=mlp(hidden_dims=[32],dropout=0.1)"  # told apart from linear by its settings


def test_the_probe_grid_has_at_least_four_heads_three_taps_three_lrs():
    plan = expand_bank(compose_config("train", ["bank=probe_grid"]))
    assert len({d.head["name"] for d in plan.designs}) >= 4
    assert len({d.tap["features"] for d in plan.designs}) >= 3 and len({d.lr for d in plan.designs}) >= 3
    assert len(plan.designs) >= 36 and not plan.excluded


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["bank.heads=[]"], "bank.heads=[] is empty"),
        (["bank.lrs=[]"], "bank.lrs=[] is empty"),
        (["bank.heads=[linear,transformer_xl]"], "'transformer_xl' is not a registered head"),
        (["bank.features=[cls,pooled]"], "'pooled' is not a feature tap"),
        (["bank.lrs=[0.01,-1]"], "bank.lrs: -1"),
        (["bank.heads=[attention_pool]", "bank.features=[cls]"], "no design that can work"),
    ],
)
def test_bad_bank_lists_are_refused_with_a_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        expand_bank(compose_config("train", ["bank=default", *overrides]))
    if "registered" in message:
        assert all(name in str(error.value) for name in HEADS)  # the error lists the registered heads


def test_a_bank_with_an_adapter_is_refused():
    from vitcls.run.studies import HeadBank

    with pytest.raises(ConfigError, match="adapter=none"):
        HeadBank().check(compose_config("train", ["bank=default", "adapter=lora"]))


@pytest.mark.parametrize("precision", ["16-mixed", "16-true"])
def test_a_bank_in_fp16_is_refused_because_one_scaler_would_skip_every_heads_step(precision):
    from vitcls.run.studies import HeadBank

    with pytest.raises(ConfigError, match="one head's overflow would skip every head's step"):
        HeadBank().check(compose_config("train", ["bank=default", f"trainer.precision={precision}"]))
    HeadBank().check(compose_config("train", ["bank=default", "trainer.precision=bf16-mixed"]))  # bf16 is fine


def test_banks_and_compare_break_ties_by_one_rule():
    """At equal validation scores: the lower validation loss, then the one listed first, in a bank's ranking and
    in vitcls-compare's (both call vitcls.metrics.selection_key)."""
    from vitcls.compare.designs import Candidate, Design
    from vitcls.compare.runs import Run
    from vitcls.compare.scoring import Ranking, score_designs
    from vitcls.compare.stats import Resampler
    from vitcls.run.bank_heads import rank_heads

    scores = [(0.8, 0.9), (0.8, 0.4), (0.9, 1.5), (0.8, 0.4)]  # (val f1_macro, val loss) per design, in list order
    heads = [{"index": i, "status": "ok", "val": {"f1_macro": f1, "loss": loss}} for i, (f1, loss) in enumerate(scores)]
    assert rank_heads(heads, "val/f1_macro", maximize=True) == [2, 1, 3, 0]
    designs = []
    for i, (f1, loss) in enumerate(scores):
        run = Run(f"job{i}", Path("."), {"head": f"h{i}"}, "ok", metrics={"val": {"f1_macro": f1, "loss": loss},
                                                                          "test": {"f1_macro": 0.5}})
        designs.append(Design(f"head=h{i}", {"head": f"h{i}"}, None, [Candidate({}, [run])],
                              chosen=Candidate({}, [run])))
    ranked, _ = score_designs(designs, Ranking("val", "f1_macro", minimize=False), Resampler(10))
    assert [score.design.name for score in ranked] == ["head=h2", "head=h1", "head=h3", "head=h0"]


def test_a_bank_on_a_backbone_that_trains_is_refused_with_the_reason_and_the_alternative(tmp_path):
    result = run_cli("train.py", "bank=default", "model.train_blocks=last_2", f"data.root={tmp_path}",
                     f"hydra.run.dir={tmp_path / 'run'}", *FAST_OVERRIDES, expect_success=False)
    assert result.returncode == 2
    error = (result.stdout + result.stderr).strip().splitlines()[-1]
    assert "model.train_blocks=last_2" in error and "share one backbone" in error and "-m head=" in error


# --- a trained bank ----------------------------------------------------------------------------------------
# A bank whose heads learn for several epochs with large steps, weight decay, clipped gradients and dropout: any of
# those done differently for a head than its lone run does moves that head's outputs well past the tolerance.
# Selected on val/loss: these images are told apart from the first epoch on (val/f1_macro is 1.0 there and never
# strictly improves), while the loss still moves, so each head's best epoch comes after updates of later epochs.
TUNED_BANK = ["bank=default", "bank.heads=[linear,{name:mlp,hidden_dims:[32],dropout:0.5}]", "bank.features=[cls]",
              "bank.lrs=[0.01]", "bank.weight_decays=[0.5]", "trainer.gradient_clip_val=0.05", "trainer.max_epochs=4",
              "sched.warmup_fraction=0.0", "feature_cache.enabled=true", "monitor=val/loss"]
# Equal up to float rounding: the same features, initialisation, dropout masks, updates.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def tuned_bank(close_folder, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("tuned")
    run_cli("train.py", *TUNED_BANK, f"data.root={close_folder}", f"hydra.run.dir={base / 'run'}",
            f"feature_cache.dir={base / 'cache'}", *FAST_OVERRIDES)
    return base / "run"


def lone_probabilities(head: dict, output_dir: Path, *faults: str) -> tuple[dict, np.ndarray]:
    from vitcls.cli.train import run_training

    summary = run_training(compose_config("train", [f"paths.output_dir={output_dir}", *head["overrides"], *faults]))
    return summary, read_predictions(output_dir / "test_predictions.csv")[1]


@pytest.mark.slow
def test_each_bank_head_equals_its_lone_run_and_the_check_catches_each_fault(tuned_bank, tmp_path):
    """The lone run of each head (its `overrides` in bank.json) ends with the same best epoch and predicts the same
    probabilities as the head in the bank. The same check fails for a lone run given another weight decay, no
    gradient clipping, or a shifted dropout stream: it can tell them apart."""
    bank = bank_of(tuned_bank)
    heads = {head["design"]["head"]["name"]: head for head in bank["heads"]}
    assert set(heads) == {"linear", "mlp"} and bank["inputs"] == "features"
    for name, head in heads.items():
        summary, lone = lone_probabilities(head, tmp_path / name)
        in_bank = read_predictions(tuned_bank / head["files"]["test_predictions"])[1]
        assert summary["best_epoch"] == head["best_epoch"], name
        assert summary["best_epoch"] > 0, f"{name}: selected after the first epoch, so later updates matter"
        np.testing.assert_allclose(lone, in_bank, rtol=0, atol=TOLERANCE, err_msg=name)
        assert summary["val"] == pytest.approx(head["val"], abs=TOLERANCE)
        assert summary["params"]["trainable"] == head["params"]["trainable"]
    # the heads really differ: their predictions, not only their names
    linear, mlp = (read_predictions(tuned_bank / heads[n]["files"]["test_predictions"])[1] for n in ("linear", "mlp"))
    assert np.abs(linear - mlp).max() > 100 * TOLERANCE
    faults = {
        "weight decay": ["optim.weight_decay=0.0"],
        "gradient clipping": ["trainer.gradient_clip_val=null"],
        "dropout stream": ["+callbacks.shift._target_=fault_injection.DrawRandomNumbers"],
    }
    for fault, overrides in faults.items():
        _, faulty = lone_probabilities(heads["mlp"], tmp_path / fault.replace(" ", "_"), *overrides)
        in_bank = read_predictions(tuned_bank / heads["mlp"]["files"]["test_predictions"])[1]
        assert np.abs(faulty - in_bank).max() > 100 * TOLERANCE, f"a lone run with another {fault} passes the check"


@pytest.mark.slow
def test_a_bank_killed_after_its_first_checkpoint_resumes_to_the_same_heads(bank_run, close_folder, tmp_path):
    """SIGKILL in the second epoch, then ckpt_path=last: every head ends as in the uninterrupted bank (its
    weights, its best epoch and val score so far, its dropout stream and the data order come back)."""
    reference = bank_of(bank_run)
    steps_per_epoch = reference["global_steps"] // reference["epochs_trained"]
    run_dir, marker = tmp_path / "run", tmp_path / "killed"
    command = [*BANK_LISTS, f"data.root={close_folder}", f"hydra.run.dir={run_dir}", *FAST_OVERRIDES, *EPOCHS,
               "+callbacks.stop._target_=fault_injection.SignalAt", "+callbacks.stop.signal_name=SIGKILL",
               f"+callbacks.stop.step={steps_per_epoch + 1}", f"+callbacks.stop.marker={marker}"]
    env = {"PYTHONPATH": str(Path(__file__).parent)}
    killed = run_cli("train.py", *command, expect_success=False, env=env)
    assert killed.returncode == -signal.SIGKILL and marker.is_file() and not (run_dir / "bank.json").exists()
    run_cli("train.py", *command, "ckpt_path=last", env=env)
    # it went on from epoch 0's checkpoint (a fresh start would reach the same heads too)
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from"] == str(run_dir / "checkpoints/last.ckpt")
    resumed = bank_of(run_dir)
    assert resumed["global_steps"] == reference["global_steps"]
    for got, expected in zip(resumed["heads"], reference["heads"], strict=True):
        assert got["name"] == expected["name"]
        assert (got["best_epoch"], got["val"], got["test"]) == (expected["best_epoch"], expected["val"], expected["test"])
        assert read_predictions(run_dir / got["files"]["test_predictions"])[1].tolist() == read_predictions(
            bank_run / expected["files"]["test_predictions"])[1].tolist()


def test_the_bank_selects_on_validation_and_summary_describes_the_selected_head(bank_run):
    bank = bank_of(bank_run)
    summary = json.loads((bank_run / "summary.json").read_text())
    heads = bank["heads"]
    assert bank["num_heads"] == len(heads) == 5 and len(bank["excluded"]) == 4
    best_val = max(h["val"]["f1_macro"] for h in heads)
    selected = heads[bank["selected"]["index"]]
    assert bank["selected"]["selected_on"] == "val/f1_macro" and selected["val"]["f1_macro"] == best_val
    assert selected["rank"] == 1 and sorted(h["rank"] for h in heads) == list(range(1, 6))
    assert summary["val"] == selected["val"] and summary["test"] == selected["test"]
    assert summary["best_epoch"] == selected["best_epoch"] and summary["bank"]["selected"] == selected["name"]
    assert Path(summary["best_ckpt"]).is_file()
    # the selected head's predictions are the run's own, as for a lone run
    assert read_predictions(bank_run / "test_predictions.csv")[0] == read_predictions(
        bank_run / selected["files"]["test_predictions"])[0]
    for head in heads:
        assert {"name", "design", "overrides", "params", "val", "test", "best_epoch"} <= set(head)
        assert "model.train_blocks=none" in head["overrides"]
        assert not any(o.startswith(("bank", "hydra.", "paths.output_dir")) for o in head["overrides"])
        # each head's metrics agree with its own predictions file (an independent computation)
        predicted, _ = read_predictions(bank_run / head["files"]["test_predictions"])
        with open(bank_run / head["files"]["test_predictions"]) as handle:
            truth = [row["true_label"] for row in csv.DictReader(handle)]
        assert head["test"]["acc"] == pytest.approx(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
    with open(bank_run / "bank.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows][0] == selected["name"] and rows[0]["selected"] == "True"
    assert (bank_run / "bank.png").stat().st_size > 0


@pytest.mark.slow
def test_a_bank_head_exports_and_the_predictor_agrees_with_its_evaluation(bank_run, close_folder, tmp_path):
    from vitcls import Predictor

    bank = bank_of(bank_run)
    head = next(h for h in bank["heads"] if h["index"] != bank["selected"]["index"])
    out = tmp_path / "export"
    run_cli("vitcls/cli/export.py", str(bank_run), str(out), "--bank-head", head["name"])
    predictor = Predictor.from_pretrained(out, device="cpu")
    with open(bank_run / head["files"]["test_predictions"]) as handle:
        rows = list(csv.DictReader(handle))
    top1 = [result[0]["label"] for result in predictor([row["path"] for row in rows], top_k=1)]
    assert top1 == [row["pred_label"] for row in rows]
    # the selected head, without --bank-head
    run_cli("vitcls/cli/export.py", str(bank_run), str(tmp_path / "selected"))
    config = json.loads((tmp_path / "selected" / "config.json").read_text())
    assert json.dumps(config).count(bank["selected"]["name"]) >= 1
    missing = run_cli("vitcls/cli/export.py", str(bank_run), str(tmp_path / "x"), "--bank-head", "nope",
                      expect_success=False)
    assert missing.returncode == 2 and "no head of that name" in missing.stderr


def test_compare_reads_a_bank_as_one_design_per_head(bank_run, tmp_path):
    from vitcls.compare.runs import read_sweep

    sweep = read_sweep(bank_run)
    bank = bank_of(bank_run)
    assert len(sweep.runs) == bank["num_heads"]
    for run, head in zip(sweep.runs, bank["heads"], strict=True):
        assert run.metric("val", "f1_macro") == head["val"]["f1_macro"]
        assert run.settings["head"] == head["design"]["head"]["name"]
        assert run.predictions["test"].is_file()
    result = run_cli("vitcls/cli/compare.py", str(bank_run), "--bootstrap", "50", "--out", str(tmp_path / "cmp"))
    assert "head=attention_pool" in result.stdout
    with open(tmp_path / "cmp" / "compare.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == bank["num_heads"]


@pytest.mark.slow
def test_a_bank_on_cached_features_equals_the_bank_on_images(bank_run, close_folder, tmp_path):
    run_dir = tmp_path / "cached"
    run_cli("train.py", *BANK_LISTS, f"data.root={close_folder}", f"hydra.run.dir={run_dir}", *FAST_OVERRIDES,
            *EPOCHS, "feature_cache.enabled=true", f"feature_cache.dir={tmp_path / 'cache'}")
    images, cached = bank_of(bank_run), bank_of(run_dir)
    assert cached["inputs"] == "features" and images["inputs"] == "images"
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) >= 3 * 3  # a cache entry per tap and split
    for a, b in zip(images["heads"], cached["heads"], strict=True):
        assert a["name"] == b["name"] and a["best_epoch"] == b["best_epoch"]
        assert b["test"]["acc"] == pytest.approx(a["test"]["acc"], abs=0.01)
        pa, qa = read_predictions(bank_run / a["files"]["test_predictions"])
        pb, qb = read_predictions(run_dir / b["files"]["test_predictions"])
        assert np.mean([x == y for x, y in zip(pa, pb, strict=True)]) >= 0.99
        np.testing.assert_allclose(qa, qb, atol=1e-4)
    assert cached["selected"]["name"] == images["selected"]["name"]


def test_wandb_logs_one_run_per_bank_with_per_head_metrics_and_optionally_a_run_per_head(
        close_folder, tmp_path, monkeypatch):
    from wandb_records import offline_runs

    from vitcls.cli.train import run_training as run
    from vitcls.loggers.wandb import finish_wandb

    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "")
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    run_dir = tmp_path / "run"
    try:
        run(compose_config("train", [f"paths.output_dir={run_dir}", *FAST_OVERRIDES, "trainer.max_epochs=1",
                                     "bank=default", "bank.heads=[linear,cosine]", f"data.root={close_folder}",
                                     "logger=wandb", "logger.wandb.bank_head_runs=true"]))
    finally:
        finish_wandb(exit_code=0)
    bank = bank_of(run_dir)
    runs = offline_runs(run_dir)
    bank_runs = [r for r in runs if "bank_run" not in r.config]
    head_runs = [r for r in runs if "bank_run" in r.config]
    assert len(bank_runs) == 1 and len(head_runs) == bank["num_heads"] == 2
    (main,) = bank_runs
    for head in bank["heads"]:
        assert f"head/{head['name']}/val/f1_macro" in main.metric_keys
        assert f"head/{head['name']}/test/acc" in main.metric_keys
    table = main.table("bank/heads")
    selected_column = table["columns"].index("selected")
    assert sum(bool(row[selected_column]) for row in table["data"]) == 1
    groups = {r.run.get("run_group") for r in runs}
    assert len(groups) == 1 and groups != {None}  # the heads' runs beside the bank's run, in its group
    assert sorted(r.run["display_name"] for r in head_runs) == sorted(h["name"] for h in bank["heads"])
    assert all({"val/f1_macro", "test/acc"} <= r.metric_keys for r in head_runs)


@pytest.mark.slow
def test_a_bank_under_ddp_counts_every_image_once_per_head(image_folder_factory, tmp_path):
    # 9 val and 9 test images: a padding DistributedSampler on 2 ranks would count one image twice per head.
    root = image_folder_factory({"a": 4, "b": 2, "c": 3}, splits=("train", "val", "test"), seed=3)
    run_dir = tmp_path / "run"
    ddp = [o for o in FAST_OVERRIDES if not o.startswith("trainer=")] + [
        "trainer=ddp_cpu", "data.batch_size=2", "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0"]
    run_cli("train.py", "bank=default", "bank.heads=[linear,cosine,mlp]", f"data.root={root}",
            f"hydra.run.dir={run_dir}", *ddp, env={"VITCLS_LOG_DIR": str(tmp_path / "stray")})
    summary, bank = json.loads((run_dir / "summary.json").read_text()), bank_of(run_dir)
    assert summary["world_size"] == 2 and bank["num_heads"] == 3
    for head in bank["heads"]:
        for split in ("val", "test"):
            with open(run_dir / head["files"][f"{split}_predictions"]) as handle:
                rows = list(csv.DictReader(handle))
            assert len(rows) == len({r["path"] for r in rows}) == summary["num_samples"][split] == 9
            # the synced metric equals the one computed here from every image once
            assert head[split]["acc"] == pytest.approx(np.mean([r["true_label"] == r["pred_label"] for r in rows]))
        with open(run_dir / head["files"]["test_confusion_matrix"]) as handle:
            counts = [list(map(int, row[1:])) for row in list(csv.reader(handle))[1:]]
        assert np.asarray(counts).sum() == 9
    assert not (tmp_path / "stray").exists()


def test_compare_reads_a_multirun_of_banks_as_each_head_over_seeds(bank_run, tmp_path):
    import shutil

    sweep = tmp_path / "multirun"
    for job, seed in enumerate((1, 2)):  # the same bank as a sweep over seed=1,2 writes it
        shutil.copytree(bank_run, sweep / str(job))
        overrides = sweep / str(job) / ".hydra" / "overrides.yaml"
        overrides.parent.mkdir(exist_ok=True)
        overrides.write_text(f"- bank=default\n- seed={seed}\n")
    result = run_cli("vitcls/cli/compare.py", str(sweep), "--bootstrap", "50")
    with open(sweep / "compare.csv") as handle:
        rows = list(csv.DictReader(handle))
    bank = bank_of(bank_run)
    assert len(rows) == bank["num_heads"] and all(row["n_seeds"] == "2" for row in rows), result.stdout
