"""3D human motion prediction on the Ego-Exo4D val clips (the paper's action evaluation).

Protocol: a clip is 20 pose frames at 30 fps (indices 0..19) in T = 4 steps of 5, with the image of each step
(its first frame). Inputs: the 4 step frames and the true poses of frames 0..4 (step 0). The model predicts the
remaining 15 poses autoregressively: the poses of step 1 from frames 0..1 and the poses of step 0; that
prediction (x, y, z; visibility set to 1) is fed back as the action token of step 1; and so on to step 3.
MPJPE = mean L2 error over the joints visible in the target (cm). MPJVE = mean L2 error of frame-difference
velocities (cm/s); the true last input pose p_4 starts the velocity of both truth and prediction; a velocity
counts only when the joint is visible at both of its ends. "@30fps": all 15 target frames 5..19,
v_i = (p_i - p_{i-1}) * 30. "@10fps": every 3rd frame, 7, 10, 13, 16, 19, v_i = (p_i - p_{i-3}) * 10.
Errors per horizon (each of the 15 frames). Baselines on the same clips: zero-velocity (every future frame =
the last observed pose; per joint, its last visible observation among frames 0..4) and constant-velocity (each
joint's last observed velocity extrapolated: from its last two visible input frames a < b,
v = (p_b - p_a) / (b - a), p_i = p_b + (i - b) v; a joint seen once stays put, a joint never seen takes the
mean of the seen joints). --motion_baseline adds the learned pose-only baseline (siMLPe style,
tools/train_motion_baseline.py: the same 5 input poses, no image) as a row.

  python -u eval_3dposes.py --config ${CONFIG} --launcher ${LAUNCHER} --port ${PORT} --eval_iters ${eval_iters}
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import sys
import time

import torch

from internlm.checkpoint.layout import read_meta
from internlm.data.build import build_eval_clip_dataset, build_eval_loader
from internlm.eval.cli import (
    add_checkpoint_args,
    add_config_args,
    add_launch_args,
    default_output_dir,
    format_table,
    move,
    num_batches,
    progress,
    start_checkpoint_eval,
    write_json,
)
from internlm.eval.distributed import gather_rows, sum_over_ranks
from internlm.eval.motion import (
    INPUT_FRAMES,
    MotionErrorSums,
    constant_velocity,
    poses_from_blocks,
    zero_velocity,
)
from internlm.eval.plots import RolloutExample, plot_skeleton_rollouts
from internlm.eval.rollout import autoregressive_rollout
from internlm.initialize.launch import destroy_distributed
from internlm.model.pose_mlp import PoseMLP

logger = logging.getLogger("eval_3dposes")
BASELINES = ("zero_velocity", "constant_velocity")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    add_launch_args(p)
    p.add_argument("--eval_iters", type=int, default=None, help="at most this many batches per rank (default: all)")
    add_checkpoint_args(p, default_which="model")
    p.add_argument("--split", default=None, help="pose split (default: the config's data.egoexo_valid_split)")
    p.add_argument("--batch_size", type=int, default=16, help="clips per batch per rank")
    p.add_argument("--num_workers", type=int, default=None, help="loader workers (default: data.num_workers)")
    p.add_argument("--num_examples", type=int, default=3, help="clips drawn in the PNG")
    p.add_argument("--motion_baseline", default=None,
                   help="a pose-only baseline trained by tools/train_motion_baseline.py (scored as 'pose_mlp')")
    p.add_argument("--output_dir", default=None, help="default: outputs/3dposes/{JOB_NAME}_step{step}")
    return p.parse_args(argv)


@torch.no_grad()
def evaluate(model, pose_mlp, loader, ctx, total: int, num_examples: int) -> tuple[dict, list, int]:
    """-> error sums per predictor, a few examples, number of clips (this rank)."""
    sums, per_clip = {}, {}
    examples, num_clips = [], 0
    for batch in progress(itertools.islice(loader, total), ctx, total, "motion"):
        batch = move(batch, ctx.device)
        frames, blocks = batch["frames"], batch["poses"]  # (B, T, 3, P, P), (B, T, 4, 5, 17)
        xyz, visible = poses_from_blocks(blocks)  # (B, 20, 17, 3), (B, 20, 17)
        predictions = {
            "model": autoregressive_rollout(model, frames, blocks[:, 0]),  # (B, 15, 17, 3)
            "zero_velocity": zero_velocity(xyz[:, :INPUT_FRAMES], visible[:, :INPUT_FRAMES]),
            "constant_velocity": constant_velocity(xyz[:, :INPUT_FRAMES], visible[:, :INPUT_FRAMES]),
        }
        if pose_mlp is not None:
            predictions["pose_mlp"] = pose_mlp(xyz[:, :INPUT_FRAMES].float(), visible[:, :INPUT_FRAMES])
        for name, pred in predictions.items():
            per_clip.setdefault(name, []).append(sums.setdefault(name, MotionErrorSums()).add(pred, xyz, visible))
        num_clips += frames.shape[0]
        if len(examples) < num_examples:  # the first clip of each batch: examples spread over the split
            full = {name: torch.cat([xyz[0, :INPUT_FRAMES], pred[0].to(xyz)]).cpu().numpy()
                    for name, pred in predictions.items()}
            examples.append(RolloutExample(f"{batch['take_uid'][0][:8]} f{int(batch['frame_ids'][0, 0])}",
                                           xyz[0].cpu().numpy(), visible[0].cpu().numpy(), full))
    return sums, {k: torch.cat(v) for k, v in per_clip.items()}, examples, num_clips


def paired_comparisons(per_clip: dict) -> dict:
    """EgoAgent minus each other predictor, over the same clips: the difference of the per-clip MPJPE@30fps means
    and its standard error (of the mean of the paired differences)."""
    out = {}
    for other, errors in per_clip.items():
        if other == "model":
            continue
        d = per_clip["model"] - errors
        se = float(d.std(unbiased=True)) / math.sqrt(d.numel()) if d.numel() > 1 else float("nan")
        out[f"model_minus_{other}"] = {"mpjpe_30fps_diff": float(d.mean()), "mpjpe_30fps_diff_se": se,
                                       "num_clips": d.numel()}
    return out


def report(args, cfg, folder: str, results: dict, compare: dict, clips: int, num_clips_in_split: int, split: str,
           examples: list, ctx, seconds: float) -> None:
    step = read_meta(folder).get("step")
    out_dir = args.output_dir or default_output_dir("3dposes", cfg, step)
    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, "rollouts.png")
    plot_skeleton_rollouts(png, examples)
    print(format_table(f"3D motion prediction, {args.which} weights, step {step} (cm, cm/s)",
                       ["predictor", "MPJPE@30fps", "MPJVE@30fps", "MPJPE@10fps", "MPJVE@10fps"],
                       [[n, r["mpjpe_30fps"], r["mpjve_30fps"], r["mpjpe_10fps"], r["mpjve_10fps"]]
                        for n, r in results.items()]))
    print(format_table("EgoAgent minus each baseline, per clip (cm; negative = EgoAgent better)",
                       ["comparison", "MPJPE@30fps", "+-"],
                       [[k, c["mpjpe_30fps_diff"], c["mpjpe_30fps_diff_se"]] for k, c in compare.items()]))
    horizons = results["model"]["per_horizon"]
    print(format_table("MPJPE per horizon (cm)", ["frame", "ms", *results],
                       [[f, ms, *(results[n]["per_horizon"]["mpjpe"][h] for n in results)]
                        for h, (f, ms) in enumerate(zip(horizons["frame"], horizons["ms_after_last_input"]))]))
    write_json(os.path.join(out_dir, "motion.json"), {
        **results, "comparisons": compare, "units": {"mpjpe": "cm", "mpjve": "cm/s"}, "num_clips": clips,
        "num_clips_in_split": num_clips_in_split, "split": split, "eval_iters": args.eval_iters,
        "checkpoint": os.path.abspath(folder), "step": step, "config": os.path.abspath(args.config),
        "which": args.which, "world_size": ctx.world_size, "png": os.path.abspath(png), "seconds": round(seconds, 1),
        "pose_frame": cfg.data.pose_frame, "motion_baseline": args.motion_baseline and
        os.path.abspath(args.motion_baseline),
    })
    logger.info("wrote %s", os.path.join(out_dir, "motion.json"))


def load_motion_baseline(path: str, cfg, device) -> PoseMLP:
    payload = torch.load(path, map_location="cpu", weights_only=False)
    frame = payload.get("record", {}).get("pose_frame")
    if frame != cfg.data.pose_frame:
        raise SystemExit(f"--motion_baseline {path} was trained on poses in the {frame!r} frame, but the config's "
                         f"data.pose_frame is {cfg.data.pose_frame!r}: retrain it with this config")
    return PoseMLP.from_export(payload).to(device)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    ctx, cfg, model, folder = start_checkpoint_eval(args)
    if not model.joint:
        raise SystemExit(f"{folder} is a stage-1 checkpoint: it has no action head; pass a stage-2 checkpoint")
    split = args.split or cfg.data.egoexo_valid_split
    dataset = build_eval_clip_dataset(cfg.data, split)
    if (dataset.index.clip_frames, dataset.index.clip_steps) != (20, 4):
        raise SystemExit(f"{args.config}: data.clip_frames={dataset.index.clip_frames}, data.clip_steps="
                         f"{dataset.index.clip_steps}; the motion protocol needs 20 frames in 4 steps")
    workers = cfg.data.num_workers if args.num_workers is None else args.num_workers
    loader = build_eval_loader(dataset, args.batch_size, ctx.rank, ctx.world_size, workers)
    total = num_batches(len(dataset), args.batch_size, ctx.world_size, args.eval_iters)
    logger.info("%s: %d %s clips, %s weights of %s", args.config, len(dataset), split, args.which, folder)
    pose_mlp = load_motion_baseline(args.motion_baseline, cfg, ctx.device) if args.motion_baseline else None
    sums, per_clip, examples, num_clips = evaluate(model, pose_mlp, loader, ctx, total,
                                                   args.num_examples if ctx.is_main else 0)
    per_clip = {k: gather_rows(v, ctx) for k, v in per_clip.items()}
    results = {name: MotionErrorSums.from_tensor(sum_over_ranks(s.as_tensor(), ctx)).summary()
               for name, s in sums.items()}
    clips = int(sum_over_ranks(torch.tensor([float(num_clips)]), ctx)[0])
    if ctx.is_main:
        report(args, cfg, folder, results, paired_comparisons(per_clip), clips, len(dataset), split, examples, ctx,
               time.time() - t0)
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
