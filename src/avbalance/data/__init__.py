from . import prepared, toy  # noqa: F401  (register the loaders: prepared arrays, built-in toy)
from .base import Batch, DataModule, epoch_generator  # noqa: F401
