"""vitcls: head-based image classification with timm Vision Transformers, Lightning and Hydra."""

__version__ = "0.1.0"

from vitcls.precision import register_resolvers

register_resolvers()
