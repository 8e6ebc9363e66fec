"""Why does (or doesn't) EgoAgent's action use its images? Measurements on one stage-2 checkpoint, on the motion
evaluation's clips (eval_3dposes.py says how EgoAgent compares; this tool says why):

  per step (1, 2, 3: frames 5-9, 10-14, 15-19) and joint group (head: the 5 face points, arms, legs), MPJPE (cm) of
    EgoAgent rolled out autoregressively (the protocol), EgoAgent teacher-forced (the action token of every earlier
    step holds its TRUE poses, as in training: a diagnostic, not a prediction), each with its images and with the
    image controls (another clip's images, the mean image), and of siMLPe / the oracles / zero velocity when given;
  image effect: control minus true images, per clip, +- SE, under both; a pathway that does not move the error by
    more than its SE is unused;
  input gradients: the share of the L_act gradient (teacher-forced, as in training) that reaches the image tokens
    and the action tokens (norm of d L_act / d token, summed per kind; the first 4 batches): where training pushes.
  With --split train the same on the training clips: images used there and not on new takes were memorised.

    python tools/diagnose_motion.py --config configs/demo/stage2_joint_tiny.py \\
        --ckpt_folder runs/demo/save_ckpt/demo_stage2 --motion_baseline runs/demo/motion_baseline/simlpe.pt \\
        --opt data.egoexo_frames_folder=data/synthetic/egoexo4d_v2/processed_data \\
        --opt data.egoexo_pose_folder=data/synthetic/egoexo4d_body_pose [--split train] [--out diagnosis.json]

One process (CPU or one GPU); seconds on the demo's val split.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from internlm.checkpoint.weights import load_model
from internlm.data.build import build_eval_clip_dataset, build_eval_loader
from internlm.data.egoexo_format import JOINT_INDEX
from internlm.eval.cli import add_config_args, eval_checkpoint, format_table, load_eval_config, move, progress
from internlm.eval.motion import HORIZON, INPUT_FRAMES, M_TO_CM, paired_mpjpe_difference, zero_velocity
from internlm.eval.motion_oracles import batch_condition
from internlm.eval.retrieval import other_clips
from internlm.eval.rollout import autoregressive_rollout
from internlm.initialize.arguments import ScriptArgumentParser
from internlm.initialize.launch import init_distributed
from internlm.model.simlpe import SiMLPe
from internlm.monitor.logging_setup import setup_logging
from internlm.train.losses import action_loss

GRADIENT_BATCHES = 4  # the input-gradient shares are averaged over the first batches
GROUPS = {"head": [JOINT_INDEX[n] for n in ("nose", "left-eye", "right-eye", "left-ear", "right-ear")],
          "arms": [JOINT_INDEX[f"{s}-{p}"] for s in ("left", "right") for p in ("shoulder", "elbow", "wrist")],
          "legs": [JOINT_INDEX[f"{s}-{p}"] for s in ("left", "right") for p in ("hip", "knee", "ankle")]}


def parse_args(argv=None) -> argparse.Namespace:
    p = ScriptArgumentParser(description=__doc__)
    add_config_args(p)
    p.add_argument("--ckpt_folder", default=None, help="stage-2 checkpoint (default: the config's newest)")
    p.add_argument("--which", choices=("model", "teacher"), default="model")
    p.add_argument("--split", default=None, help="default: data.egoexo_valid_split")
    p.add_argument("--motion_baseline", default=None, help="siMLPe (tools/train_motion_baseline.py)")
    p.add_argument("--oracle", action="append", default=[], metavar="PATH", help="a privileged oracle (repeatable)")
    p.add_argument("--scene_truth", default=None, help="the synthetic world folder (scene oracle)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    return p.parse_args(argv)


def teacher_forced(model, frames: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Each step t >= 1 predicted with the TRUE poses of steps < t as action tokens (training's condition):
    (B, 15, J, 3). The action query of step t cannot see the tokens of steps >= t (causal mask)."""
    actions = model.forward_joint(frames, blocks, with_logits=False).actions  # (B, T, 4, 5, 17)
    return actions[:, 1:, :3].permute(0, 1, 3, 4, 2).flatten(1, 2).float()  # (B, 15, 17, 3)


def clip_errors(pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """pred, target (B, 15, J, 3), visible (B, 15, J) -> (B, 3 steps, groups + all) mean error per clip (cm; NaN
    where nothing is visible)."""
    err = (pred.double() - target.double()).norm(dim=-1) * M_TO_CM * visible  # (B, 15, J)
    steps = []
    for s in range(HORIZON // 5):
        e, v = err[:, 5 * s:5 * s + 5], visible[:, 5 * s:5 * s + 5].double()
        cols = [e[..., idx].sum(dim=(1, 2)) / v[..., idx].sum(dim=(1, 2)) for idx in GROUPS.values()]
        cols.append(e.sum(dim=(1, 2)) / v.sum(dim=(1, 2)))
        steps.append(torch.stack(cols, dim=1))
    return torch.stack(steps, dim=1)


def gradient_shares(model, frames: torch.Tensor, blocks: torch.Tensor) -> dict:
    """The L_act gradient (teacher-forced) per input token kind: image tokens, action tokens (|d L / d token|
    summed over tokens, as a share of the three)."""
    captured = {}

    def keep(name):
        def hook(_module, _inputs, output):
            output.retain_grad()
            captured[name] = output
        return hook

    handles = [model.image_projector.register_forward_hook(keep("image tokens")),
               model.action_projector.register_forward_hook(keep("action tokens"))]
    try:
        with torch.enable_grad():
            model.zero_grad(set_to_none=True)
            loss = action_loss(model.forward_joint(frames, blocks, with_logits=False).actions[:, 1:], blocks[:, 1:])
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    norms = {k: float(v.grad.norm(dim=-1).sum()) for k, v in captured.items()}
    total = sum(norms.values()) or 1.0
    return {k: v / total for k, v in norms.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = init_distributed(None, None)
    setup_logging(0)
    cfg = load_eval_config(args)
    folder = eval_checkpoint(cfg, args.ckpt_folder, args.config)
    model, _, folder = load_model(folder, args.which, ctx.device)
    dataset = build_eval_clip_dataset(cfg.data, args.split or cfg.data.egoexo_valid_split)
    loader = build_eval_loader(dataset, args.batch_size, 0, 1, 0)
    simlpe = SiMLPe.from_export(torch.load(args.motion_baseline, weights_only=False)) if args.motion_baseline else None
    oracles = [SiMLPe.from_export(torch.load(p, weights_only=False)) for p in args.oracle]
    truth = None
    if any(o.cfg.condition == "scene" for o in oracles):
        from internlm.data.synthetic.privileged import SceneTruth

        truth = SceneTruth(args.scene_truth)
    frames_sum, count = 0.0, 0
    for batch in loader:  # the mean image of the split (the mean-image control)
        frames_sum = frames_sum + batch["frames"].double().sum(dim=(0, 1))
        count += batch["frames"].shape[0] * batch["frames"].shape[1]
    mean_frame = (frames_sum / count).float().to(ctx.device)
    rows: dict[str, list] = {}
    grads = []
    step = dataset.index.steps_per_clip
    with torch.no_grad():
        for batch in progress(loader, ctx, len(loader), "diagnosis"):
            batch = move(batch, ctx.device)
            frames, blocks = batch["frames"], batch["poses"]
            xyz = blocks[:, :, :3].permute(0, 1, 3, 4, 2).flatten(1, 2)  # (B, 20, J, 3)
            visible = blocks[:, :, 3].flatten(1, 2) > 0.5  # (B, 20, J)
            ids = [int(i) for i in batch["sample_id"]]
            others = torch.stack([dataset[j]["frames"] for j in other_clips(ids, len(dataset))]).to(frames)
            images = {"": frames, " other images": others, " mean image": mean_frame.expand_as(frames)}
            preds = {}
            for suffix, imgs in images.items():
                preds[f"autoregressive{suffix}"] = autoregressive_rollout(model, imgs, blocks[:, 0])
                preds[f"teacher-forced{suffix}"] = teacher_forced(model, imgs, blocks)
            x_in, v_in = xyz[:, :INPUT_FRAMES].float(), visible[:, :INPUT_FRAMES]
            if simlpe is not None:
                preds["siMLPe"] = simlpe(x_in, v_in, HORIZON)
            for o in oracles:
                cond = batch_condition(o.cfg.condition, dataset, ids, HORIZON // step, INPUT_FRAMES, step, truth)
                preds[f"{o.cfg.condition} oracle"] = o(x_in, v_in, HORIZON, cond)
            preds["zero velocity"] = zero_velocity(x_in, v_in)
            for name, pred in preds.items():
                rows.setdefault(name, []).append(clip_errors(pred, xyz[:, INPUT_FRAMES:], visible[:, INPUT_FRAMES:]))
            if len(grads) < GRADIENT_BATCHES:
                with torch.enable_grad():
                    grads.append(gradient_shares(model, frames, blocks))
    errors = {k: torch.cat(v) for k, v in rows.items()}  # (N, 3, 4)
    columns = [*GROUPS, "all"]
    result = {"checkpoint": folder, "split": args.split or cfg.data.egoexo_valid_split, "num_clips": len(dataset),
              "mpjpe": {}, "image_effect": {}, "gradient_shares": {}}
    table = []
    for name, e in errors.items():
        m = torch.nanmean(e, dim=0)  # (3, 4)
        result["mpjpe"][name] = {f"step{s + 1}": dict(zip(columns, m[s].tolist())) for s in range(m.shape[0])}
        result["mpjpe"][name]["all"] = float(torch.nanmean(e[..., -1]))
        table.append([name, *m[:, -1].tolist(), *torch.nanmean(e, dim=(0, 1))[:-1].tolist(),
                      result["mpjpe"][name]["all"]])
    print(format_table(f"MPJPE (cm) per step and joint group, {len(dataset)} clips of {result['split']}",
                       ["predictor", "step 1", "step 2", "step 3", *GROUPS, "all"], table))
    effect_rows = []
    for mode in ("autoregressive", "teacher-forced"):
        for control in (" other images", " mean image"):
            d = (errors[f"{mode}{control}"] - errors[mode])[..., -1]  # (N, 3)
            paired = paired_mpjpe_difference(d.mean(dim=1), torch.zeros(len(d)))
            diff, se = paired["mpjpe_30fps_diff"], paired["mpjpe_30fps_diff_se"]
            result["image_effect"][f"{mode}{control}"] = {
                "diff": diff, "se": se, "per_step": d.mean(dim=0).tolist(), "used": diff > se}
            effect_rows.append([f"{mode}:{control}", diff, se, *d.mean(dim=0).tolist()])
    print(format_table("Image control minus true images (cm; positive = the images help)",
                       ["condition: control", "all", "+-", "step 1", "step 2", "step 3"], effect_rows))
    result["gradient_shares"] = {k: sum(g[k] for g in grads) / len(grads) for k in grads[0]}
    print("share of the teacher-forced L_act input gradient: " + ", ".join(
        f"{k} {v:.3f}" for k, v in result["gradient_shares"].items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
