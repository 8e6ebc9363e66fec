"""ImageNet kNN evaluation of an EgoAgent image encoder exported to Hugging Face format.

Protocol: ImageFolder train/ and val/ under --data_path (ImageNet-100 or -1K: --imgnet 100|1000). Every image:
resize the shorter side to 256 (bicubic when enlarging; when shrinking, OpenCV's antialiased area filter, see
internlm/data/transforms.py), center crop 224, ImageNet mean/std normalisation. Feature: the state-query output
after the final norm of the converted backbone (the HF model's pooler_output; tools/convert2hf_dino_conv_stem_cls.py
exports the teacher weights by default), L2-normalised.
Weighted kNN: for each val image the k = 20 most cosine-similar train images vote for their class with weight
exp(sim / T), T = 0.07; a class's score is the sum of its weights; Top-1 / Top-5 accuracy in % (a class no
neighbour voted for never counts among the top 5).
Features are extracted by every rank on its shard of the images and gathered to rank 0, which runs the vote in
chunks of val images.
Reference rows in the same run, on the same split and crops: --untrained_weights (an export of the same config
at its initialisation: what the architecture gives without learning) and --raw_pixels (the normalised crop
itself, flattened and L2-normalised: what needs no network at all). Each row has the standard error of its
Top-1, sqrt(p (1 - p) / n_val).

  python tools/convert2hf_dino_conv_stem_cls.py --src_folder save_ckpt/${model_name} --remove_vq_embed
  torchrun --nproc_per_node=4 eval_knn_conv_stem_cls.py --pretrained_weights hf_models/${model_name}/ \\
      --data_path ${imagenet_path} --imgnet 1000
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time

import torch

from internlm.data.build import build_eval_loader, build_image_folder
from internlm.eval.cli import add_launch_args, format_table, progress, start, write_json
from internlm.eval.distributed import gather_rows
from internlm.eval.knn import knn_classify
from internlm.initialize.arguments import ScriptArgumentParser
from internlm.initialize.launch import destroy_distributed

logger = logging.getLogger("eval_knn")


def parse_args(argv=None) -> argparse.Namespace:
    p = ScriptArgumentParser(description=__doc__)
    p.add_argument("--pretrained_weights", required=True,
                   help="a Hugging Face folder written by tools/convert2hf_dino_conv_stem_cls.py")
    p.add_argument("--data_path", required=True, help="ImageFolder root with train/CLASS/* and val/CLASS/*")
    p.add_argument("--imgnet", type=int, choices=(0, 100, 1000), default=1000,
                   help="ImageNet-100 or -1K: the number of classes the train/ folder must have (a mismatch is "
                        "reported, and recorded in the JSON, but the evaluation still runs); 0: any ImageFolder "
                        "(e.g. the synthetic world's), no check")
    p.add_argument("--nb_knn", type=int, nargs="+", default=[20], help="k (several values: one result each)")
    p.add_argument("--temperature", type=float, default=0.07, help="T of the vote weight exp(sim / T)")
    p.add_argument("--batch_size_per_gpu", type=int, default=64)
    p.add_argument("--num_workers", type=int, default=4)
    p.add_argument("--resize", type=int, default=256, help="shorter image side before the center crop")
    p.add_argument("--crop", type=int, default=224, help="center crop size (a multiple of the patch size)")
    p.add_argument("--queries_per_chunk", type=int, default=1024, help="val images per similarity chunk")
    p.add_argument("--untrained_weights", default=None,
                   help="a Hugging Face export of the same config at its initialisation (tools/"
                        "make_untrained_checkpoint.py, then the converter): scored as the 'untrained' row")
    p.add_argument("--raw_pixels", action="store_true", help="also score the raw pixels of the crop (a row)")
    p.add_argument("--output", default=None, help="results JSON (default: outputs/knn/{model folder name}.json)")
    add_launch_args(p)
    return p.parse_args(argv)


def load_encoder(folder: str, ctx, option: str = "--pretrained_weights"):
    import torch.distributed as dist
    import transformers

    check_hf_export(folder, option)
    # Rank 0 first: transformers copies the folder's code into its module cache, which ranks must not race on.
    if ctx.is_distributed and not ctx.is_main:
        dist.barrier()
    model = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)
    if ctx.is_distributed and ctx.is_main:
        dist.barrier()
    return model.to(ctx.device).eval()


def check_hf_export(folder: str, option: str) -> None:
    """Stop with what to do when ``folder`` is not a Hugging Face export: a training run or step folder (it has a
    config.json too, the resolved training config, which transformers would misread), or nothing loadable."""
    from internlm.checkpoint.layout import STUDENT_FILE, TEACHER_FILE, latest_checkpoint

    convert = ("convert it first: python tools/convert2hf_dino_conv_stem_cls.py --src_folder {} --tgt_folder "
               "hf_models/NAME --remove_vq_embed, then pass hf_models/NAME")
    if any(os.path.isfile(os.path.join(folder, f)) for f in (STUDENT_FILE, TEACHER_FILE)):
        raise SystemExit(f"{option} {folder}: a training checkpoint step folder, not a Hugging Face export; "
                         + convert.format(folder))
    if os.path.isdir(folder) and latest_checkpoint(folder) is not None:
        raise SystemExit(f"{option} {folder}: a training run folder (newest step "
                         f"{os.path.basename(latest_checkpoint(folder))}), not a Hugging Face export; "
                         + convert.format(folder))
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise SystemExit(f"{option} {folder}: no config.json (not a Hugging Face export); a training checkpoint: "
                         + convert.format("save_ckpt/RUN"))


@torch.no_grad()
def extract_features(model, dataset, args, ctx, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, d) L2-normalised pooler outputs (``model`` None: the flattened pixels) and (N,) labels in dataset
    order, on rank 0 (None elsewhere)."""
    loader = build_eval_loader(dataset, args.batch_size_per_gpu, ctx.rank, ctx.world_size, args.num_workers)
    feats, labels = [], []
    for images, targets in progress(loader, ctx, len(loader), f"features {what}"):
        images = images.to(ctx.device, non_blocking=True)
        out = images.flatten(1) if model is None else model(pixel_values=images).pooler_output  # (b, d)
        feats.append(torch.nn.functional.normalize(out.float(), dim=1).cpu())
        labels.append(targets)
    dim = 3 * args.crop * args.crop if model is None else model.config.hidden_size
    local_feats = torch.cat(feats) if feats else torch.zeros(0, dim)
    local_labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    return gather_rows(local_feats, ctx), gather_rows(local_labels, ctx)


def check_same_architecture(config, other, path: str) -> None:
    keys = ("hidden_size", "num_layers", "num_attention_heads", "patch_size", "mlp_ratio")
    diff = {k: (getattr(config, k, None), getattr(other, k, None)) for k in keys
            if getattr(config, k, None) != getattr(other, k, None)}
    if diff:
        raise SystemExit(f"--untrained_weights {path}: not the architecture of --pretrained_weights "
                         f"({', '.join(f'{k} {a} vs {b}' for k, (a, b) in diff.items())})")


def class_count_check(train_classes: list, imgnet: int, root: str, ctx) -> str:
    if imgnet == 0:
        return f"not checked (--imgnet 0): {len(train_classes)} classes"
    if len(train_classes) == imgnet:
        return "ok"
    msg = (f"class-count mismatch: --imgnet {imgnet} expects {imgnet} classes, {root} has {len(train_classes)}; "
           f"the accuracies below are NOT ImageNet-{imgnet} numbers")
    if ctx.is_main:
        logger.warning(msg)
    return msg


def val_labels_in_train_order(train, val) -> torch.Tensor:
    """val targets re-indexed by the train set's class order (the folders may list different classes)."""
    index = {name: i for i, name in enumerate(train.classes)}
    extra = [name for name in val.classes if name not in index]
    if extra:
        raise SystemExit(f"val/ has classes that train/ lacks: {extra[:5]}")
    return torch.tensor([index[name] for name in val.classes], dtype=torch.int64)


def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = start(args)
    t0 = time.time()
    splits = {s: os.path.join(args.data_path, s) for s in ("train", "val")}
    for split, path in splits.items():
        if not os.path.isdir(path):
            raise SystemExit(f"--data_path {args.data_path}: missing {split}/ (expected {path}/CLASS/IMAGE)")
    try:
        train = build_image_folder(splits["train"], args.resize, args.crop)
        val = build_image_folder(splits["val"], args.resize, args.crop)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"--data_path {args.data_path}: {err}") from None
    check = class_count_check(train.classes, args.imgnet, splits["train"], ctx)
    val_to_train = val_labels_in_train_order(train, val)
    logger.info("kNN: %d train / %d val images, %d classes; %s", len(train), len(val), len(train.classes),
                args.pretrained_weights)
    model = load_encoder(args.pretrained_weights, ctx)
    encoders = {"model": model}
    if args.untrained_weights:
        encoders["untrained"] = load_encoder(args.untrained_weights, ctx, "--untrained_weights")
        check_same_architecture(model.config, encoders["untrained"].config, args.untrained_weights)
    if args.raw_pixels:
        encoders["raw_pixels"] = None
    rows = {}
    for name, encoder in encoders.items():
        train_feats, train_labels = extract_features(encoder, train, args, ctx, f"train ({name})")
        val_feats, val_labels = extract_features(encoder, val, args, ctx, f"val ({name})")
        if not ctx.is_main:
            continue
        results = []
        for k in args.nb_knn:
            r = knn_classify(train_feats.to(ctx.device), train_labels, val_feats.to(ctx.device),
                             val_to_train[val_labels], len(train.classes), k, args.temperature, args.queries_per_chunk)
            results.append({"k": k, "k_used": r.k, "top1": r.top1, "top5": r.top5, "top_n": r.top_n,
                            "top1_se": 100.0 * math.sqrt(r.top1 / 100 * (1 - r.top1 / 100) / max(r.num_test, 1))})
        rows[name] = {"top1": results[0]["top1"], "top5": results[0]["top5"], "top1_se": results[0]["top1_se"],
                      "results": results, "feature_dim": int(train_feats.shape[1])}
    if ctx.is_main:
        results = rows["model"]["results"]
        print(format_table(f"weighted kNN (T={args.temperature}) on {args.data_path}",
                           ["features", "k", "Top-1 %", "+-", "Top-5 %"],
                           [[name, r["k_used"], r["top1"], r["top1_se"], r["top5"]]
                            for name, row in rows.items() for r in row["results"]]))
        out = args.output or os.path.join("outputs", "knn", os.path.basename(os.path.normpath(
            args.pretrained_weights)) + ".json")
        write_json(out, {
            "protocol": f"resize {args.resize}, center crop {args.crop}, ImageNet norm; pooler_output L2-normalised; "
                        "weighted kNN, weight exp(sim/T), class score = sum of the weights of the k neighbours",
            "top1": results[0]["top1"], "top5": results[0]["top5"], "top1_se": results[0]["top1_se"],
            "results": results, "rows": rows, "untrained_weights": args.untrained_weights and
            os.path.abspath(args.untrained_weights),
            "temperature": args.temperature, "resize": args.resize, "crop": args.crop,
            "num_train": len(train), "num_val": len(val), "num_classes": len(train.classes), "imgnet": args.imgnet,
            "class_count_check": check, "pretrained_weights": os.path.abspath(args.pretrained_weights),
            "source_checkpoint": getattr(model.config, "source_checkpoint", ""),
            "source_weights": getattr(model.config, "source_weights", ""), "feature_dim": rows["model"]["feature_dim"],
            "world_size": ctx.world_size, "seconds": round(time.time() - t0, 1),
        })
        logger.info("wrote %s", out)
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
