from . import prepared, toy  # noqa: F401  (register the loaders: prepared arrays, built-in toy)
from .base import Batch, DataModule, epoch_generator  # noqa: F401


def build_data(cfg, device, **shard):
    """The run's dataset from its config: the loader registered as `dataset.loader`, with the run's
    seed, batch sizes, workers and preloading (`shard`: rank/world under several processes)."""
    from ..registry import DATASETS
    return DATASETS.get(cfg.dataset.loader)(cfg.dataset, seed=cfg.seed, batch_size=cfg.batch_size,
                                            eval_batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers,
                                            preload=str(cfg.speed.preload), device=device, **shard)
