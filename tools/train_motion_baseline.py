"""Train the pose-only siMLPe baseline of the motion evaluation (Guo et al., WACV 2023; internlm/model/simlpe.py) on
the training clips of a stage-2 config, with the config's clip layout and data.pose_frame; or, with --oracle, one of
its privileged oracles (internlm/eval/motion_oracles.py). siMLPe sees no image; eval_3dposes.py --motion_baseline
scores it with EgoAgent's protocol (the same 5 input poses, 15 predicted, MPJPE/MPJVE @30 and @10 fps), and
--oracle PATH scores an oracle as a ceiling row.

    python tools/train_motion_baseline.py --config configs/joint_train/lr6e-04_tmp004_300m.py [--out PATH]
    python tools/train_motion_baseline.py --config configs/demo/stage2_joint_tiny.py --oracle scene \\
        --scene_truth data/synthetic --out runs/demo/motion_baseline/scene_oracle.pt
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
from internlm.eval.motion import CLIP_FRAMES, HORIZON, INPUT_FRAMES
from internlm.eval.motion_oracles import ORACLES, batch_condition, condition_dim
from internlm.initialize.arguments import ScriptArgumentParser
from internlm.model.simlpe import MIXING, SiMLPeConfig
from internlm.monitor.logging_setup import setup_logging
from internlm.train.motion_baseline import train_simlpe


def parse_args(argv=None) -> argparse.Namespace:
    p = ScriptArgumentParser(description=__doc__)
    p.add_argument("--config", required=True, help="a stage-2 config (data.egoexo_* keys, data.pose_frame)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--out", default=None, help="default: outputs/motion_baseline/{JOB_NAME}/{simlpe|KIND_oracle}.pt")
    p.add_argument("--oracle", choices=ORACLES, default=None,
                   help="train a privileged oracle instead of the pose-only baseline (internlm/eval/motion_oracles.py)")
    p.add_argument("--scene_truth", default=None,
                   help="--oracle scene: the synthetic world folder holding privileged_scene_truth/")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps (batch --batch_size clips)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--blocks", type=int, default=SiMLPeConfig.blocks, help="mixing blocks (siMLPe: 48)")
    p.add_argument("--mixing", choices=MIXING, default=SiMLPeConfig.mixing,
                   help="temporal: every block mixes the DCT coefficients (siMLPe's published model); alternating: "
                        "temporal and spatial blocks in turn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads; a model this small trains fastest on one (2 shared cores: 30 vs 1-8 steps/s)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(0)
    torch.set_num_threads(args.threads)
    try:
        cfg = load_config(args.config, [parse_override(o) for o in args.opt])
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None
    if cfg.data.clip_frames != CLIP_FRAMES or cfg.data.clip_steps != 4:
        raise SystemExit(f"{args.config}: the motion protocol needs clips of {CLIP_FRAMES} frames in 4 steps")
    t0 = time.time()
    dataset = build_clip_dataset(cfg.data, cfg.data.egoexo_train_split, train=False)
    xyz, visible = zip(*(dataset.clip_xyz(i) for i in range(len(dataset))))
    xyz, visible = torch.from_numpy(np.stack(xyz)), torch.from_numpy(np.stack(visible) > 0.5)
    print(f"{len(dataset)} training clips ({cfg.data.pose_frame} frame) loaded in {time.time() - t0:.1f}s")
    step = CLIP_FRAMES // cfg.data.clip_steps
    condition = None
    if args.oracle:
        truth = None
        if args.oracle == "scene":
            from internlm.data.synthetic.privileged import SceneTruth

            if not args.scene_truth:
                raise SystemExit("--oracle scene needs --scene_truth WORLD_DIR (a synthetic world's folder)")
            truth = SceneTruth(args.scene_truth)
        try:
            condition = batch_condition(args.oracle, dataset, range(len(dataset)), HORIZON // step, INPUT_FRAMES,
                                        step, truth)
        except (ValueError, FileNotFoundError, KeyError) as exc:
            raise SystemExit(f"--oracle {args.oracle}: {exc}") from None
    model_cfg = SiMLPeConfig(joints=xyz.shape[2], frames=step, blocks=args.blocks, mixing=args.mixing,
                             condition_dim=condition_dim(args.oracle) if args.oracle else 0,
                             condition=args.oracle or "")
    model, losses = train_simlpe(xyz, visible, INPUT_FRAMES, args.steps, args.batch_size, args.lr, seed=args.seed,
                                 cfg=model_cfg, condition=condition)
    name = f"{args.oracle}_oracle" if args.oracle else "simlpe"
    out = args.out or os.path.join(default_output_dir("motion_baseline", cfg), f"{name}.pt")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    record = {"pose_frame": cfg.data.pose_frame, "split": cfg.data.egoexo_train_split, "num_clips": len(dataset),
              "oracle": args.oracle, "scene_truth": args.scene_truth and os.path.abspath(args.scene_truth),
              "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
              "config": os.path.abspath(args.config), "first_loss": losses[0],
              "final_loss": float(np.mean(losses[-50:])), "seconds": round(time.time() - t0, 1)}
    atomic_torch_save({**model.export(), "record": record}, out)
    print(json.dumps(record, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
