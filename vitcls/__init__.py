"""vitcls: head-based image classification with timm Vision Transformers, Lightning and Hydra."""

from vitcls.precision import register_resolvers

__version__ = "0.1.0"
__all__ = ["Predictor"]

register_resolvers()


def __getattr__(name: str):
    # Lazy, so that `import vitcls` stays light for the training entry points.
    if name == "Predictor":
        from vitcls.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'vitcls' has no attribute {name!r}")
