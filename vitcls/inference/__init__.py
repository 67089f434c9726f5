"""Trained models outside training: export directories, ONNX, the Predictor. Imports no training stack."""

from vitcls.timm_import import import_timm_without_wandb

import_timm_without_wandb()
