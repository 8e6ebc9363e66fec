"""Train EgoAgent: stage 1 (DINO representation pretraining) or stage 2 (joint representation, prediction and
action training), as the config's ``loss.name`` says.

    python train.py --config configs/demo/stage1_dino_tiny.py                      # one local process
    torchrun --nproc_per_node=8 train.py --config CONFIG --launcher torch           # one node
    srun python train.py --config CONFIG --launcher slurm --port 29500             # a slurm job step

Runs resume from the newest complete checkpoint in ckpt.save_ckpt_folder (ckpt.auto_resume).
"""

from __future__ import annotations

import argparse
import logging
import os

from internlm.config import ConfigError, load_config, parse_override
from internlm.initialize.arguments import add_launch_args
from internlm.initialize.launch import LaunchError, RendezvousError, destroy_distributed, init_distributed
from internlm.monitor.logging_setup import setup_logging


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="python config file")
    add_launch_args(parser)
    parser.add_argument("--seed", type=int, default=None, help="overrides data.seed (weights init, data order)")
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --opt data.total_steps=50 (repeatable)")
    parser.add_argument("--stop_after", type=int, default=None, metavar="N",
                        help="stop this process after N iterations (a time-boxed job; the next launch resumes)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        overrides = [parse_override(o) for o in args.opt]
        if args.seed is not None:
            overrides.append(("data.seed", args.seed))
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None
    try:
        ctx = init_distributed(args.launcher, args.port, timeout_s=cfg.parallel.timeout_s, device=args.device,
                               rendezvous_timeout_s=args.rendezvous_timeout)
    except (LaunchError, RendezvousError) as exc:
        raise SystemExit(f"launch error: {exc}") from None
    setup_logging(ctx.rank, os.path.join(cfg.ckpt.save_ckpt_folder, "logs", f"rank{ctx.rank}.log"))
    logging.getLogger(__name__).info("config %s: stage %d, %d process(es) on %s", args.config, cfg.stage,
                                     ctx.world_size, ctx.device)
    from internlm.model.attention import AttentionBackendError
    from internlm.train.trainer import RunawayTrainingError, Trainer

    try:
        Trainer(cfg, ctx).fit(max_iterations=args.stop_after)
    except (AttentionBackendError, RunawayTrainingError) as exc:
        raise SystemExit(str(exc)) from None
    finally:
        destroy_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
