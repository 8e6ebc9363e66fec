"""Command-line plumbing shared by the eval scripts: launch, checkpoint choice, loaders, progress, reports."""

from __future__ import annotations

import argparse
import logging
import math
import os
from typing import Iterable, Optional, Sequence

import torch
from tqdm import tqdm

from internlm.checkpoint.atomic import atomic_write_json as write_json  # noqa: F401  (the eval scripts' writer)
from internlm.checkpoint.layout import resolve_checkpoint
from internlm.checkpoint.weights import load_model
from internlm.config import ConfigError, TrainConfig, load_config, parse_override
from internlm.initialize.arguments import add_launch_args  # noqa: F401  (the eval scripts' launch options)
from internlm.initialize.launch import DistContext, init_distributed
from internlm.model.attention import BACKENDS
from internlm.monitor.logging_setup import setup_logging

logger = logging.getLogger("internlm.eval")


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="the run's config (data.egoexo_* keys, ckpt.save_ckpt_folder)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --opt data.egoexo_pose_folder=elsewhere (repeatable)")


def load_eval_config(args: argparse.Namespace) -> TrainConfig:
    try:
        return load_config(args.config, [parse_override(o) for o in args.opt])
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None


def add_checkpoint_args(p: argparse.ArgumentParser, default_which: str = "model") -> None:
    p.add_argument("--ckpt_folder", default=None,
                   help="a checkpoint step folder, or a run folder (-> its newest complete step); default: the "
                        "newest complete checkpoint in the config's ckpt.save_ckpt_folder")
    p.add_argument("--which", choices=("model", "teacher"), default=default_which,
                   help=f"student ('model') or EMA teacher weights (default: {default_which})")
    p.add_argument("--attn_backend", choices=BACKENDS, default="sdpa",
                   help="attention kernel (default sdpa: runs everywhere, same numbers as the others)")


def start(args: argparse.Namespace) -> DistContext:
    ctx = init_distributed(args.launcher, args.port, device=args.device)
    setup_logging(ctx.rank)
    if ctx.is_distributed:
        logger.info("%d ranks (%s launcher), device %s", ctx.world_size, ctx.env.launcher, ctx.device)
    return ctx


def eval_checkpoint(cfg: TrainConfig, ckpt_folder: Optional[str], config_path: str) -> str:
    """The step folder to evaluate: --ckpt_folder, else the newest complete one of ckpt.save_ckpt_folder."""
    path = ckpt_folder or cfg.ckpt.save_ckpt_folder
    if not path:
        raise SystemExit(f"{config_path}: ckpt.save_ckpt_folder is not set; pass --ckpt_folder")
    try:
        return resolve_checkpoint(path)
    except FileNotFoundError as exc:
        where = "--ckpt_folder" if ckpt_folder else f"ckpt.save_ckpt_folder of {config_path}"
        raise SystemExit(f"{where}: {exc}") from None


def start_checkpoint_eval(args: argparse.Namespace):
    """Launch, read the config and load the checkpoint's weights: (ctx, cfg, model, step folder)."""
    ctx = start(args)
    cfg = load_eval_config(args)
    folder = eval_checkpoint(cfg, args.ckpt_folder, args.config)
    model, _, folder = load_model(folder, args.which, ctx.device, attn_backend=args.attn_backend)
    return ctx, cfg, model, folder


def default_output_dir(kind: str, cfg: TrainConfig, step=None) -> str:
    """Where an eval (or tool) writes when no output is given: outputs/{kind}/{JOB_NAME}[_step{step}]."""
    name = cfg.JOB_NAME if step is None else f"{cfg.JOB_NAME}_step{step}"
    return os.path.join("outputs", kind, name)


def progress(iterable: Iterable, ctx: DistContext, total: Optional[int], desc: str):
    """tqdm on rank 0 only."""
    return tqdm(iterable, total=total, desc=desc, disable=not ctx.is_main, dynamic_ncols=True)


def num_batches(num_items: int, batch_size: int, world_size: int, eval_iters: Optional[int]) -> int:
    """Batches this run takes per rank (the shard of rank 0 is the largest)."""
    n = math.ceil(math.ceil(num_items / world_size) / batch_size)
    return n if eval_iters is None or eval_iters <= 0 else min(n, eval_iters)


def format_table(title: str, header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A plain fixed-width table (floats with 2 decimals)."""
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    line = lambda vals: "  ".join(str(v).rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    rule = "-" * len(line(header))
    return "\n".join([title, rule, line(header), rule, *(line(r) for r in cells), rule])


def move(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
