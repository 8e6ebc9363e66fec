"""The main job: the whole EgoAgent pipeline on the built-in synthetic world, on a CPU, in minutes.

    python tools/run_demo.py [--seed 0] [--data data/synthetic] [--out runs/demo]

Every step is a command of this repository, printed before it runs, so any step can be rerun on its own:
  world      generate the synthetic egocentric world (raw Ego-Exo4D layout, WalkingTours-style walks, ImageFolder)
  undistort  fisheye videos -> pinhole frames (every 5th frame)
  poses      raw body-pose annotations -> camera-frame pose fragments
  stage1     DINO pretraining on the walks and the frames (configs/demo/stage1_dino_tiny.py)
  stage2     joint representation / prediction / action training from stage 1 (configs/demo/stage2_joint_tiny.py)
  convert    the stage-2 (and stage-1, and untrained) weights -> Hugging Face folders
  knn        kNN classification on the synthetic ImageFolder
  retrieval  future-state retrieval: EgoAgent vs the representation-only baseline (the stage-1 model)
  motion     3D pose rollout: EgoAgent vs zero- and constant-velocity baselines
  report     {out}/REPORT.md with the numbers, the paper's claims checked, and the PNGs
Rerunning resumes: the world is kept when its seed and size match, training continues from its checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE1_CONFIG = "configs/demo/stage1_dino_tiny.py"
STAGE2_CONFIG = "configs/demo/stage2_joint_tiny.py"
STEPS = ("world", "undistort", "poses", "stage1", "stage2", "convert", "knn", "retrieval", "motion", "report")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="world, weights and data order")
    p.add_argument("--data", default=None, help="world folder (default data/synthetic, data/synthetic_seed{S})")
    p.add_argument("--out", default=None, help="run folder (default runs/demo, runs/demo_seed{S})")
    p.add_argument("--size", default="default", help="world size preset of make_synthetic_egoworld.py")
    p.add_argument("--frame-size", type=int, default=96, help="undistorted frame side in pixels")
    p.add_argument("--only", nargs="+", choices=STEPS, default=None, help="run only these steps")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both training stages and the evaluations (repeatable), "
                   "e.g. data.total_steps=20")
    return p.parse_args(argv)


class Pipeline:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        suffix = "" if args.seed == 0 else f"_seed{args.seed}"
        self.data = args.data or f"data/synthetic{suffix}"
        self.out = args.out or f"runs/demo{suffix}"
        self.timings: dict[str, float] = {}
        self.commands: dict[str, list[str]] = {}

    # paths
    def ckpt(self, stage: int) -> str:
        return os.path.join(self.out, "save_ckpt", f"demo_stage{stage}")

    def hf(self, name: str) -> str:
        return os.path.join(self.out, "hf_models", name)

    def eval_dir(self, name: str) -> str:
        return os.path.join(self.out, "eval", name)

    def data_opts(self) -> list[str]:
        """The demo configs read data/synthetic; point them at this run's world."""
        d = self.data
        return ["--opt", f"data.egoexo_frames_folder={d}/egoexo4d_v2/processed_data",
                "--opt", f"data.egoexo_pose_folder={d}/egoexo4d_body_pose"]

    def run(self, step: str, *commands: list[str]) -> None:
        if self.args.only and step not in self.args.only:
            return
        t0 = time.perf_counter()
        for cmd in commands:
            full = [sys.executable] + cmd
            print(f"\n[demo] {step}: {' '.join(shlex.quote(c) for c in ['python'] + cmd)}", flush=True)
            self.commands.setdefault(step, []).append(" ".join(shlex.quote(c) for c in ["python"] + cmd))
            code = subprocess.call(full, cwd=REPO)
            if code != 0:
                raise SystemExit(f"[demo] step '{step}' failed (exit code {code}); fix it and rerun the same "
                                 f"command: finished steps are kept")
        self.timings[step] = time.perf_counter() - t0
        print(f"[demo] {step} done in {self.timings[step]:.0f}s", flush=True)

    def world_is_current(self) -> bool:
        try:
            with open(os.path.join(REPO, self.data, "synthetic_world.json")) as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            return False
        from dataclasses import asdict

        from internlm.data.synthetic import resolve_size

        return manifest.get("seed") == self.args.seed and manifest.get("size") == asdict(resolve_size(self.args.size))

    def main(self) -> None:
        a, d = self.args, self.data
        start = time.perf_counter()
        print(f"[demo] seed {a.seed}: world in {d}, run in {self.out}", flush=True)
        if self.world_is_current():
            print(f"[demo] world: {d} already holds the seed-{a.seed} '{a.size}' world, kept", flush=True)
        else:
            overwrite = ["--overwrite"] if os.path.exists(os.path.join(REPO, d, "synthetic_world.json")) else []
            self.run("world", ["dataset_preprocess/make_synthetic_egoworld.py", "--out", d, "--seed", str(a.seed),
                               "--size", a.size] + overwrite)
        self.run("undistort", ["dataset_preprocess/undistort_egovideos.py", "--root", f"{d}/egoexo4d_v2",
                               "--size", str(a.frame_size)])
        self.run("poses", ["dataset_preprocess/preprocess_egoexo_body_pose.py", "--root", f"{d}/egoexo4d_v2",
                           "--out", f"{d}/egoexo4d_body_pose"])
        user_opts = [x for o in a.opt for x in ("--opt", o)]
        self.run("stage1", ["train.py", "--config", STAGE1_CONFIG, "--seed", str(a.seed), *self.data_opts(),
                            "--opt", f"data.train_folder=['{d}/WTour']",
                            "--opt", f"ckpt.save_ckpt_folder={self.ckpt(1)}", *user_opts])
        init = {"path": self.ckpt(1), "content": ["model"]}
        self.run("stage2", ["train.py", "--config", STAGE2_CONFIG, "--seed", str(a.seed), *self.data_opts(),
                            "--opt", f"ckpt.save_ckpt_folder={self.ckpt(2)}", "--opt", f"ckpt.load_ckpt_info={init}",
                            *user_opts])
        convert = "tools/convert2hf_dino_conv_stem_cls.py"
        self.run("convert",
                 [convert, "--src_folder", self.ckpt(2), "--tgt_folder", self.hf("egoagent"), "--remove_vq_embed"],
                 [convert, "--src_folder", self.ckpt(1), "--tgt_folder", self.hf("stage1"), "--remove_vq_embed"],
                 ["tools/make_untrained_checkpoint.py", "--config", STAGE2_CONFIG, "--seed", str(a.seed),
                  "--out", os.path.join(self.out, "save_ckpt", "untrained")],
                 [convert, "--src_folder", os.path.join(self.out, "save_ckpt", "untrained"),
                  "--tgt_folder", self.hf("untrained"), "--remove_vq_embed"])
        crop = self.model_image_size(a.opt)
        resize = round(crop * 256 / 224)
        self.run("knn", *[["eval_knn_conv_stem_cls.py", "--pretrained_weights", self.hf(name), "--data_path",
                           f"{d}/imagefolder", "--imgnet", "0", "--resize", str(resize), "--crop", str(crop),
                           "--num_workers", "0", "--output", os.path.join(self.eval_dir("knn"), f"{name}.json")]
                          for name in ("egoagent", "stage1", "untrained")])
        self.run("retrieval",
                 ["eval_feature_retrieval.py", "--config", STAGE2_CONFIG, *self.data_opts(), "--ckpt_folder",
                  self.ckpt(2), "--output_dir", self.eval_dir("retrieval_egoagent"), "--num_workers", "0",
                  *user_opts],
                 ["eval_feature_retrieval.py", "--config", STAGE1_CONFIG, *self.data_opts(), "--ckpt_folder",
                  self.ckpt(1), "--baseline", "representation", "--output_dir",
                  self.eval_dir("retrieval_baseline"), "--num_workers", "0", *user_opts])
        self.run("motion", ["eval_3dposes.py", "--config", STAGE2_CONFIG, *self.data_opts(), "--ckpt_folder",
                            self.ckpt(2), "--output_dir", self.eval_dir("motion"), "--num_workers", "0",
                            *user_opts])
        self.timings["total_before_report"] = time.perf_counter() - start
        with open(os.path.join(REPO, self.out, "pipeline.json"), "w") as f:
            json.dump({"seed": a.seed, "data": d, "out": self.out, "timings_s": self.timings,
                       "commands": self.commands}, f, indent=1)
        self.run("report", ["tools/make_demo_report.py", "--run", self.out])
        print(f"\n[demo] finished in {time.perf_counter() - start:.0f}s: {os.path.join(self.out, 'REPORT.md')}")

    def model_image_size(self, opts: list[str]) -> int:
        from internlm.config import load_config, parse_override

        return load_config(os.path.join(REPO, STAGE2_CONFIG), [parse_override(o) for o in opts]).model.img_size


if __name__ == "__main__":
    Pipeline(parse_args()).main()
