"""Print the parameter counts of a config: backbone + projectors (the paper's model size) and the heads.

    python tools/count_params.py --config configs/joint_train/lr6e-04_tmp004_300m.py

Nothing is allocated: the model is built on the meta device.
"""

import argparse

from internlm.config import load_config
from internlm.model.param_count import count_parameters, human


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a python config file")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    c = count_parameters(cfg)
    print(f"config:                  {args.config} (stage {cfg.stage})")
    print(f"backbone + projectors:   {human(c.model)}  ({c.model:,})")
    print(f"  backbone:              {c.backbone:,}")
    print(f"  projectors + queries:  {c.projectors:,}")
    print(f"heads (not counted):     {human(c.heads)}  ({c.heads:,})")


if __name__ == "__main__":
    main()
