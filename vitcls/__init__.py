"""vitcls: head-based image classification with timm Vision Transformers, Lightning and Hydra."""

__version__ = "0.2.0"
__all__ = ["Predictor"]


def __getattr__(name: str):
    # Lazy: `import vitcls` costs nothing, and `from vitcls import Predictor` loads only the inference stack.
    if name == "Predictor":
        from vitcls.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'vitcls' has no attribute {name!r}")
