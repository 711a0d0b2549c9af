"""avbalance entrypoint.

    python train.py                                            # toy data, CPU, ~10 s
    python train.py dataset=cremad fusion=film modulation=ogm_ge
    python train.py -m fusion=concat,sum,film,gated modulation=none,ogm_ge seed=0,1,2
    python train.py resume=true hydra.run.dir=<run dir>        # continue a run from its own config
    python train.py --help                                     # groups, options, the config
"""
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from avbalance import cli, schema

schema.register()  # the typed schemas must be in Hydra's ConfigStore before it composes


@hydra.main(version_base=None, config_path="configs", config_name="train")
def main(cfg):
    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith(("hydra", "schema"))}
    return cli.run(cfg, Path(hc.runtime.output_dir), choices, multirun=hc.mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:], main))
