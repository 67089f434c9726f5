"""A logger and an adapter defined outside vitcls, as a user adds them: one class each here, and one YAML each
(tests/test_extension_points.py writes them into a config directory on Hydra's search path)."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger
from torch import Tensor, nn

from vitcls.adapters import Adapter
from vitcls.loggers import ResultSink


class RecordingLogger(Logger, ResultSink):
    """Writes what it receives to a JSON file: Lightning's metrics and hyperparameters, vitcls's config and results."""

    sink_name = "recording"

    def __init__(self, path: str):
        super().__init__()
        self.path = Path(path)
        self.record: dict[str, Any] = {"metrics": [], "hyperparameters": {}, "config": None, "results": None}

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.record["metrics"].append({"step": step, **{k: float(v) for k, v in metrics.items()}})
        self._write()

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.record["hyperparameters"].update({k: str(v) for k, v in dict(params).items()})

    def log_run_config(self, config: dict[str, Any], facts: dict[str, Any], repeated_by: set[str]) -> None:
        self.record["config"] = {"seed": config["seed"], "head": config["head"]["_target_"], **facts}

    def log_results(self, results) -> None:
        self.record["results"] = {
            "summary": results.summary,
            "class_names": results.class_names,
            "test_samples": [sample.path for sample in results.test_samples],
            "selected": results.selected_head.name,
            "heads": [{"name": h.name, "val": h.val, "test": h.test,
                       "test_probabilities": h.test_probabilities.tolist(),
                       "test_confusion": h.test_confusion.tolist()} for h in results.heads],
            "figures": {name: str(path) for name, path in results.figures.items()},
            "table": results.table,
        }
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.record, default=str))


class ScaleMe(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))


class ChannelScale(Adapter):
    """A learned scale of every channel of the backbone's final tokens (a toy side-tuning), kept as a part of the
    network in an export."""

    name = "channel_scale"

    def __init__(self, init: float = 1.0):
        super().__init__(init=init)

    def attach(self, backbone: nn.Module) -> nn.Module:
        module = ScaleMe(backbone.num_features)
        with torch.no_grad():
            module.gamma.fill_(self.settings["init"])
        return module

    def forward_features(self, backbone: nn.Module, module: nn.Module | None, images: Tensor,
                         take: Collection[int] = ()) -> tuple[Tensor, list[Tensor]]:
        if not take:
            return backbone.forward_features(images) * module.gamma, []
        final, intermediates = backbone.forward_intermediates(
            images, indices=list(take), norm=True, output_fmt="NLC", return_prefix_tokens=True)
        return final * module.gamma, [torch.cat([prefix, x], dim=1) * module.gamma for x, prefix in intermediates]
