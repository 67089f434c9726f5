"""Probes on features: k-NN against a direct computation, logistic regression against scikit-learn's own fit,
the torch L-BFGS backend against the sklearn one, selection on validation, few-shot training sets, configs."""

from __future__ import annotations

import json
import math

import hydra.utils
import numpy as np
import pytest
import torch
from conftest import CONF_DIR, compose_config
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vitcls.errors import ConfigError, VitclsError
from vitcls.probes import PROBES, KNNProbe, LogisticRegressionProbe, build_probe

# The largest difference in probability the two logistic-regression backends may show at the default tol
# (measured: up to 1.1e-4, at C = 1e5 on separable classes; below 1e-5 elsewhere).
BACKEND_PROBABILITY_TOLERANCE = 1e-3


def clustered(rng, counts, dim, spread=1.0, scales=None, centres_seed=None):
    """Features around one random centre per class (`counts[c]` rows of class c) and their labels. Splits
    drawn with the same `centres_seed` share the class centres (their noise comes from `rng`)."""
    centre_rng = rng if centres_seed is None else np.random.default_rng(centres_seed)
    centres = centre_rng.normal(size=(len(counts), dim)) * 2.0
    labels = np.repeat(np.arange(len(counts)), counts)
    features = centres[labels] + rng.normal(size=(len(labels), dim)) * spread
    if scales is not None:
        features = features * np.asarray(scales)
    return torch.tensor(features, dtype=torch.float32), torch.tensor(labels)


def naive_knn_proba(train_x, train_y, queries, k, temperature, num_classes):
    """Loops over queries and training rows: cosine similarities, the k largest, exp(sim / T) votes, normalised."""
    train_x, train_y, queries = train_x.double().numpy(), train_y.numpy(), queries.double().numpy()
    out = np.zeros((len(queries), num_classes))
    for q, query in enumerate(queries):
        sims = [float(query @ row / (np.linalg.norm(query) * np.linalg.norm(row))) for row in train_x]
        for j in np.argsort(sims)[::-1][:k]:
            out[q, train_y[j]] += math.exp(sims[j] / temperature)
        out[q] /= out[q].sum()
    return out


# --- k-NN ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 5, 30, 50])
def test_knn_probabilities_equal_a_direct_computation(k):
    rng = np.random.default_rng(k)
    train_x, train_y = clustered(rng, [12, 10, 8], dim=6, spread=2.0)  # 30 training images, class 3 absent
    val_x, val_y = clustered(rng, [4, 4, 4, 4], dim=6, spread=2.0)
    fit = KNNProbe(ks=[k], temperature=0.07, chunk_size=4).fit(train_x, train_y, val_x, val_y, num_classes=4)

    proba = fit.predict_proba(val_x)
    expected = naive_knn_proba(train_x, train_y, val_x, min(k, 30), 0.07, 4)
    assert proba.dtype == torch.float32 and proba.shape == (16, 4)
    np.testing.assert_allclose(proba.numpy(), expected, atol=1e-5)
    assert torch.all(proba[:, 3] == 0)  # no training image of class 3, no vote
    # the selection table scores the same probabilities with the project's macro F1 (scikit-learn's here)
    assert fit.val_metrics["f1_macro"] == pytest.approx(
        f1_score(val_y.numpy(), expected.argmax(1), average="macro", zero_division=0), abs=1e-6
    )
    if k > 30:
        assert fit.params == {"k": 30}
        assert fit.notes == [f"k capped at the 30 training images: k = {k} ran as k = 30"]
    else:
        assert fit.params == {"k": k} and fit.notes == []


def test_knn_scores_every_k_from_one_search_like_separate_fits():
    rng = np.random.default_rng(0)
    train_x, train_y = clustered(rng, [15, 15, 15], dim=5, spread=2.5, centres_seed=0)
    val_x, val_y = clustered(rng, [10, 10, 10], dim=5, spread=2.5, centres_seed=0)
    grid = KNNProbe(ks=[20, 1, 5, 200]).fit(train_x, train_y, val_x, val_y, 3)
    assert [row["k"] for row in grid.candidates] == [45, 20, 5, 1]  # largest first; 200 capped at 45
    for row in grid.candidates:
        single = KNNProbe(ks=[row["k"]]).fit(train_x, train_y, val_x, val_y, 3)
        assert single.candidates[0] == row


@pytest.fixture
def one_torch_thread():
    """Tiny L-BFGS fits on several threads run many times slower on a machine busy with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def select_by_rule(candidates, metric, maximise=True):
    """The first row with the best score: the tie rule, computed on the table."""
    scores = [row[metric] for row in candidates]
    best = max(scores) if maximise else min(scores)
    return scores.index(best)


def test_knn_selection_prefers_a_small_k_when_a_rare_class_would_be_outvoted():
    # Class 0 has 3 training images near its queries; class 1 has 40 images not far away. With nearly equal
    # vote weights (T = 1), k = 40 lets class 1 outvote class 0 on every class-0 query; k = 1 and k = 3 do
    # not, and the tie between them goes to the larger k.
    rng = np.random.default_rng(1)
    u0, u1 = np.eye(8)[0], (np.eye(8)[0] + np.eye(8)[1]) / math.sqrt(2)
    train_x = np.vstack([u0 + 0.02 * rng.normal(size=(3, 8)), u1 + 0.3 * rng.normal(size=(40, 8))])
    val_x = np.vstack([u0 + 0.02 * rng.normal(size=(10, 8)), u1 + 0.3 * rng.normal(size=(10, 8))])
    train_y, val_y = torch.tensor([0] * 3 + [1] * 40), torch.tensor([0] * 10 + [1] * 10)
    fit = KNNProbe(ks=[1, 3, 40], temperature=1.0).fit(
        torch.tensor(train_x, dtype=torch.float32), train_y, torch.tensor(val_x, dtype=torch.float32), val_y, 2
    )
    scores = {row["k"]: row["f1_macro"] for row in fit.candidates}
    assert scores[1] == scores[3] == 1.0 and scores[40] < 0.5
    assert fit.params == {"k": 3} and fit.chosen == select_by_rule(fit.candidates, "f1_macro")
    assert fit.val_score == 1.0


def test_knn_selection_prefers_a_large_k_when_training_labels_are_noisy():
    # Two separated clusters of 20 training images with 5 labels flipped in each; clean validation. The
    # nearest image is often a flipped one (k = 1 errs), the 20 nearest are mostly right.
    rng = np.random.default_rng(2)
    train_x, train_y = clustered(rng, [20, 20], dim=8, spread=0.3, centres_seed=2)
    val_x, val_y = clustered(rng, [20, 20], dim=8, spread=0.3, centres_seed=2)  # same centres
    noisy = train_y.clone()
    for cls in (0, 1):
        flip = torch.nonzero(train_y == cls).flatten()[:5]
        noisy[flip] = 1 - cls
    fit = KNNProbe(ks=[1, 20], temperature=1.0).fit(train_x, noisy, val_x, val_y, 2)
    scores = {row["k"]: row["f1_macro"] for row in fit.candidates}
    assert scores[20] > scores[1]
    assert fit.params == {"k": 20} and fit.chosen == select_by_rule(fit.candidates, "f1_macro")


# --- logistic regression -----------------------------------------------------------------------------------
@pytest.mark.parametrize("counts, num_classes", [([30, 25, 20, 25], 4), ([30, 40], 2), ([30, 25, 0, 25], 4)])
def test_logreg_sklearn_backend_equals_scikit_learns_own_fit(counts, num_classes):
    rng = np.random.default_rng(3)
    # features of very different scales and one constant feature: the standardisation must match StandardScaler
    SCALES = [1, 100, 0, 0.01, 1, 5]  # noqa: N806
    train_x, train_y = clustered(rng, counts, dim=6, spread=1.5, scales=SCALES, centres_seed=3)
    train_x[:, 2] = 3.0
    query_x, _ = clustered(rng, [10] * len(counts), dim=6, spread=3.0, scales=SCALES, centres_seed=3)
    present = sorted(set(train_y.tolist()))
    probe = LogisticRegressionProbe(backend="sklearn", tol=1e-10, max_iter=10_000)
    for C in (0.01, 1.0, 100.0):
        predictor, fit = probe.fit_at(train_x, train_y, num_classes, C)
        reference = make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-10, max_iter=10_000))
        reference.fit(train_x.double().numpy(), train_y.numpy())
        np.testing.assert_allclose(fit.weight.numpy(), reference[-1].coef_, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(fit.bias.numpy(), reference[-1].intercept_, rtol=1e-6, atol=1e-8)
        proba = predictor(query_x)
        np.testing.assert_allclose(
            proba[:, present].numpy(), reference.predict_proba(query_x.double().numpy()), atol=1e-6
        )
        absent = sorted(set(range(num_classes)) - set(present))
        assert torch.all(proba[:, absent] == 0)
        torch.testing.assert_close(proba.sum(dim=1), torch.ones(len(query_x)))


@pytest.mark.parametrize("counts, dim, spread", [
    ([40, 30, 35], 12, 6.0),  # overlapping classes
    ([40, 30, 35], 12, 2.5),  # separable: a large C leaves the model loosely pinned down
    ([40, 30], 12, 2.5),  # two classes: the binomial model
    ([1] * 10, 64, 1.0),  # one image per class
], ids=["overlapping", "separable", "binary", "1-shot"])
def test_logreg_torch_backend_agrees_with_sklearn_at_the_default_tol(counts, dim, spread, one_torch_thread):
    rng = np.random.default_rng(4)
    scales = np.linspace(0.1, 10, dim)
    train_x, train_y = clustered(rng, counts, dim, spread, scales, centres_seed=4)
    query_x, _ = clustered(rng, [20] * len(counts), dim, spread, scales, centres_seed=4)
    for C in (1e-3, 1.0, 1e3, 1e5):
        fits = {
            backend: LogisticRegressionProbe(backend=backend).fit_at(train_x, train_y, len(counts), C)
            for backend in ("sklearn", "torch")
        }
        assert all(fit.converged for _, fit in fits.values())
        assert fits["torch"][1].weight.shape == fits["sklearn"][1].weight.shape  # binomial: one row for 2 classes
        sklearn_proba, torch_proba = (predictor(query_x) for predictor, _ in fits.values())
        assert (sklearn_proba - torch_proba).abs().max() <= BACKEND_PROBABILITY_TOLERANCE, C
        assert torch.equal(sklearn_proba.argmax(dim=1), torch_proba.argmax(dim=1)), C


def test_logreg_backends_select_the_same_C(one_torch_thread):
    rng = np.random.default_rng(5)
    train_x, train_y = clustered(rng, [30, 30, 30], dim=10, spread=3.0, centres_seed=5)
    val_x, val_y = clustered(rng, [20, 20, 20], dim=10, spread=3.0, centres_seed=5)
    fits = {
        backend: LogisticRegressionProbe(log10_C_min=-4, log10_C_max=2, num_Cs=7, backend=backend).fit(
            train_x, train_y, val_x, val_y, 3
        )
        for backend in ("sklearn", "torch")
    }
    assert fits["sklearn"].params == fits["torch"].params
    assert fits["sklearn"].notes == ["fitted with the sklearn backend"]  # "auto" on CPU tensors
    for sk_row, torch_row in zip(fits["sklearn"].candidates, fits["torch"].candidates, strict=True):
        assert sk_row["C"] == torch_row["C"]
        assert sk_row["loss"] == pytest.approx(torch_row["loss"], abs=1e-4)


def test_logreg_selection_ties_go_to_the_smallest_C_and_loss_is_lower_is_better():
    # Separable classes: every C classifies validation perfectly (a tie on F1, won by the smallest C), while
    # the validation loss keeps falling as C grows.
    rng = np.random.default_rng(6)
    train_x, train_y = clustered(rng, [20, 20, 20], dim=4, spread=0.1, centres_seed=6)
    val_x, val_y = clustered(rng, [10, 10, 10], dim=4, spread=0.1, centres_seed=6)
    probe = LogisticRegressionProbe(Cs=[100.0, 1e-3, 1.0, 1e-2])
    by_f1 = probe.fit(train_x, train_y, val_x, val_y, 3)
    assert [row["C"] for row in by_f1.candidates] == [1e-3, 1e-2, 1.0, 100.0]
    assert all(row["f1_macro"] == 1.0 for row in by_f1.candidates)
    assert by_f1.params == {"C": 1e-3}
    by_loss = probe.fit(train_x, train_y, val_x, val_y, 3, select_on="loss")
    assert by_loss.chosen == select_by_rule(by_loss.candidates, "loss", maximise=False)
    assert by_loss.params == {"C": 100.0}


def test_logreg_default_grid_is_45_log_spaced_values():
    grid = LogisticRegressionProbe().grid
    assert len(grid) == 45 and grid[0] == pytest.approx(1e-6) and grid[-1] == pytest.approx(1e5)
    np.testing.assert_allclose(np.diff(np.log10(grid)), 11 / 44)


def test_a_fit_that_hits_max_iter_says_so():
    rng = np.random.default_rng(7)
    train_x, train_y = clustered(rng, [20, 20, 20], dim=8, spread=2.0)
    fit = LogisticRegressionProbe(Cs=[1.0], max_iter=2).fit(train_x, train_y, train_x, train_y, 3)
    assert "did not converge within max_iter=2 iterations" in fit.notes[-1] and "C = 1" in fit.notes[-1]


# --- few-shot training sets ----------------------------------------------------------------------------------
@pytest.mark.parametrize("probe", [KNNProbe(), LogisticRegressionProbe(Cs=[1e-2, 1.0, 100.0])], ids=["knn", "logreg"])
@pytest.mark.parametrize("counts", [[1, 1, 1, 1, 1], [1, 3, 5, 2, 1]], ids=["1-shot", "uneven"])
def test_probes_fit_few_shot_training_sets(probe, counts):
    rng = np.random.default_rng(8)
    train_x, train_y = clustered(rng, counts, dim=16, spread=0.2, centres_seed=8)
    val_x, val_y = clustered(rng, [4] * 5, dim=16, spread=0.2, centres_seed=8)
    fit = probe.fit(train_x, train_y, val_x, val_y, 5)
    proba = fit.predict_proba(val_x)
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(20))
    assert torch.equal(fit.predict(train_x), train_y)  # separated clusters: every training image is right
    if isinstance(probe, KNNProbe):  # 5 or 12 training images
        n = sum(counts)
        assert [row["k"] for row in fit.candidates] == ([n] if n < 10 else [n, 10])
        capped = "10, 20, 100, 200" if n < 10 else "20, 100, 200"
        assert fit.notes == [f"k capped at the {n} training images: k = {capped} ran as k = {n}"]
    json.dumps(fit.summary())


def test_predict_proba_takes_half_precision_features_and_checks_their_width():
    rng = np.random.default_rng(9)
    train_x, train_y = clustered(rng, [10, 10], dim=8)
    for probe in (KNNProbe(ks=[3]), LogisticRegressionProbe(Cs=[1.0])):
        fit = probe.fit(train_x, train_y, train_x, train_y, 2)
        proba = fit.predict_proba(train_x.bfloat16())
        assert proba.dtype == torch.float32 and proba.shape == (20, 2)
        with pytest.raises(VitclsError, match="width 7"):
            fit.predict_proba(train_x[:, :7])


# --- registry, configs, bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "probe").glob("*.yaml")))
def test_probe_yaml_instantiates_the_registered_probe(name):
    node = compose_config("train", [f"+probe={name}"]).probe
    probe = hydra.utils.instantiate(node)
    assert type(probe) is PROBES[name]
    settings = {k: v for k, v in OmegaConf.to_container(node).items() if k != "_target_"}
    assert probe.settings() == settings
    assert probe.spec() == {"name": name, "module": type(probe).__module__, **settings}
    rebuilt = build_probe(json.loads(json.dumps(probe.spec())))  # what a results file stores
    assert type(rebuilt) is type(probe) and rebuilt.settings() == settings


def test_build_probe_by_name_and_unknown_names():
    assert set(PROBES) >= {"knn", "logreg"}
    assert build_probe("knn").settings() == KNNProbe().settings()
    with pytest.raises(ConfigError, match="'svm' is not a registered probe.*knn"):
        build_probe({"name": "svm"})


@pytest.mark.parametrize("make, setting", [
    (lambda: KNNProbe(ks=[0, 10]), "probe.ks"),
    (lambda: KNNProbe(ks=[]), "probe.ks"),
    (lambda: KNNProbe(ks=[2.5]), "probe.ks"),
    (lambda: KNNProbe(temperature=0), "probe.temperature"),
    (lambda: KNNProbe(temperature=-0.07), "probe.temperature"),
    (lambda: KNNProbe(chunk_size=0), "probe.chunk_size"),
    (lambda: LogisticRegressionProbe(Cs=[]), "probe.Cs"),
    (lambda: LogisticRegressionProbe(Cs=[1.0, 0.0]), "probe.Cs"),
    (lambda: LogisticRegressionProbe(num_Cs=0), "probe.num_Cs"),
    (lambda: LogisticRegressionProbe(log10_C_min=3, log10_C_max=-3), "probe.log10_C_min"),
    (lambda: LogisticRegressionProbe(backend="cuml"), "probe.backend"),
    (lambda: LogisticRegressionProbe(max_iter=0), "probe.max_iter"),
    (lambda: LogisticRegressionProbe(tol=0), "probe.tol"),
    (lambda: LogisticRegressionProbe(sklearn_threads=0), "probe.sklearn_threads"),
])
def test_bad_settings_name_the_setting(make, setting):
    with pytest.raises(ConfigError, match=setting):
        make()


def test_bad_input_is_a_clear_error():
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    probe = KNNProbe(ks=[2])
    with pytest.raises(ConfigError, match="select_on='auc'"):
        probe.fit(x, y, x, y, 3, select_on="auc")
    with pytest.raises(VitclsError, match=r"train labels must lie in \[0, 2\)"):
        probe.fit(x, y, x, y, 2)
    with pytest.raises(VitclsError, match="val features"):
        probe.fit(x, y, x[:, :3], y, 3)
    with pytest.raises(VitclsError, match="NaN"):
        probe.fit(x, y, torch.full((6, 4), math.nan), y, 3)
    with pytest.raises(VitclsError, match="only class"):
        LogisticRegressionProbe(Cs=[1.0]).fit(x, torch.zeros(6, dtype=torch.long), x, y, 3)
