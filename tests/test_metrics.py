"""The logged metrics equal an independent computation (scikit-learn) on the same predictions."""

import lightning as L
import numpy as np
import pytest
import torch
from conftest import tiny_module
from sklearn import metrics as skm
from torch.utils.data import DataLoader, TensorDataset

from vitcls.metrics import METRICS, classification_metrics, metric_names


def sklearn_metrics(y_true, y_pred) -> dict[str, float]:
    values = {"acc": skm.accuracy_score(y_true, y_pred)}
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        values.update({f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f})
    return values


def test_collection_matches_sklearn_with_absent_and_never_predicted_classes():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 300)   # class 5 never occurs
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 6, 300))
    y_pred[y_pred == 3] = 4            # class 3 never predicted
    collection = classification_metrics(num_classes=6)
    for chunk in np.array_split(np.arange(300), 7):
        collection.update(torch.as_tensor(y_pred[chunk]), torch.as_tensor(y_true[chunk]))
    computed = {k: float(v) for k, v in collection.compute().items()}
    assert set(computed) == set(METRICS) == set(metric_names()) - {"loss"}
    for name, expected in sklearn_metrics(y_true, y_pred).items():
        assert computed[name] == pytest.approx(expected, abs=1e-6), name


def test_module_test_loop_logs_exact_metrics_and_confusion_matrix():
    torch.manual_seed(0)
    module = tiny_module("linear", class_names=["a", "b", "c", "d"])
    images = torch.randn(53, 3, 32, 32)  # 53 = uneven last batch
    targets = torch.randint(0, 4, (53,))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.test(module, DataLoader(TensorDataset(images, targets), batch_size=8), verbose=False)[0]

    predicted = module.head_predictions("test", 0).argmax(1).numpy()
    with torch.no_grad():
        assert np.array_equal(predicted, module.eval()(images).argmax(1).numpy())
    for name, expected in sklearn_metrics(targets.numpy(), predicted).items():
        assert logged[f"test/{name}"] == pytest.approx(expected, abs=1e-6), name
        assert module.results["test"][0][name] == pytest.approx(expected, abs=1e-6), name
    expected_cm = skm.confusion_matrix(targets.numpy(), predicted, labels=range(4))
    assert module.confusion_matrices["test"].shape == (1, 4, 4)
    assert np.array_equal(module.confusion_matrices["test"][0].numpy(), expected_cm)
    assert int(module.confusion_matrices["test"].sum()) == 53
