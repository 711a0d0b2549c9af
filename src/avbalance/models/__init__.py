from . import encoders, fusion  # noqa: F401  (register encoders and fusion heads)
from .model import AVClassifier, build_model  # noqa: F401
