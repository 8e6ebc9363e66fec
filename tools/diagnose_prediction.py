"""Why does (or doesn't) the state prediction beat the copy baseline? Measurements on one stage-2 checkpoint.

eval_feature_retrieval.py says whether EgoAgent's predicted feature of frame t+1 retrieves the true next frame
better than copying frame t; this tool says why, on the same clips, similarity and gallery (the teacher's
representation of every true next frame, minus the checkpoint's L_pred centre):

  L_pred (nats), per query: the copy prediction of frame t, EgoAgent, EgoAgent with another clip's actions, and the
      oracle (the target's own entropy, L_pred's floor). copy - oracle is all that frame t+1 adds over frame t; how
      much of it EgoAgent recovers, with and without the true actions, is what L_pred has learned.
  retrieval Top-1 / mAP (%) and L_pred of queries base + a (prediction - base) for a in --scales, true and
      shuffled actions (L_pred: true actions), where base is the residual prediction's base: the copy, or with
      model.prediction_reprojection the teacher's view of frame t reprojected by the step's camera rotation (its
      L_pred is then reported too): a = 0 is the base, a = 1 EgoAgent (whose change is already scaled by the
      checkpoint's calibrated change scale, data.calibration_takes). A change that improves L_pred but helps
      retrieval only when shrunk is a prediction that hedges over the possible next frames (the loss's optimum under
      uncertainty), which a retrieval among near-identical neighbouring frames penalises; one that raises the val
      L_pred over its base has fitted the training takes.
  student copy: the student's own representation head on frame t, against the same teacher gallery: how far the
      student (which L_pred trains) is from the teacher (which makes the targets) on frame t itself.
  --probe_steps N: a probe (internlm/eval/prediction_probe.py) trained for N steps on the training clips: a
      prediction head on the frozen teacher given the exact camera motion of each step from the extrinsics, with
      L_pred (or, --probe_hypotheses H > 1, winner-takes-all over H hypotheses and a selector); its L_pred and
      Top-1 against the copy on the training clips and on the evaluated split: what the best possible action
      buys in this representation, under L_pred's optimum and under a mode-seeking one.

    python tools/diagnose_prediction.py --config configs/demo/stage2_joint_tiny.py \\
        --ckpt_folder runs/demo/save_ckpt/demo_stage2 \\
        --opt data.egoexo_frames_folder=data/synthetic/egoexo4d_v2/processed_data \\
        --opt data.egoexo_pose_folder=data/synthetic/egoexo4d_body_pose [--split train] [--out diagnosis.json] \\
        [--probe_steps 2000 [--probe_hypotheses 4]]

One process (CPU or one GPU); seconds on the demo's val split, a minute or two more with the probe.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch

from internlm.data.build import build_eval_clip_dataset, build_eval_loader
from internlm.eval.cli import add_config_args, eval_checkpoint, format_table, load_eval_config, move, progress
from internlm.eval.prediction_probe import MotionProbe, collect_probe_set, evaluate_probe, train_probe
from internlm.eval.retrieval import (
    LogitSpace,
    deduplicate,
    load_checkpoint,
    other_clip_actions,
    rank_statistics,
    retrieval_ranks,
    step_keys,
)
from internlm.initialize.arguments import ScriptArgumentParser
from internlm.initialize.launch import init_distributed
from internlm.monitor.logging_setup import setup_logging
from internlm.train.losses import prediction_minimiser, teacher_probs
from internlm.train.losses.dino_loss import cross_entropy

logger = logging.getLogger("diagnose_prediction")


def parse_args(argv=None) -> argparse.Namespace:
    p = ScriptArgumentParser(description=__doc__)
    add_config_args(p)
    p.add_argument("--ckpt_folder", default=None, help="a stage-2 step folder or run folder (default: the config's)")
    p.add_argument("--split", default=None, help="pose split (default: the config's data.egoexo_valid_split)")
    p.add_argument("--scales", default="0,0.1,0.25,0.5,1", help="comma-separated a of base + a (prediction - base)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    p.add_argument("--probe_steps", type=int, default=0,
                   help="train the camera-motion probe this many steps (0: no probe)")
    p.add_argument("--probe_hypotheses", type=int, default=1,
                   help="probe hypotheses (1: L_pred; > 1: winner-takes-all with a selector)")
    p.add_argument("--probe_lr", type=float, default=3e-4)
    return p.parse_args(argv)


@torch.no_grad()
def measure(ck, dataset, loader, ctx, total: int, loss_cfg) -> dict:
    """Per query (clip step t = 0..T-2): the logits of every query kind, the target distribution and the keys."""
    ts, tt = loss_cfg.student_temp, loss_cfg.teacher_temp
    rows = {k: [] for k in ("copy", "egoagent", "shuffled_actions", "oracle", "student_copy", "target_probs",
                            "gallery_logits")}
    current, target = [], []
    for batch in progress(loader, ctx, total, "diagnose"):
        batch = move(batch, ctx.device)
        frames = batch["frames"]  # (B, T, 3, P, P)
        B, T = frames.shape[:2]
        teacher = ck.gallery_net.represent(frames.flatten(0, 1)).logits.unflatten(0, (B, T))  # (B, T, K)
        motion, focal = batch.get("camera_motion"), batch.get("focal")  # with data.camera_motion
        other = move(other_clip_actions(dataset, batch["sample_id"].tolist()), ctx.device)
        now, nxt = (x.flatten(0, 1) for x in (teacher[:, :T - 1], teacher[:, 1:]))  # (B*(T-1), K)
        take = lambda x, last=T - 1: x[:, :last].flatten(0, 1)  # noqa: E731  steps 0..T-2
        rows["copy"].append(prediction_minimiser(now, ck.center, tt, ts))
        rows["oracle"].append(prediction_minimiser(nxt, ck.center, tt, ts))
        # the residual prediction's base with the true and with the shuffled actions (their camera motion, with
        # model.prediction_reprojection), as the eval and training compute it
        base = shuffled_base = None
        if ck.prediction is not None:
            base = ck.prediction_base(frames, teacher, motion, focal)
            shuffled_base = ck.prediction_base(frames, teacher, other.get("camera_motion"), focal)
            rows.setdefault("base", []).append(take(base))
            rows.setdefault("shuffled_base", []).append(take(shuffled_base))
            if ck.prediction.reprojection:
                rows.setdefault("reprojection", []).append(take(base))
        rows["egoagent"].append(take(ck.predict(frames, batch["poses"], teacher, base=base)))
        rows["shuffled_actions"].append(take(ck.predict(frames, other["poses"], teacher, base=shuffled_base)))
        rows["student_copy"].append(take(ck.student.represent(frames.flatten(0, 1)).logits.unflatten(0, (B, T))))
        rows["target_probs"].append(teacher_probs(nxt, ck.center, tt))
        rows["gallery_logits"].append(nxt)
        keys = step_keys(batch)
        current += keys[0]
        target += keys[1]
    out = {k: torch.cat(v).float().cpu() for k, v in rows.items()}
    out["current"], out["target"] = current, target
    return out


def diagnose(ck, got: dict, scales: list[float], loss_cfg) -> dict:
    ts = loss_cfg.student_temp
    probs = got["target_probs"]
    losses = {k: float(cross_entropy(probs, got[k], ts).mean()) for k in ("copy", "egoagent", "shuffled_actions",
                                                                            "oracle", "student_copy", "reprojection")
              if k in got}
    kept, index_of = deduplicate(got["target"])
    heads = [ck.gallery_net.rep_head.last_layer.weight, ck.student.pred_head.last_layer.weight,
             ck.student.rep_head.last_layer.weight]
    space = LogitSpace([h.cpu() for h in heads], [ck.center.cpu()], ts, loss_cfg.teacher_temp)
    gallery = space.gallery(got["gallery_logits"][kept], ck.center.cpu())
    targets = torch.tensor([index_of[k] for k in got["target"]])
    excluded = torch.tensor([index_of.get(k, -1) for k in got["current"]])

    def top1_map(query_logits: torch.Tensor) -> dict:
        stats = rank_statistics(retrieval_ranks(space.query(query_logits), gallery, targets, excluded))
        return {"top1": stats["top1"], "mAP": stats["mAP"], "top1_se": stats["top1_se"]}

    base = got.get("base", got["copy"])  # what the residual prediction adds its change to
    other_base = got.get("shuffled_base", got["copy"])  # ... with the shuffled actions
    scaled = {}
    for a in scales:
        query = base + a * (got["egoagent"] - base)
        scaled[str(a)] = {"true": top1_map(query),
                          "shuffled": top1_map(other_base + a * (got["shuffled_actions"] - other_base)),
                          "l_pred": float(cross_entropy(probs, query, ts).mean())}
    return {"l_pred": losses, "gap_nats": losses["copy"] - losses["oracle"],
            "recovered_nats": {"true": losses["copy"] - losses["egoagent"],
                               "shuffled": losses["copy"] - losses["shuffled_actions"]},
            "retrieval_scaled_change": scaled, "scaled_from": "reprojection" if "reprojection" in got else "copy",
            "student_copy": top1_map(got["student_copy"]),
            "teacher_copy": top1_map(got["copy"]),
            "num_queries": len(got["target"]), "num_gallery": len(kept)}


def run_probe(ck, cfg, eval_split: str, args, ctx) -> dict:
    """The camera-motion probe on the frozen teacher: trained on the training clips, scored on them and on
    ``eval_split``."""
    loss_cfg, teacher = cfg.loss, ck.gallery_net
    sets = {}
    for split in dict.fromkeys((cfg.data.egoexo_train_split, eval_split)):
        dataset = build_eval_clip_dataset(cfg.data, split)
        loader = build_eval_loader(dataset, args.batch_size, 0, 1, 0)
        sets[split] = collect_probe_set(teacher, dataset, progress(loader, ctx, len(loader), f"probe {split}"),
                                        ck.center, loss_cfg.teacher_temp, loss_cfg.student_temp, ctx.device)
    torch.manual_seed(cfg.data.seed)
    probe = MotionProbe(cfg.model.hidden_size, cfg.model.output_dim, args.probe_hypotheses,
                        cfg.model.head_hidden_dim, cfg.model.head_bottleneck_dim)
    losses = train_probe(probe, sets[cfg.data.egoexo_train_split], loss_cfg.student_temp, args.probe_steps,
                         args.probe_lr, seed=cfg.data.seed)
    heads = [teacher.rep_head.last_layer.weight.detach().cpu()] + [w.detach() for w in probe.last_layers()]
    space = LogitSpace(heads, [ck.center.cpu()], loss_cfg.student_temp, loss_cfg.teacher_temp)
    return {"steps": args.probe_steps, "hypotheses": args.probe_hypotheses, "lr": args.probe_lr,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "splits": {split: evaluate_probe(probe, data, space, ck.center.cpu(), loss_cfg.student_temp)
                       for split, data in sets.items()}}


def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = init_distributed(None, device=args.device)
    setup_logging(ctx.rank)
    cfg = load_eval_config(args)
    if not cfg.loss.is_joint:
        raise SystemExit(f"{args.config}: a stage-1 config has no state prediction to diagnose")
    ck = load_checkpoint(eval_checkpoint(cfg, args.ckpt_folder, args.config), "teacher", ctx.device, "sdpa")
    split = args.split or cfg.data.egoexo_valid_split
    dataset = build_eval_clip_dataset(cfg.data, split)
    loader = build_eval_loader(dataset, args.batch_size, 0, 1, 0)
    got = measure(ck, dataset, loader, ctx, len(loader), cfg.loss)
    scales = [float(a) for a in args.scales.split(",")]
    result = dict(diagnose(ck, got, scales, cfg.loss), checkpoint=os.path.abspath(ck.folder), split=split,
                  residual=ck.prediction is not None)
    lp = result["l_pred"]
    names = {"copy": "copy", "reprojection": "reprojection", "egoagent": "EgoAgent",
             "shuffled_actions": "shuffled actions", "oracle": "oracle", "student_copy": "student copy"}
    shown = [k for k in names if k in lp]
    print(format_table(f"L_pred on {result['num_queries']} {split} queries (nats; the oracle is its floor)",
                       [names[k] for k in shown], [[f"{lp[k]:.4f}" for k in shown]]))
    print(f"frame t+1 adds {result['gap_nats']:.4f} nats over frame t; EgoAgent recovers "
          f"{result['recovered_nats']['true']:.4f} (shuffled actions {result['recovered_nats']['shuffled']:.4f})")
    base = result["scaled_from"]
    print(format_table(f"retrieval of {base} + a (prediction - {base}), gallery {result['num_gallery']} frames "
                       "(Top-1 %)",
                       ["a", "true actions", "shuffled actions", "L_pred (true)"],
                       [[a, r["true"]["top1"], r["shuffled"]["top1"], f"{r['l_pred']:.4f}"] for a, r in
                        result["retrieval_scaled_change"].items()]))
    print(f"student copy (the student's representation head on frame t): Top-1 {result['student_copy']['top1']:.2f}%"
          f" vs the teacher's copy {result['teacher_copy']['top1']:.2f}%")
    if args.probe_steps > 0:
        result["probe"] = run_probe(ck, cfg, split, args, ctx)
        table = []
        for name, got in result["probe"]["splits"].items():
            for row, r in got["rows"].items():
                table.append([name, row, f"{r['l_pred']:.4f}", r["top1"], r["top1_se"], r["mAP"]])
        print(format_table(f"camera-motion probe ({args.probe_steps} steps, {args.probe_hypotheses} hypotheses)",
                           ["split", "query", "L_pred", "Top-1 %", "+-", "mAP %"], table))
        for name, got in result["probe"]["splits"].items():
            d, e = got["probe_minus_copy"], got["probe_minus_shuffled_motion"]
            print(f"{name}: probe - copy Top-1 {d['top1_diff']:+.2f} +- {d['top1_diff_se']:.2f}; probe - shuffled "
                  f"motion {e['top1_diff']:+.2f} +- {e['top1_diff_se']:.2f}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
