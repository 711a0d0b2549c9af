from . import ogm  # noqa: F401  (registers none, ogm, ogm_ge)
from .base import Method, modality_scores  # noqa: F401
