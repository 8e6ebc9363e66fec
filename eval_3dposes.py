"""3D human motion prediction on the Ego-Exo4D val clips (the paper's action evaluation, Table 3).

Protocol: a clip is 20 pose frames at 30 fps (indices 0..19) in T = 4 steps of 5, with the image of each step
(its first frame: 0, 5, 10, 15). Inputs: the 4 step images and the true poses of frames 0..4 (step 0); the future
poses never reach a predictor (split_batch keeps them for the error sums only). The model predicts the remaining
15 poses autoregressively: the poses of step 1 from images 0..1 and the poses of step 0; that prediction (x, y, z;
visibility set to 1) is fed back as the action token of step 1; and so on to step 3.
MPJPE = mean L2 error over the joints visible in the target (cm). MPJVE = mean L2 error of frame-difference
velocities (cm/s); the true input poses start the velocities of truth and prediction; a velocity counts only when
the joint is visible at both of its ends. "@30fps": all 15 target frames 5..19, v_i = (p_i - p_{i-1}) * 30.
"@10fps": every third predicted frame, v_i = (p_i - p_{i-3}) * 10; --frames_10fps from_first (default: 5, 8, 11,
14, 17) or to_last (7, 10, 13, 16, 19, this project's definition before). Errors grow with the horizon, so frames
ending at the last one put MPJPE@10fps above @30fps, while in the paper's Table 3 every method's @10fps is below its
@30fps: the frames starting from the first predicted one are the definition consistent with it.
Errors per horizon (each of the 15 frames). Rows, all on the same clips:
- model: EgoAgent. Image controls (the same rollout, the images replaced): model_other_images, the images of clip
  (i + N/2) mod N (the retrieval's shuffled-action pairing); model_mean_image, the mean image of the evaluated
  clips at every step. Each control minus EgoAgent per clip, +- its SE: images are "used" when removing them costs
  more than the SE (image_controls in the JSON).
- simlpe (--motion_baseline): the pose-only siMLPe (Guo et al., WACV 2023; tools/train_motion_baseline.py: the
  same 5 input poses, no image), the paper's Table 3 baseline.
- KIND_oracle (--oracle PATH, repeatable): privileged ceilings, siMLPe also given the simulator's ground truth of
  what is in view at the last input frame ("scene", needs --scene_truth WORLD_DIR) or where the camera is at each
  step image ("view"): internlm/eval/motion_oracles.py. Their margin over siMLPe is what vision could add.
- zero_velocity (every future frame = the last observed pose; per joint, its last visible observation among frames
  0..4) and constant_velocity (each joint's last observed velocity extrapolated: from its last two visible input
  frames a < b, v = (p_b - p_a) / (b - a), p_i = p_b + (i - b) v; a joint seen once stays put, a joint never seen
  takes the mean of the seen joints): the floors.
Paired per clip: EgoAgent minus every other row (comparisons), siMLPe minus each oracle (oracle_margins).

  python -u eval_3dposes.py --config ${CONFIG} --launcher ${LAUNCHER} --port ${PORT} --eval_iters ${eval_iters}
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

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
    DEFAULT_10FPS,
    FRAMES_10FPS,
    HORIZON,
    INPUT_FRAMES,
    MotionErrorSums,
    constant_velocity,
    paired_mpjpe_difference,
    poses_from_blocks,
    zero_velocity,
)
from internlm.eval.motion_oracles import batch_condition
from internlm.eval.plots import RolloutExample, plot_skeleton_rollouts
from internlm.eval.retrieval import other_clips
from internlm.eval.rollout import autoregressive_rollout
from internlm.initialize.arguments import ScriptArgumentParser
from internlm.initialize.launch import destroy_distributed
from internlm.model.simlpe import SiMLPe

logger = logging.getLogger("eval_3dposes")
IMAGE_CONTROLS = {"other_images": "model_other_images", "mean_image": "model_mean_image"}
PLOTTED = ("model", "simlpe", "constant_velocity", "zero_velocity")  # the rollout PNG's predictors


def parse_args(argv=None) -> argparse.Namespace:
    p = ScriptArgumentParser(description=__doc__)
    add_config_args(p)
    add_launch_args(p)
    p.add_argument("--eval_iters", type=int, default=None, help="at most this many batches per rank (default: all)")
    add_checkpoint_args(p, default_which="model")
    p.add_argument("--split", default=None, help="pose split (default: the config's data.egoexo_valid_split)")
    p.add_argument("--batch_size", type=int, default=16, help="clips per batch per rank")
    p.add_argument("--num_workers", type=int, default=None, help="loader workers (default: data.num_workers)")
    p.add_argument("--num_examples", type=int, default=3, help="clips drawn in the PNG")
    p.add_argument("--motion_baseline", default=None,
                   help="the pose-only siMLPe trained by tools/train_motion_baseline.py (scored as 'simlpe')")
    p.add_argument("--oracle", action="append", default=[], metavar="PATH",
                   help="a privileged oracle trained by tools/train_motion_baseline.py --oracle KIND (scored as "
                        "'KIND_oracle'; repeatable)")
    p.add_argument("--scene_truth", default=None,
                   help="the synthetic world folder holding privileged_scene_truth/ (for a scene oracle)")
    p.add_argument("--frames_10fps", choices=tuple(FRAMES_10FPS), default=DEFAULT_10FPS,
                   help="which every-third frames the @10fps metrics use: from_first (5, 8, ..., 17; default, "
                        "consistent with the paper's Table 3, where @10fps is below @30fps) or to_last (7, ..., 19)")
    p.add_argument("--no_image_controls", action="store_true",
                   help="leave out the rollouts with another clip's images and with the mean image")
    p.add_argument("--output_dir", default=None, help="default: outputs/3dposes/{JOB_NAME}_step{step}")
    return p.parse_args(argv)


@dataclass
class MotionInputs:
    """What a predictor is given for a batch of clips: the step images and the first INPUT_FRAMES poses. The future
    poses are not in it: they stay with the error sums (split_batch)."""

    frames: torch.Tensor  # (B, T, 3, P, P)
    first_step: torch.Tensor  # (B, 4, 5, 17) step 0's block (x, y, z, visibility)
    xyz: torch.Tensor  # (B, INPUT_FRAMES, J, 3)
    visible: torch.Tensor  # (B, INPUT_FRAMES, J) bool
    sample_ids: list[int]


def split_batch(batch: dict) -> tuple[MotionInputs, torch.Tensor, torch.Tensor]:
    """-> (the predictors' inputs, the whole clip's xyz (B, 20, J, 3) and visibility (B, 20, J), for scoring)."""
    blocks = batch["poses"]  # (B, T, 4, 5, 17)
    xyz, visible = poses_from_blocks(blocks)
    inputs = MotionInputs(batch["frames"], blocks[:, 0].clone(), xyz[:, :INPUT_FRAMES].clone(),
                          visible[:, :INPUT_FRAMES].clone(), [int(i) for i in batch["sample_id"]])
    return inputs, xyz, visible


Predictor = Callable[[MotionInputs], torch.Tensor]  # -> (B, HORIZON, J, 3)


def build_predictors(model, dataset, mean_frame, simlpe, oracles: dict, scene_truth, step: int) -> dict:
    """name -> predictor. ``mean_frame`` (3, P, P) or None (no image controls); ``oracles``: kind -> SiMLPe."""
    def other_frames(inp: MotionInputs) -> torch.Tensor:
        frames = [dataset[j]["frames"] for j in other_clips(inp.sample_ids, len(dataset))]
        return torch.stack(frames).to(inp.frames)

    def oracle(kind: str, net: SiMLPe) -> Predictor:
        return lambda inp: net(inp.xyz.float(), inp.visible, HORIZON, batch_condition(
            kind, dataset, inp.sample_ids, HORIZON // step, INPUT_FRAMES, step, scene_truth, inp.xyz.device))

    out: dict[str, Predictor] = {"model": lambda inp: autoregressive_rollout(model, inp.frames, inp.first_step)}
    if mean_frame is not None:
        out["model_other_images"] = lambda inp: autoregressive_rollout(model, other_frames(inp), inp.first_step)
        out["model_mean_image"] = lambda inp: autoregressive_rollout(
            model, mean_frame.to(inp.frames).expand_as(inp.frames), inp.first_step)
    if simlpe is not None:
        out["simlpe"] = lambda inp: simlpe(inp.xyz.float(), inp.visible, HORIZON)
    out.update({f"{kind}_oracle": oracle(kind, net) for kind, net in oracles.items()})
    out["zero_velocity"] = lambda inp: zero_velocity(inp.xyz, inp.visible)
    out["constant_velocity"] = lambda inp: constant_velocity(inp.xyz, inp.visible)
    return out


def mean_image(loader, ctx, total: int) -> torch.Tensor:
    """(3, P, P): the mean of every step image of the evaluated clips (all ranks), the mean-image control's input."""
    total_sum, count = None, 0
    for batch in progress(itertools.islice(loader, total), ctx, total, "mean image"):
        frames = batch["frames"].double()  # (B, T, 3, P, P)
        part = frames.sum(dim=(0, 1))
        total_sum = part if total_sum is None else total_sum + part
        count += frames.shape[0] * frames.shape[1]
    summed = sum_over_ranks(torch.cat([total_sum.flatten(), torch.tensor([float(count)], dtype=torch.float64)]), ctx)
    return (summed[:-1] / summed[-1]).view_as(total_sum).float()


@torch.no_grad()
def evaluate(predictors: dict, loader, ctx, total: int, num_examples: int, frames_10fps: str):
    """-> error sums per predictor, per-clip MPJPE@30fps per predictor (and "sample_id": each clip's index in the
    split), a few examples, number of clips (this rank)."""
    sums, per_clip = {}, {"sample_id": []}
    examples, num_clips = [], 0
    for batch in progress(itertools.islice(loader, total), ctx, total, "motion"):
        inputs, xyz, visible = split_batch(move(batch, ctx.device))
        per_clip["sample_id"].append(torch.tensor(inputs.sample_ids, dtype=torch.float64))
        predictions = {name: predict(inputs) for name, predict in predictors.items()}  # (B, 15, 17, 3) each
        for name, pred in predictions.items():
            errors = sums.setdefault(name, MotionErrorSums(frames_10fps)).add(pred, xyz, visible)
            per_clip.setdefault(name, []).append(errors)
        num_clips += xyz.shape[0]
        if len(examples) < num_examples:  # the first clip of each batch: examples spread over the split
            full = {name: torch.cat([xyz[0, :INPUT_FRAMES], predictions[name][0].to(xyz)]).cpu().numpy()
                    for name in PLOTTED if name in predictions}
            examples.append(RolloutExample(f"{batch['take_uid'][0][:8]} f{int(batch['frame_ids'][0, 0])}",
                                           xyz[0].cpu().numpy(), visible[0].cpu().numpy(), full))
    return sums, {k: torch.cat(v) for k, v in per_clip.items()}, examples, num_clips


def paired_comparisons(per_clip: dict) -> dict:
    """EgoAgent minus each other predictor (negative = EgoAgent better)."""
    return {f"model_minus_{other}": paired_mpjpe_difference(per_clip["model"], errors)
            for other, errors in per_clip.items() if other != "model"}


def image_controls(per_clip: dict) -> dict:
    """Each image control minus EgoAgent (positive = the true images help): "used" when the difference is larger
    than its standard error, else the pathway is reported as unused."""
    out = {}
    for control, row in IMAGE_CONTROLS.items():
        if row in per_clip:
            d = paired_mpjpe_difference(per_clip[row], per_clip["model"])
            out[control] = {**d, "used": d["mpjpe_30fps_diff"] > d["mpjpe_30fps_diff_se"]}
    return out


def oracle_margins(per_clip: dict) -> dict:
    """siMLPe minus each oracle (positive = what the oracle's privileged input adds): the ceilings."""
    if "simlpe" not in per_clip:
        return {}
    return {row: paired_mpjpe_difference(per_clip["simlpe"], errors) for row, errors in per_clip.items()
            if row.endswith("_oracle")}


def report(args, cfg, folder: str, results: dict, per_clip: dict, clips: int, num_clips_in_split: int, split: str,
           examples: list, ctx, seconds: float) -> None:
    step = read_meta(folder).get("step")
    out_dir = args.output_dir or default_output_dir("3dposes", cfg, step)
    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, "rollouts.png")
    plot_skeleton_rollouts(png, examples)
    ids = per_clip.pop("sample_id")
    order = ids.argsort()  # the split's order, whatever the ranks' shards were
    per_clip, ids = {k: v[order] for k, v in per_clip.items()}, ids[order].long().tolist()
    compare, controls, margins = paired_comparisons(per_clip), image_controls(per_clip), oracle_margins(per_clip)
    print(format_table(f"3D motion prediction, {args.which} weights, step {step} (cm, cm/s; @10fps: frames "
                       f"{', '.join(map(str, FRAMES_10FPS[args.frames_10fps]))})",
                       ["predictor", "MPJPE@30fps", "MPJVE@30fps", "MPJPE@10fps", "MPJVE@10fps"],
                       [[n, r["mpjpe_30fps"], r["mpjve_30fps"], r["mpjpe_10fps"], r["mpjve_10fps"]]
                        for n, r in results.items()]))
    print(format_table("EgoAgent minus each other row, per clip (cm; negative = EgoAgent better)",
                       ["comparison", "MPJPE@30fps", "+-"],
                       [[k, c["mpjpe_30fps_diff"], c["mpjpe_30fps_diff_se"]] for k, c in compare.items()]))
    if controls:
        print(format_table("Image controls minus EgoAgent, per clip (cm; positive = the true images help)",
                           ["control", "MPJPE@30fps", "+-", "images"],
                           [[k, c["mpjpe_30fps_diff"], c["mpjpe_30fps_diff_se"], "used" if c["used"] else "unused"]
                            for k, c in controls.items()]))
    if margins:
        print(format_table("siMLPe minus each privileged oracle, per clip (cm; the ceiling of what it adds)",
                           ["oracle", "MPJPE@30fps", "+-"],
                           [[k, c["mpjpe_30fps_diff"], c["mpjpe_30fps_diff_se"]] for k, c in margins.items()]))
    horizons = results["model"]["per_horizon"]
    print(format_table("MPJPE per horizon (cm)", ["frame", "ms", *results],
                       [[f, ms, *(results[n]["per_horizon"]["mpjpe"][h] for n in results)]
                        for h, (f, ms) in enumerate(zip(horizons["frame"], horizons["ms_after_last_input"]))]))
    write_json(os.path.join(out_dir, "motion.json"), {
        **results, "per_clip": {"sample_id": ids, "mpjpe_30fps": {k: [round(float(x), 6) for x in v]
                                                                   for k, v in per_clip.items()}},
        "comparisons": compare, "image_controls": controls, "oracle_margins": margins,
        "units": {"mpjpe": "cm", "mpjve": "cm/s"}, "frames_10fps": list(FRAMES_10FPS[args.frames_10fps]),
        "frames_10fps_definition": args.frames_10fps, "num_clips": clips,
        "num_clips_in_split": num_clips_in_split, "split": split, "eval_iters": args.eval_iters,
        "checkpoint": os.path.abspath(folder), "step": step, "config": os.path.abspath(args.config),
        "which": args.which, "world_size": ctx.world_size, "png": os.path.abspath(png), "seconds": round(seconds, 1),
        "pose_frame": cfg.data.pose_frame, "motion_baseline": args.motion_baseline and
        os.path.abspath(args.motion_baseline), "oracles": [os.path.abspath(o) for o in args.oracle],
        "scene_truth": args.scene_truth and os.path.abspath(args.scene_truth),
    })
    logger.info("wrote %s", os.path.join(out_dir, "motion.json"))


def load_simlpe(path: str, cfg, device, flag: str) -> SiMLPe:
    payload = torch.load(path, map_location="cpu", weights_only=False)
    frame = payload.get("record", {}).get("pose_frame")
    if frame != cfg.data.pose_frame:
        raise SystemExit(f"{flag} {path} was trained on poses in the {frame!r} frame, but the config's "
                         f"data.pose_frame is {cfg.data.pose_frame!r}: retrain it with this config")
    if "config" not in payload or "frames" not in payload["config"]:
        raise SystemExit(f"{flag} {path} is not a siMLPe export of tools/train_motion_baseline.py (an older "
                         "pose-only model?): retrain it")
    model = SiMLPe.from_export(payload).to(device)
    is_oracle = bool(model.cfg.condition_dim)
    if is_oracle != (flag == "--oracle"):
        what = f"an oracle ({model.cfg.condition})" if is_oracle else "the pose-only baseline"
        raise SystemExit(f"{flag} {path} is {what}: pass it with {'--oracle' if is_oracle else '--motion_baseline'}")
    return model


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
    simlpe = load_simlpe(args.motion_baseline, cfg, ctx.device, "--motion_baseline") if args.motion_baseline else None
    oracles = {}
    for path in args.oracle:
        net = load_simlpe(path, cfg, ctx.device, "--oracle")
        oracles[net.cfg.condition] = net
    scene_truth = None
    if "scene" in oracles:
        from internlm.data.synthetic.privileged import SceneTruth

        if not args.scene_truth:
            raise SystemExit("a scene oracle needs --scene_truth WORLD_DIR (the synthetic world's folder)")
        scene_truth = SceneTruth(args.scene_truth)
    mean_frame = None if args.no_image_controls else mean_image(loader, ctx, total)
    predictors = build_predictors(model, dataset, mean_frame, simlpe, oracles, scene_truth,
                                  dataset.index.steps_per_clip)
    sums, per_clip, examples, num_clips = evaluate(predictors, loader, ctx, total,
                                                   args.num_examples if ctx.is_main else 0, args.frames_10fps)
    per_clip = {k: gather_rows(v, ctx) for k, v in per_clip.items()}
    results = {name: MotionErrorSums.from_tensor(sum_over_ranks(s.as_tensor(), ctx), args.frames_10fps).summary()
               for name, s in sums.items()}
    clips = int(sum_over_ranks(torch.tensor([float(num_clips)]), ctx)[0])
    if ctx.is_main:
        report(args, cfg, folder, results, per_clip, clips, len(dataset), split, examples, ctx, time.time() - t0)
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
