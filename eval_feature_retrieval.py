"""Future-state retrieval on the Ego-Exo4D val clips (the paper's world-model evaluation).

Every val clip (20 frames at 30 fps, T = 4 steps of 5, the image of step t = its first frame) gives T - 1 = 3
queries, t = 0, 1, 2: "which frame comes next?".
  query    the student's state-prediction head at the future-state query of step t (it sees frames <= t and
           the actions, i.e. the poses, of steps <= t); with model.prediction_residual the head's output is a
           change added to the teacher's copy prediction of frame t (with model.prediction_reprojection: of frame
           t reprojected by the step's camera rotation), built by internlm/train/prediction_base.py as in training;
  gallery  the representation of every real next frame (steps 1..3 of every clip, de-duplicated by take and
           frame) from the network L_pred trains against: the EMA teacher (--gallery teacher, the default) or
           the student (--gallery student); the query's own current frame t is removed from its gallery;
  correct  the true next frame (same take and frame).
Similarity: what L_pred measures, and only that. L_pred = H(softmax((l_T - c) / tau_t), softmax(s / tau_s)) is
minimal exactly when s = (tau_s / tau_t) (l_T - c) + any constant per row: the loss does not see a per-row
constant, nor (for its minimiser) the temperatures. So a query s and a gallery frame with teacher logits l_T
are compared by the cosine of their CENTRED log-probability vectors, centred(log softmax(s / tau_s)) and
centred(log softmax((l_T - c) / tau_t)) = centred(s) / tau_s and centred(l_T - c) / tau_t, where centred(v) = v
minus its mean over the K prototypes and c is the checkpoint's own L_pred centre. Adding a constant to a query
changes no rank; the loss's minimiser has cosine 1 with its target. (The raw cosine of uncentred logits, the
metric before this protocol, depends on exactly the constant the loss leaves free: it scored the loss's
minimiser as low as a trained model.) The K-dim cosines are computed exactly in the span of the heads' last
layers, centres and the ones vector (internlm/eval/retrieval.py, LogitSpace).
Ranks: 1 + the number of other entries at least as similar (ties count against the query). Top-1 = % of
queries at rank 1; mAP = mean of 1 / rank (one correct entry per query), in %, each with its standard error.

Rows of one run (same clips, same gallery frames, same similarity; one table, one JSON):
  egoagent          the query above, with the clip's true poses as actions;
  shuffled_actions  the same query computed with the actions of another clip (clip (i + N/2) mod N, usually
                    another take: its poses and, with data.camera_motion, its camera motion): the gap to
                    `egoagent` is the evidence that the action is used;
  copy              the same checkpoint's gallery network on frame t itself ("nothing changes");
  reprojection      with data.camera_motion: the gallery network on frame t reprojected by the step's true camera
                    rotation (internlm/model/reprojection.py): what the action's ego-motion buys through geometry
                    alone, nothing learned. With model.prediction_reprojection it is EgoAgent's residual base,
                    and EgoAgent minus it is what the learned state prediction adds;
  stage1_copy       with --baseline_ckpt_folder: a stage-1 (representation-only) checkpoint's teacher on frame t
                    against its own representation of the next frames (the paper's Table 2 comparison);
  raw_pixels        the frames at the model's input size, flattened, cosine: frame t against the next frames;
  oracle            the loss's minimiser (tau_s / tau_t)(l_T(t+1) - c) from the gallery network's own next-frame
                    output: the protocol's ceiling and self-test, it must rank first for >= 99% of the queries
                    on any checkpoint, trained or not (a warning says so otherwise).
--oracle makes the oracle the headline number and the exit status the self-test (1 when it ranks first for
fewer than 99% of the queries). A stage-1 checkpoint has no prediction head: its run has the copy, raw-pixel
and oracle rows.

  python -u eval_feature_retrieval.py --config ${CONFIG} --launcher ${LAUNCHER} --port ${PORT} \\
      --eval_iters ${eval_iters} [--baseline_ckpt_folder save_ckpt/STAGE1_RUN]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from internlm.checkpoint.layout import CALIBRATION_FILE, read_meta
from internlm.data.build import build_eval_clip_dataset, build_eval_loader
from internlm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from internlm.eval.cli import (
    add_config_args,
    add_launch_args,
    default_output_dir,
    eval_checkpoint,
    format_table,
    load_eval_config,
    move,
    num_batches,
    progress,
    start,
    write_json,
)
from internlm.eval.distributed import gather_lists, gather_rows
from internlm.eval.plots import RetrievalExample, plot_retrieval_examples, to_image
from internlm.eval.retrieval import (
    Checkpoint,
    chance_level,
    deduplicate,
    load_checkpoint,
    other_clip_actions,
    paired_difference,
    rank_statistics,
    retrieval_ranks,
    step_keys,
    top_retrieved,
)
from internlm.initialize.arguments import ScriptArgumentParser
from internlm.initialize.launch import destroy_distributed

logger = logging.getLogger("eval_feature_retrieval")
ORACLE_FLOOR = 99.0  # % of queries the oracle must rank first
ROWS = {  # name -> what the query is (the JSON and the table say it)
    "egoagent": "state-prediction head, true actions",
    "shuffled_actions": "state-prediction head, actions of another clip",
    "copy": "same checkpoint's representation of frame t",
    "reprojection": "same checkpoint's representation of frame t reprojected by the step's camera rotation",
    "stage1_copy": "stage-1 checkpoint's representation of frame t",
    "raw_pixels": "pixels of frame t (cosine)",
    "oracle": "minimiser of L_pred from the target's own logits",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = ScriptArgumentParser(description=__doc__)
    add_config_args(p)
    add_launch_args(p)
    p.add_argument("--eval_iters", type=int, default=None, help="at most this many batches per rank (default: all)")
    p.add_argument("--ckpt_folder", default=None,
                   help="a checkpoint step folder, or a run folder (-> its newest complete step); default: the "
                        "newest complete checkpoint in the config's ckpt.save_ckpt_folder")
    p.add_argument("--gallery", choices=("teacher", "student"), default="teacher",
                   help="the network whose representation of the next frames is the gallery (default teacher: "
                        "the network L_pred targets); the query is always the student's prediction")
    p.add_argument("--baseline_ckpt_folder", default=None,
                   help="a stage-1 checkpoint (or run folder): adds its copy baseline (its --gallery network on "
                        "frame t against its representation of the next frames)")
    p.add_argument("--oracle", action="store_true",
                   help="report the oracle as the headline and exit 1 if it ranks first for < 99%% of queries")
    p.add_argument("--attn_backend", choices=("sdpa", "flex", "flash"), default="sdpa",
                   help="attention kernel (default sdpa: runs everywhere, same numbers as the others)")
    p.add_argument("--split", default=None, help="pose split (default: the config's data.egoexo_valid_split)")
    p.add_argument("--batch_size", type=int, default=16, help="clips per batch per rank")
    p.add_argument("--num_workers", type=int, default=None, help="loader workers (default: data.num_workers)")
    p.add_argument("--num_examples", type=int, default=4, help="example queries in the PNG")
    p.add_argument("--output_dir", default=None, help="default: outputs/feature_retrieval/{JOB_NAME}_step{step}")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ networks


# ------------------------------------------------------------------------------------------------ collection


@dataclass
class Collected:
    """This rank's queries (per row) and gallery candidates (per embedding space). Keys are (take_uid, frame)."""

    queries: dict = field(default_factory=dict)  # row -> list of (n, m) tensors
    galleries: dict = field(default_factory=dict)  # space -> list of (n, m) tensors
    query_current: list = field(default_factory=list)  # per query: key of frame t
    query_target: list = field(default_factory=list)  # per query: key of frame t+1
    query_step: list = field(default_factory=list)
    gallery_keys: list = field(default_factory=list)
    gallery_source: list = field(default_factory=list)  # (sample_id, step): where the candidate's image is

    def add(self, table: dict, name: str, rows: torch.Tensor) -> None:
        table.setdefault(name, []).append(rows.cpu())


ROW_SPACE = {"egoagent": "model", "shuffled_actions": "model", "copy": "model", "reprojection": "model",
             "oracle": "model", "stage1_copy": "stage1", "raw_pixels": "pixels"}


@torch.no_grad()
def collect(ck: Checkpoint, baseline, loader, dataset, ctx, total: int) -> Collected:
    out = Collected()
    for batch in progress(itertools.islice(loader, total), ctx, total, "retrieval"):
        batch = move(batch, ctx.device)
        frames = batch["frames"]  # (B, T, 3, P, P)
        B, T = frames.shape[:2]
        flat = frames.flatten(0, 1)  # (B*T, 3, P, P)
        logits = ck.gallery_net.represent(flat).logits.unflatten(0, (B, T))  # (B, T, K)
        now, nxt = logits[:, :T - 1].flatten(0, 1), logits[:, 1:].flatten(0, 1)  # frames t and t+1
        space = ck.space
        out.add(out.galleries, "model", space.gallery(nxt, ck.center))
        out.add(out.queries, "copy", space.query(space.minimiser(now, ck.center)))
        out.add(out.queries, "oracle", space.query(space.minimiser(nxt, ck.center)))
        motion, focal = batch.get("camera_motion"), batch.get("focal")  # (B, T, 12), (B,) with data.camera_motion
        reprojected = ck.reprojected_logits(frames, motion, focal) if motion is not None else None  # (B, T, K)
        if reprojected is not None:
            out.add(out.queries, "reprojection", space.query(space.minimiser(reprojected[:, :T - 1].flatten(0, 1),
                                                                             ck.center)))
        if ck.student.joint:
            pred = ck.predict(frames, batch["poses"], logits, motion, focal, reprojected)[:, :T - 1]  # (B, T-1, K)
            out.add(out.queries, "egoagent", space.query(pred.flatten(0, 1)))
            other = move(other_clip_actions(dataset, batch["sample_id"].tolist()), ctx.device)
            pred = ck.predict(frames, other["poses"], logits, other.get("camera_motion"), focal)[:, :T - 1]
            out.add(out.queries, "shuffled_actions", space.query(pred.flatten(0, 1)))
        if baseline is not None:
            b, bs = baseline.gallery_net.represent(flat).logits.unflatten(0, (B, T)), baseline.space
            out.add(out.galleries, "stage1", bs.gallery(b[:, 1:].flatten(0, 1), baseline.center))
            out.add(out.queries, "stage1_copy", bs.query(bs.minimiser(b[:, :T - 1].flatten(0, 1), baseline.center)))
        pixels = F.normalize(flat.flatten(1).float(), dim=1).unflatten(0, (B, T))  # (B, T, 3*P*P)
        out.add(out.galleries, "pixels", pixels[:, 1:].flatten(0, 1))
        out.add(out.queries, "raw_pixels", pixels[:, :T - 1].flatten(0, 1))
        current, target = step_keys(batch)
        out.query_current += current
        out.query_target += target
        out.gallery_keys += target
        for sample in batch["sample_id"].tolist():
            out.query_step += range(T - 1)
            out.gallery_source += [(sample, t + 1) for t in range(T - 1)]
    return out


@dataclass
class Gallery:
    emb: dict  # space -> (G, m) on the device, unit rows
    keys: list  # (take_uid, frame) of each entry
    sources: list  # (sample_id, step) of each entry: where its image is
    index_of: dict  # key -> entry


def build_gallery(got: Collected, ctx) -> Gallery:
    """Every rank's next frames, in rank order, de-duplicated by (take, frame); the same on every rank."""
    all_keys, all_sources = gather_lists(got.gallery_keys, ctx), gather_lists(got.gallery_source, ctx)
    kept, index_of = deduplicate(all_keys)
    emb = {}
    for space, parts in got.galleries.items():
        everything = gather_rows(torch.cat(parts), ctx, to_all=True)  # (sum of candidates, m)
        emb[space] = everything[kept].to(ctx.device)
    return Gallery(emb, [all_keys[i] for i in kept], [all_sources[i] for i in kept], index_of)


def rank_rows(got: Collected, gallery: Gallery, ctx) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> ({row: ranks (Q,)} of every rank's queries (rank 0; None elsewhere), steps (Q,), and this rank's
    targets and excluded entries (for the examples)."""
    targets = torch.tensor([gallery.index_of[k] for k in got.query_target], dtype=torch.int64)
    excluded = torch.tensor([gallery.index_of.get(k, -1) for k in got.query_current], dtype=torch.int64)
    ranks = {}
    for row, parts in got.queries.items():
        local = retrieval_ranks(torch.cat(parts).to(ctx.device), gallery.emb[ROW_SPACE[row]], targets, excluded)
        ranks[row] = gather_rows(local.cpu(), ctx)
    steps = gather_rows(torch.tensor(got.query_step, dtype=torch.int64), ctx)
    return ranks, steps, targets, excluded


# ------------------------------------------------------------------------------------------------ report


def example_rows(dataset, data_cfg, got: Collected, gallery: Gallery, targets, excluded, n: int) -> list:
    """n queries of rank 0, spread over its clips, with the top-5 of EgoAgent (or the oracle) and of the copy
    baseline (images re-read from the dataset)."""
    num_q = len(got.query_target)
    n = min(n, num_q)
    if n == 0:
        return []
    picked = torch.linspace(0, num_q - 1, n).round().long().unique().tolist()
    norm = (IMAGENET_MEAN, IMAGENET_STD) if data_cfg.norm_vid else (None, None)
    image = lambda src: to_image(dataset[src[0]]["frames"][src[1]], *norm)  # noqa: E731
    shown = ["egoagent" if "egoagent" in got.queries else "oracle", "copy"]
    space = gallery.emb["model"]
    top = {r: top_retrieved(torch.cat(got.queries[r])[picked].to(space.device), space,
                            excluded[picked].to(space.device), k=5) for r in shown}
    rows = []
    for i, q in enumerate(picked):
        tgt = int(targets[q])
        take, frame = got.query_current[q]
        sample, step = gallery.sources[tgt]  # the step before the true next frame in that clip is frame t
        retrieved = {r: [(image(gallery.sources[g]), g == tgt) for g in top[r][i].tolist()] for r in shown}
        rows.append(RetrievalExample(f"{take[:8]} f{frame}->{gallery.keys[tgt][1]}", image((sample, step - 1)),
                                     image(gallery.sources[tgt]), retrieved))
    return rows


def summarize(ranks: dict, steps: torch.Tensor, num_steps: int) -> dict:
    rows = {}
    for row, r in sorted(ranks.items(), key=lambda kv: list(ROWS).index(kv[0])):
        stats = rank_statistics(r)
        stats["per_step"] = [{"t": t, **rank_statistics(r[steps == t])} for t in range(num_steps)]
        stats["query"] = ROWS[row]
        rows[row] = stats
    return rows


def comparisons(ranks: dict) -> dict:
    """EgoAgent against each baseline and control on the same queries (paired differences with their SE)."""
    out = {}
    if "egoagent" in ranks:
        for other in ("copy", "stage1_copy", "shuffled_actions", "reprojection", "raw_pixels"):
            if other in ranks:
                out[f"egoagent_minus_{other}"] = paired_difference(ranks["egoagent"], ranks[other])
    return out


def report(args, cfg, ck: Checkpoint, baseline, rows: dict, compare: dict, gallery: Gallery, num_clips_in_split,
           split, examples, ctx, seconds: float) -> dict:
    step = read_meta(ck.folder).get("step")
    out_dir = args.output_dir or default_output_dir("feature_retrieval", cfg, step)
    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, "retrieval_examples.png")
    plot_retrieval_examples(png, examples)
    headline = "oracle" if args.oracle or "egoagent" not in rows else "egoagent"
    num_queries = rows[headline]["num_queries"]
    chance = chance_level(len(gallery.keys))
    order = [r for r in ROWS if r in rows]
    print(format_table(f"future-state retrieval: {num_queries} queries, gallery {len(gallery.keys)} frames "
                       f"({args.gallery} representation, step {step}); chance Top-1 {chance['top1']:.2f}%",
                       ["row", "Top-1 %", "+-", "mAP %", "+-", "query"],
                       [[r, rows[r]["top1"], rows[r]["top1_se"], rows[r]["mAP"], rows[r]["mAP_se"], rows[r]["query"]]
                        for r in order]))
    if compare:
        print(format_table("EgoAgent minus each baseline (paired over the same queries, points)",
                           ["comparison", "Top-1", "+-", "mAP", "+-"],
                           [[k, c["top1_diff"], c["top1_diff_se"], c["mAP_diff"], c["mAP_diff_se"]]
                            for k, c in compare.items()]))
    oracle_ok = rows["oracle"]["top1"] >= ORACLE_FLOOR
    if not oracle_ok:
        logger.warning("SELF-TEST FAILED: the oracle ranks first for %.2f%% of the queries (< %.0f%%): the gallery "
                       "holds near-duplicate frames or the similarity is broken; the numbers are not trustworthy",
                       rows["oracle"]["top1"], ORACLE_FLOOR)
    result = {
        "top1": rows[headline]["top1"], "mAP": rows[headline]["mAP"], "headline": headline,
        "per_step": rows[headline]["per_step"], "rows": rows, "comparisons": compare,
        "oracle_self_test": {"top1": rows["oracle"]["top1"], "floor": ORACLE_FLOOR, "passed": oracle_ok},
        "chance": chance, "num_queries": num_queries, "num_gallery": len(gallery.keys),
        "num_clips": num_queries // 3, "num_clips_in_split": num_clips_in_split, "split": split,
        "eval_iters": args.eval_iters, "checkpoint": os.path.abspath(ck.folder), "step": step,
        "config": os.path.abspath(args.config), "gallery": args.gallery, "center": ck.center_source,
        "baseline_checkpoint": os.path.abspath(baseline.folder) if baseline else None,
        "baseline_center": baseline.center_source if baseline else None,
        "similarity": "cosine of centred log-probabilities: centred(s) vs centred(l_T - c) (invariant to a "
                      "per-row constant and to the temperatures)",
        "ties": "counted against the query", "world_size": ctx.world_size, "png": os.path.abspath(png),
        "prediction_calibration": prediction_calibration(ck, step),
        "seconds": round(seconds, 1),
    }
    write_json(os.path.join(out_dir, "retrieval.json"), result)
    logger.info("wrote %s", os.path.join(out_dir, "retrieval.json"))
    return result


def prediction_calibration(ck, step) -> Optional[dict]:
    """The checkpoint's scale of the learned prediction change (model.prediction_residual) and, when the run chose it
    on held-out takes at this step (data.calibration_takes), that choice: {"scale", "calibrated", ...}."""
    if ck.prediction is None:
        return None
    scale = ck.prediction.change_scale
    path = os.path.join(os.path.dirname(os.path.abspath(ck.folder)), CALIBRATION_FILE)
    chosen = None
    if os.path.isfile(path):
        with open(path) as f:
            chosen = json.load(f)
    scale = round(float(scale), 6)  # older checkpoints hold a float32 buffer: 0.35 reads back as 0.3499999940
    if chosen is None or chosen.get("step") != step:
        return {"scale": scale, "calibrated": False}
    return dict(chosen, scale=scale, calibrated=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    ctx = start(args)
    cfg = load_eval_config(args)
    ck = load_checkpoint(eval_checkpoint(cfg, args.ckpt_folder, args.config), args.gallery, ctx.device,
                         args.attn_backend)
    baseline = None
    if args.baseline_ckpt_folder:
        baseline = load_checkpoint(eval_checkpoint(cfg, args.baseline_ckpt_folder, args.config), args.gallery,
                                   ctx.device, args.attn_backend)
    split = args.split or cfg.data.egoexo_valid_split
    dataset = build_eval_clip_dataset(cfg.data, split)
    workers = cfg.data.num_workers if args.num_workers is None else args.num_workers
    loader = build_eval_loader(dataset, args.batch_size, ctx.rank, ctx.world_size, workers)
    total = num_batches(len(dataset), args.batch_size, ctx.world_size, args.eval_iters)
    logger.info("%s: %d %s clips; student and %s of %s (centre: %s)%s", args.config, len(dataset), split,
                args.gallery, ck.folder, ck.center_source,
                f"; stage-1 baseline {baseline.folder}" if baseline else "")
    got = collect(ck, baseline, loader, dataset, ctx, total)
    gallery = build_gallery(got, ctx)
    ranks, steps, targets, excluded = rank_rows(got, gallery, ctx)
    code = 0
    if ctx.is_main:
        rows = summarize(ranks, steps, dataset.index.clip_steps - 1)
        examples = example_rows(dataset, cfg.data, got, gallery, targets, excluded, args.num_examples)
        result = report(args, cfg, ck, baseline, rows, comparisons(ranks), gallery, len(dataset), split, examples,
                        ctx, time.time() - t0)
        code = 1 if args.oracle and not result["oracle_self_test"]["passed"] else 0
    destroy_distributed()
    return code


if __name__ == "__main__":
    sys.exit(main())
