"""Train the pose-only motion baseline (siMLPe style: DCT over time, MLPs across joints and time, residual to the
last observed pose; internlm/model/pose_mlp.py) on the training clips of a stage-2 config, with the config's
clip layout and data.pose_frame. It sees no image; eval_3dposes.py --motion_baseline scores it with EgoAgent's
protocol (the same 5 input poses, 15 predicted, MPJPE/MPJVE @30 and @10 fps).

    python tools/train_motion_baseline.py --config configs/joint_train/lr6e-04_tmp004_300m.py [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from internlm.checkpoint.atomic import atomic_torch_save
from internlm.config import ConfigError, load_config, parse_override
from internlm.data.build import build_clip_dataset
from internlm.eval.cli import default_output_dir
from internlm.monitor.logging_setup import setup_logging
from internlm.train.motion_baseline import train_pose_mlp

INPUT_FRAMES = 5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a stage-2 config (data.egoexo_* keys, data.pose_frame)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--out", default=None, help="default: outputs/motion_baseline/{JOB_NAME}/pose_mlp.pt")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps (batch --batch_size clips)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(0)
    try:
        cfg = load_config(args.config, [parse_override(o) for o in args.opt])
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None
    if cfg.data.clip_frames != 20 or cfg.data.clip_steps != 4:
        raise SystemExit(f"{args.config}: the motion protocol needs clips of 20 frames in 4 steps")
    t0 = time.time()
    dataset = build_clip_dataset(cfg.data, cfg.data.egoexo_train_split, train=False)
    xyz, visible = zip(*(dataset.clip_xyz(i) for i in range(len(dataset))))
    xyz, visible = torch.from_numpy(np.stack(xyz)), torch.from_numpy(np.stack(visible) > 0.5)
    print(f"{len(dataset)} training clips ({cfg.data.pose_frame} frame) loaded in {time.time() - t0:.1f}s")
    model, losses = train_pose_mlp(xyz, visible, INPUT_FRAMES, args.steps, args.batch_size, args.lr, seed=args.seed)
    out = args.out or os.path.join(default_output_dir("motion_baseline", cfg), "pose_mlp.pt")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    record = {"pose_frame": cfg.data.pose_frame, "split": cfg.data.egoexo_train_split, "num_clips": len(dataset),
              "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
              "config": os.path.abspath(args.config), "first_loss": losses[0],
              "final_loss": float(np.mean(losses[-50:])), "seconds": round(time.time() - t0, 1)}
    atomic_torch_save({**model.export(), "record": record}, out)
    print(json.dumps(record, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
