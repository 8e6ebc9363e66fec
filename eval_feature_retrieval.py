"""Future-state retrieval on the Ego-Exo4D val clips (the paper's world-model evaluation).

Protocol: every val clip (20 frames at 30 fps, T = 4 steps of 5 frames, the image of step t = its first frame)
gives T - 1 = 3 queries, t = 0, 1, 2. Query = the model's prediction of frame t+1: the state-prediction head
output at the future-state query of step t (the student by default). Gallery = the representation-head output
of every real next frame (steps 1..3 of every clip), de-duplicated by (take_uid, frame) because the same frame
is the next frame of several overlapping clips; the query's own current frame t is removed from its gallery.
The correct entry is the true next frame (same take and frame). Similarity: cosine between the K-dim head
outputs (computed exactly in the column space of the representation head's last layer, r = 256 dims in the
paper configs, instead of K = 65536). Ranks:
1 + the number of other entries at least as similar (ties count against the query). Top-1 = % of queries with
rank 1; mAP = mean of 1 / rank (one correct entry per query), in %.
--baseline representation: query = the representation-head output of frame t itself (works with a stage-1
checkpoint): the paper's representation-only comparison.

  python -u eval_feature_retrieval.py --config ${CONFIG} --launcher ${LAUNCHER} --port ${PORT} \\
      --eval_iters ${eval_iters}
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import time
from dataclasses import dataclass

import torch

from internlm.checkpoint.layout import read_meta
from internlm.data.build import build_eval_clip_dataset, build_eval_loader
from internlm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from internlm.eval.cli import (
    add_checkpoint_args,
    add_config_args,
    add_launch_args,
    format_table,
    move,
    num_batches,
    progress,
    start_checkpoint_eval,
    write_json,
)
from internlm.eval.distributed import gather_lists, gather_rows, sum_over_ranks
from internlm.eval.plots import RetrievalExample, plot_retrieval_examples, to_image
from internlm.eval.retrieval import (
    LogitSubspace,
    deduplicate,
    rank_sums,
    retrieval_ranks,
    summary_from_sums,
    top_retrieved,
)
from internlm.initialize.launch import destroy_distributed

logger = logging.getLogger("eval_feature_retrieval")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    add_launch_args(p)
    p.add_argument("--eval_iters", type=int, default=None, help="at most this many batches per rank (default: all)")
    p.add_argument("--baseline", choices=("representation",), default=None,
                   help="representation: query = the representation of frame t itself")
    add_checkpoint_args(p, default_which="model")
    p.add_argument("--split", default=None, help="pose split (default: the config's data.egoexo_valid_split)")
    p.add_argument("--batch_size", type=int, default=16, help="clips per batch per rank")
    p.add_argument("--num_workers", type=int, default=None, help="loader workers (default: data.num_workers)")
    p.add_argument("--num_examples", type=int, default=4, help="example queries in the PNG")
    p.add_argument("--output_dir", default=None,
                   help="default: outputs/feature_retrieval/{JOB_NAME}_step{step}[_baseline_representation]")
    return p.parse_args(argv)


class Collected:
    """This rank's queries and gallery candidates. Keys are (take_uid, frame number)."""

    def __init__(self):
        self.query_emb, self.gallery_emb = [], []  # (n, r) tensors
        self.query_current, self.query_target, self.query_step = [], [], []  # per query
        self.gallery_keys, self.gallery_source = [], []  # per candidate: key, (sample_id, step)


@torch.no_grad()
def collect(model, loader, subspace: LogitSubspace, baseline: bool, ctx, total: int) -> Collected:
    out = Collected()
    for batch in progress(itertools.islice(loader, total), ctx, total, "retrieval"):
        batch = move(batch, ctx.device)
        frames, frame_ids = batch["frames"], batch["frame_ids"].tolist()  # (B, T, 3, P, P), (B, T)
        B, T = frames.shape[:2]
        first = 0 if baseline else 1  # the baseline also needs frame t's representation
        rep = model.represent(frames[:, first:].flatten(0, 1)).logits.unflatten(0, (B, T - first))  # (B, T', K)
        next_logits = rep[:, 1 - first:]  # (B, T-1, K): frames 1..T-1
        if baseline:
            query_logits = rep[:, :T - 1]  # frames 0..T-2
        else:
            query_logits = model.forward_joint(frames, batch["poses"], with_logits=True).future_logits[:, :T - 1]
        out.query_emb.append(subspace.queries(query_logits.flatten(0, 1)).cpu())  # (B*(T-1), r)
        out.gallery_emb.append(subspace.gallery(next_logits.flatten(0, 1)).cpu())
        for b in range(B):
            take, sample = batch["take_uid"][b], int(batch["sample_id"][b])
            for t in range(T - 1):
                out.query_current.append((take, frame_ids[b][t]))
                out.query_target.append((take, frame_ids[b][t + 1]))
                out.query_step.append(t)
                out.gallery_keys.append((take, frame_ids[b][t + 1]))
                out.gallery_source.append((sample, t + 1))
    return out


def example_rows(dataset, data_cfg, queries, gallery: "Gallery", excluded, targets, current, n: int) -> list:
    """n queries of rank 0, spread over its clips, with their top-5 (images re-read from the dataset)."""
    n = min(n, queries.shape[0])
    if n == 0:
        return []
    picked = torch.linspace(0, queries.shape[0] - 1, n).round().long().unique()  # (n,)
    queries, excluded = queries[picked.to(queries.device)], excluded[picked.to(excluded.device)]
    targets, current = targets[picked], [current[i] for i in picked.tolist()]
    top = top_retrieved(queries, gallery.emb, excluded, k=5)  # (n, 5)
    keys, sources = gallery.keys, gallery.sources
    norm = (IMAGENET_MEAN, IMAGENET_STD) if data_cfg.norm_vid else (None, None)
    image = lambda src: to_image(dataset[src[0]]["frames"][src[1]], *norm)  # noqa: E731
    rows = []
    for q in range(len(current)):
        tgt = int(targets[q])
        take, frame = current[q]
        retrieved = [(image(sources[g]), g == tgt, float(queries[q] @ gallery.emb[g])) for g in top[q].tolist()]
        sample, step = sources[tgt]  # the step before the true next frame in that clip is the current frame
        rows.append(RetrievalExample(f"{take[:8]} f{frame}->{keys[tgt][1]}", image((sample, step - 1)),
                                     image(sources[tgt]), retrieved))
    return rows


@dataclass
class Gallery:
    emb: torch.Tensor  # (G, r) on the device, unit norm
    keys: list  # (take_uid, frame) of each entry
    sources: list  # (sample_id, step) of each entry: where its image is
    index_of: dict  # key -> entry


def build_gallery(got: Collected, dim: int, ctx) -> Gallery:
    """Every rank's next frames, in rank order, de-duplicated by (take, frame); the same on every rank."""
    local = torch.cat(got.gallery_emb) if got.gallery_emb else torch.zeros(0, dim)
    everything = gather_rows(local, ctx, to_all=True)  # (sum of candidates, r)
    all_keys, all_sources = gather_lists(got.gallery_keys, ctx), gather_lists(got.gallery_source, ctx)
    kept, index_of = deduplicate(all_keys)
    return Gallery(everything[kept].to(ctx.device), [all_keys[i] for i in kept], [all_sources[i] for i in kept],
                   index_of)


def step_sums(got: Collected, gallery: Gallery, num_steps: int, ctx) -> tuple[torch.Tensor, tuple]:
    """Rank this rank's queries -> (num_steps, 3) rank sums per query step t added over all ranks, and
    (queries, targets, excluded) for the examples."""
    dim = gallery.emb.shape[1]
    queries = torch.cat(got.query_emb).to(ctx.device) if got.query_emb else torch.zeros(0, dim, device=ctx.device)
    targets = torch.tensor([gallery.index_of[k] for k in got.query_target], dtype=torch.int64)
    excluded = torch.tensor([gallery.index_of.get(k, -1) for k in got.query_current], dtype=torch.int64)
    ranks = retrieval_ranks(queries, gallery.emb, targets, excluded).cpu()
    steps = torch.tensor(got.query_step, dtype=torch.int64)
    sums = torch.stack([rank_sums(ranks[steps == t]) for t in range(num_steps)])  # (num_steps, 3)
    return sum_over_ranks(sums, ctx), (queries, targets, excluded.to(ctx.device))


def report(args, cfg, folder: str, sums: torch.Tensor, gallery: Gallery, num_clips_in_split: int, split: str,
           examples: list, ctx, seconds: float) -> None:
    overall = summary_from_sums(sums.sum(dim=0))
    per_step = [{"t": t, **summary_from_sums(sums[t])} for t in range(sums.shape[0])]
    step = read_meta(folder).get("step")
    baseline = args.baseline == "representation"
    out_dir = args.output_dir or os.path.join("outputs", "feature_retrieval", f"{cfg.JOB_NAME}_step{step}"
                                              + ("_baseline_representation" if baseline else ""))
    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, "retrieval_examples.png")
    plot_retrieval_examples(png, examples)
    title = (f"{'representation baseline' if baseline else 'future-state prediction'}: {overall['num_queries']} "
             f"queries, gallery {len(gallery.keys)} frames ({args.which} weights, step {step})")
    print(format_table(title, ["query step t", "Top-1 %", "mAP %", "queries"],
                       [[s["t"], s["top1"], s["mAP"], s["num_queries"]] for s in per_step]
                       + [["all", overall["top1"], overall["mAP"], overall["num_queries"]]]))
    write_json(os.path.join(out_dir, "retrieval.json"), {
        "top1": overall["top1"], "mAP": overall["mAP"], "per_step": per_step,
        "num_queries": overall["num_queries"], "num_gallery": len(gallery.keys),
        "num_clips": overall["num_queries"] // max(sums.shape[0], 1), "num_clips_in_split": num_clips_in_split,
        "split": split, "eval_iters": args.eval_iters, "checkpoint": os.path.abspath(folder), "step": step,
        "config": os.path.abspath(args.config), "which": args.which, "baseline": args.baseline or "none",
        "world_size": ctx.world_size, "similarity": "cosine of the K-dim head outputs",
        "ties": "counted against the query", "png": os.path.abspath(png), "seconds": round(seconds, 1),
    })
    logger.info("wrote %s", os.path.join(out_dir, "retrieval.json"))


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    ctx, cfg, model, folder = start_checkpoint_eval(args)
    baseline = args.baseline == "representation"
    if not baseline and not model.joint:
        raise SystemExit(f"{folder} is a stage-1 checkpoint (no state-prediction head): evaluate it with "
                         "--baseline representation, or pass a stage-2 checkpoint")
    split = args.split or cfg.data.egoexo_valid_split
    dataset = build_eval_clip_dataset(cfg.data, split)
    workers = cfg.data.num_workers if args.num_workers is None else args.num_workers
    loader = build_eval_loader(dataset, args.batch_size, ctx.rank, ctx.world_size, workers)
    total = num_batches(len(dataset), args.batch_size, ctx.world_size, args.eval_iters)
    logger.info("%s: %d %s clips, %s weights of %s%s", args.config, len(dataset), split, args.which, folder,
                " (baseline: representation)" if baseline else "")
    subspace = LogitSubspace(model.rep_head.last_layer.weight)
    got = collect(model, loader, subspace, baseline, ctx, total)
    gallery = build_gallery(got, subspace.basis.shape[1], ctx)
    sums, (queries, targets, excluded) = step_sums(got, gallery, dataset.index.clip_steps - 1, ctx)
    if ctx.is_main:
        examples = example_rows(dataset, cfg.data, queries, gallery, excluded, targets, got.query_current,
                                args.num_examples)
        report(args, cfg, folder, sums, gallery, len(dataset), split, examples, ctx, time.time() - t0)
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
