from vitcls.models.backbone import create_backbone
from vitcls.models.heads import HEADS, Head
from vitcls.models.module import ImageClassifier

__all__ = ["HEADS", "Head", "ImageClassifier", "create_backbone"]
