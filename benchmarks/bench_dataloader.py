"""Data-loading throughput: stage-1 multi-crop samples/s and stage-2 clips/s, against a plain PIL reference.

    python benchmarks/bench_dataloader.py                                # generates a small synthetic world
    python benchmarks/bench_dataloader.py --data data --workers 0 1 2 --seconds 20 --json out.json

Ours: the project's datasets (internlm/data: OpenCV decode, reduced JPEG decode, uint8 OpenCV augmentations).
Reference: the same samples through PIL, written here the way torchvision + DINO do it on PIL images (decode,
RandomResizedCrop bicubic, flip, ColorJitter via ImageEnhance/HSV, grayscale, GaussianBlur, solarize, to float,
normalise). Both read the same JPEG files (Ego-Exo4D processed frames, WalkingTours frame folders) with the same
crop sizes (init 300, global 224 x 2, local 112 x 6, stage-2 frames 224), through a DataLoader of W workers.
OpenCV runs one thread per process (as in training loaders), so "per worker" means per core for both.

The synthetic frames are small; to time realistic sizes the processed Ego-Exo4D frames are undistorted at
--frame-size (448 as the real preprocessing) and the WalkingTours frames are written at --wt-size (real WT is 4K).
Each rate is the best of --repeats measurements taken alternately (background load on a shared machine only
ever slows one down). Prints a table (ratio = ours / reference) and writes JSON with date, machine, command.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import sys
import tempfile
import time

import cv2
import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torch.utils.data import DataLoader, Dataset

from internlm.config.schema import DataConfig
from internlm.data.build import build_train_dataset
from internlm.data.egoexo_format import processed_frame_path
from internlm.data.sampler import StepBatchSampler
from internlm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from internlm.initialize.arguments import ScriptArgumentParser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = ScriptArgumentParser(description=__doc__)
    p.add_argument("--data", default=None, help="a synthetic-world folder (make_synthetic_egoworld.py --out); "
                                                "default: generate a small one in a temporary folder")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per measurement")
    p.add_argument("--repeats", type=int, default=2,
                   help="measurements per pipeline, alternating ours and the reference; the best counts "
                        "(a shared machine's background load only ever slows a measurement down)")
    p.add_argument("--batch", type=int, default=16, help="samples per loader batch")
    p.add_argument("--frame_size", type=int, default=448, help="undistorted Ego-Exo4D frame side (px)")
    p.add_argument("--wt_size", default="1920x1080", help="WalkingTours frame size WxH (px)")
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results", "dataloader.json"))
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ data


def prepare_world(args) -> str:
    """A world with processed Ego-Exo4D frames at --frame-size and WalkingTours frame folders at --wt-size."""
    import importlib.util

    root = args.data or tempfile.mkdtemp(prefix="bench_dataloader_")
    if not os.path.isdir(os.path.join(root, "egoexo4d_v2")):
        from internlm.data.synthetic import generate_world, resolve_size

        generate_world(root, 0, resolve_size("small"), workers=os.cpu_count() or 1, progress=False)

    def script(name):
        spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "dataset_preprocess", f"{name}.py"))
        module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module

    frames = os.path.join(root, "bench", f"processed_{args.frame_size}")
    if not os.path.isdir(frames):
        script("undistort_egovideos").run(os.path.join(root, "egoexo4d_v2"), frames, size=args.frame_size,
                                          workers=os.cpu_count() or 1, progress=False, echo=False)
    if not os.path.isdir(os.path.join(root, "egoexo4d_body_pose")):
        script("preprocess_egoexo_body_pose").run(os.path.join(root, "egoexo4d_v2"),
                                                  os.path.join(root, "egoexo4d_body_pose"), progress=False, echo=False)
    width, height = map(int, args.wt_size.split("x"))
    wt_root = os.path.join(root, "bench", f"wt_{width}x{height}")
    for video in sorted(os.listdir(os.path.join(root, "WTour"))):
        folder = os.path.join(wt_root, os.path.splitext(video)[0])
        if os.path.isdir(folder):
            continue
        os.makedirs(folder)
        capture, k = cv2.VideoCapture(os.path.join(root, "WTour", video)), 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            big = cv2.resize(frame, (width, height), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(os.path.join(folder, f"frame_{k + 1:07d}.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 95])
            k += 1
    return root


def configs(root: str, args) -> tuple[DataConfig, DataConfig]:
    wt_folders = sorted(os.path.join(root, "bench", f"wt_{args.wt_size}", d)
                        for d in os.listdir(os.path.join(root, "bench", f"wt_{args.wt_size}")))
    common = dict(egoexo_frames_folder=os.path.join(root, "bench", f"processed_{args.frame_size}"),
                  egoexo_pose_folder=os.path.join(root, "egoexo4d_body_pose"), num_workers=0, seed=0)
    # crop sizes: the DataConfig defaults, those of the real configs (300 / 224 / 112 x 6, frames 224)
    stage1 = DataConfig(train_folder=wt_folders, use_egoexo=True, step_between_clips=5, **common)
    stage2 = DataConfig(dataset_type="EgoExoClips", **common)
    return stage1, stage2


# ---------------------------------------------------------------------------------- the PIL reference


def pil_random_resized_crop(img: Image.Image, size: int, scale, rnd: random.Random) -> Image.Image:
    width, height = img.size
    area = width * height
    for _ in range(10):
        target = area * rnd.uniform(*scale)
        aspect = math.exp(rnd.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = rnd.randint(0, height - h), rnd.randint(0, width - w)
            return img.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return img.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side))


def pil_adjust_hue(img: Image.Image, hue: float) -> Image.Image:
    h, s, v = img.convert("HSV").split()
    shifted = np.array(h, np.uint8)
    shifted += np.uint8(int(round(hue * 255)) % 256)
    return Image.merge("HSV", (Image.fromarray(shifted), s, v)).convert("RGB")


def pil_photometric(img: Image.Image, blur_p: float, solarize_p: float, rnd: random.Random) -> Image.Image:
    if rnd.random() < 0.5:
        img = ImageOps.mirror(img)
    if rnd.random() < 0.8:
        factors = [rnd.uniform(0.6, 1.4), rnd.uniform(0.6, 1.4), rnd.uniform(0.8, 1.2), rnd.uniform(-0.1, 0.1)]
        for op in rnd.sample(range(4), 4):
            if op == 0:
                img = ImageEnhance.Brightness(img).enhance(factors[0])
            elif op == 1:
                img = ImageEnhance.Contrast(img).enhance(factors[1])
            elif op == 2:
                img = ImageEnhance.Color(img).enhance(factors[2])
            else:
                img = pil_adjust_hue(img, factors[3])
    if rnd.random() < 0.2:
        img = img.convert("L").convert("RGB")
    if rnd.random() < blur_p:
        img = img.filter(ImageFilter.GaussianBlur(radius=rnd.uniform(0.1, 2.0)))
    if rnd.random() < solarize_p:
        img = ImageOps.solarize(img, 128)
    return img


_MEAN, _STD = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """ToTensor + Normalize: (3, H, W) float32."""
    arr = (np.asarray(img, np.float32) / 255.0 - _MEAN) / _STD
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def pil_multicrop(img: Image.Image, rnd: random.Random) -> dict:
    init = pil_random_resized_crop(img, 300, (0.2, 1.0), rnd)
    views = [pil_photometric(pil_random_resized_crop(init, 224, (0.4, 1.0), rnd), p_blur, p_sol, rnd)
             for p_blur, p_sol in ((1.0, 0.0), (0.1, 0.2))]
    local = [pil_photometric(pil_random_resized_crop(init, 112, (0.05, 0.4), rnd), 0.5, 0.0, rnd) for _ in range(6)]
    return {"global_crops": torch.stack([pil_to_tensor(v) for v in views]),
            "local_crops": torch.stack([pil_to_tensor(v) for v in local])}


class PILFrames(Dataset):
    """Stage-1 reference over the same frame files as the project's dataset."""

    def __init__(self, ours):
        self.names = [ours.frames.name(i) for i in range(len(ours))]

    def __len__(self):
        return len(self.names)

    def __getitem__(self, key):
        index, draw_id = key
        img = Image.open(self.names[index]).convert("RGB")
        return {**pil_multicrop(img, random.Random(draw_id)), "sample_id": index}


class PILClips(Dataset):
    """Stage-2 reference: the same clips (poses from the project's index), images through PIL."""

    def __init__(self, ours):
        self.ours = ours

    def __len__(self):
        return len(self.ours)

    def __getitem__(self, key):
        index, draw_id = key
        rnd = random.Random(draw_id)
        take, frame_ids = self.ours.clip_meta(index)
        crop_step = rnd.randrange(len(frame_ids))
        frames, sample = [], {}
        for t, frame in enumerate(frame_ids):
            img = Image.open(processed_frame_path(self.ours.frames_folder, take, int(frame))).convert("RGB")
            frames.append(pil_to_tensor(img.resize((224, 224), Image.BICUBIC)))
            if t == crop_step:
                sample.update(pil_multicrop(img, rnd))
        return {**sample, "frames": torch.stack(frames), "poses": self.ours.clip_poses(index),
                "frame_ids": torch.from_numpy(frame_ids), "sample_id": index}


# ------------------------------------------------------------------------------------------- timing


def throughput(dataset, workers: int, batch: int, seconds: float) -> float:
    """Samples/s over ``seconds`` after the first batch (worker start-up and first decode excluded)."""
    sampler = StepBatchSampler(len(dataset), batch, seed=1)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, persistent_workers=False,
                        prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it)
    start, samples = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        samples += len(next(it)["sample_id"])
    elapsed = time.perf_counter() - start
    del it
    return samples / elapsed


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cv2.setNumThreads(1)  # one core per loader process, ours and the reference alike
    root = prepare_world(args)
    stage1_cfg, stage2_cfg = configs(root, args)
    ours1 = build_train_dataset(stage1_cfg)
    ours2 = build_train_dataset(stage2_cfg, cache_dir=os.path.join(root, "bench", "pose_index_cache"))
    pipelines = [("stage1 multi-crop", "PIL reference", PILFrames(ours1)), ("stage1 multi-crop", "ours", ours1),
                 ("stage2 clips", "PIL reference", PILClips(ours2)), ("stage2 clips", "ours", ours2)]
    rows = []
    for workers in args.workers:
        for first in range(0, len(pipelines), 2):  # a stage's reference and ours, alternating
            rates = {name: [] for _, name, _ in pipelines[first:first + 2]}
            for _ in range(args.repeats):
                for stage, name, dataset in pipelines[first:first + 2]:
                    rates[name].append(throughput(dataset, workers, args.batch, args.seconds))
                    print(f"  {stage:18s} {name:14s} workers={workers}: {rates[name][-1]:8.2f} samples/s", flush=True)
            for name, measured in rates.items():
                rows.append({"stage": pipelines[first][0], "pipeline": name, "workers": workers,
                             "samples_per_s": round(max(measured), 2), "measurements": [round(r, 2) for r in measured]})
    ref = {(r["stage"], r["workers"]): r["samples_per_s"] for r in rows if r["pipeline"] == "PIL reference"}
    for r in rows:
        r["ratio_vs_reference"] = round(r["samples_per_s"] / ref[(r["stage"], r["workers"])], 2)
        r["samples_per_s_per_worker"] = round(r["samples_per_s"] / max(1, r["workers"]), 2)  # 0: the main process

    print(f"\n{'stage':18s} {'workers':>7s} {'PIL ref /s':>11s} {'ours /s':>9s} {'ratio':>6s}")
    for r in rows:
        if r["pipeline"] == "ours":
            print(f"{r['stage']:18s} {r['workers']:7d} {ref[(r['stage'], r['workers'])]:11.2f} "
                  f"{r['samples_per_s']:9.2f} {r['ratio_vs_reference']:5.2f}x")
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), "command": " ".join(["python"] + sys.argv),
        "torch": torch.__version__, "opencv": cv2.__version__, "pillow": Image.__version__,
        "data": {"root": root, "egoexo_frame_size": args.frame_size, "walkingtours_frame_size": args.wt_size,
                 "stage1_frames": len(ours1), "stage2_clips": len(ours2), "batch": args.batch,
                 "seconds_per_measurement": args.seconds, "repeats": args.repeats},
        "results": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
