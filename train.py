"""Train EgoAgent: stage 1 (DINO representation pretraining) or stage 2 (joint representation, prediction and
action training), as the config's ``loss.name`` says.

    python train.py --config configs/demo/stage1_dino_tiny.py                      # one local process
    torchrun --nproc_per_node=8 train.py --config CONFIG --launcher torch           # one node
    srun python train.py --config CONFIG --launcher slurm --port 29500             # a slurm job step

Runs resume from the newest complete checkpoint in ckpt.save_ckpt_folder (ckpt.auto_resume); one run at a time
holds that folder (its RUN_LOCK file). SIGTERM / SIGUSR1 (pre-emption) save and exit 0 (under slurm the job is
requeued); Ctrl-C saves and exits 130, a second Ctrl-C stops at once. Any failure ends every process of the run
within seconds with one message naming the cause (exit status 1).
"""

from __future__ import annotations

import argparse
import logging
import os

from internlm.config import ConfigError, load_config, parse_override
from internlm.initialize.arguments import ScriptArgumentParser, add_launch_args
from internlm.initialize.crash import EXIT_INTERRUPTED, exit_on_failure
from internlm.initialize.launch import LaunchError, RendezvousError, destroy_distributed, init_distributed
from internlm.monitor.logging_setup import setup_logging
from internlm.train.device_config import follow_device


def parse_args(argv=None) -> argparse.Namespace:
    parser = ScriptArgumentParser(description=__doc__)
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
    notices: list[str] = []  # what followed the command line's overrides and the device (config/follow.py)
    try:
        overrides = [parse_override(o) for o in args.opt]
        if args.seed is not None:
            overrides.append(("data.seed", args.seed))
        cfg = load_config(args.config, overrides, notices)
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None
    try:
        ctx = init_distributed(args.launcher, args.port, timeout_s=cfg.parallel.timeout_s, device=args.device,
                               rendezvous_timeout_s=args.rendezvous_timeout)
    except (LaunchError, RendezvousError) as exc:
        raise SystemExit(f"launch error: {exc}") from None
    cfg = follow_device(cfg, ctx.device, dict(overrides), notices)

    from internlm.checkpoint.storage import DiskFullError, UnwritableFolderError
    from internlm.checkpoint.train_state import CorruptCheckpointError
    from internlm.initialize.preemption import StopRequest
    from internlm.model.attention import AttentionBackendError
    from internlm.train.config_change import ConfigChangeError
    from internlm.train.run_folder import CLAIM_ERRORS, claim_run_folder
    from internlm.train.trainer import RunawayTrainingError, Trainer

    self_explaining = (AttentionBackendError, RunawayTrainingError, ConfigChangeError, CorruptCheckpointError,
                       DiskFullError, UnwritableFolderError) + CLAIM_ERRORS
    trainer = lock = None

    def at_step() -> str:
        return f" at step {trainer.progress.step}" if trainer is not None else " before training"

    def release_lock() -> None:
        if lock is not None:
            lock.release()

    with exit_on_failure("train.py", ctx.rank, self_explaining, at_step, cleanup=release_lock):
        lock = claim_run_folder(cfg, ctx)  # before anything is written into the save folder
        setup_logging(ctx.rank, os.path.join(cfg.ckpt.save_ckpt_folder, "logs", f"rank{ctx.rank}.log"))
        log = logging.getLogger(__name__)
        if lock is not None and lock.notice:
            log.warning(lock.notice)
        log.info("config %s: stage %d, %d process(es) on %s", args.config, cfg.stage, ctx.world_size, ctx.device)
        for notice in notices:
            log.info("config: %s", notice)
        trainer = Trainer(cfg, ctx)
        trainer.fit(max_iterations=args.stop_after)
        interrupted = trainer.stop_reason is StopRequest.INTERRUPT
        release_lock()
        destroy_distributed()
    return EXIT_INTERRUPTED if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
