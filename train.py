"""avbalance entrypoint.

    python train.py                                            # toy data, CPU, ~1 minute
    python train.py dataset=cremad fusion=film modulation=ogm_ge
    python train.py -m fusion=concat,sum,film,gated modulation=none,ogm_ge seed=0,1,2
    python train.py resume=true hydra.run.dir=<run dir>        # continue an interrupted run
"""
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from avbalance.config import check_group_overrides
from avbalance.errors import UserError
from avbalance.trainer import format_summary, train

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@hydra.main(version_base=None, config_path="configs", config_name="train")
def main(cfg) -> float:
    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    try:
        summary = train(cfg, Path(hc.runtime.output_dir), choices)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_summary(summary))
    print(f"run directory: {hc.runtime.output_dir}")
    return summary["best"]["val/acc"]  # what a Hydra sweeper optimises


if __name__ == "__main__":
    try:
        check_group_overrides(sys.argv[1:], CONFIG_DIR)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    main()
