"""Write a checkpoint of an untrained EgoAgent (the initialisation of a config and seed): the "no learning"
reference the demo report puts next to the trained models.

    python tools/make_untrained_checkpoint.py --config configs/demo/stage2_joint_tiny.py --seed 0 --out DIR
"""

import argparse

from internlm.checkpoint import save_weights_only
from internlm.config import load_config
from internlm.model import EgoAgent
from internlm.train.trainer import seed_everything


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run folder; the checkpoint is written as step 0")
    args = p.parse_args(argv)
    cfg = load_config(args.config, [("data.seed", args.seed)])
    seed_everything(args.seed)  # the same initialisation train.py starts from
    model = EgoAgent(cfg.model, joint=cfg.loss.is_joint)
    folder = save_weights_only(args.out, model, model, cfg, step=0)
    print(f"untrained weights of {args.config} (seed {args.seed}) written to {folder}")


if __name__ == "__main__":
    main()
