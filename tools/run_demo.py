"""The main job: the whole EgoAgent pipeline on the built-in synthetic world, on a CPU, in minutes.

    python tools/run_demo.py [--seed 0] [--data data/synthetic] [--out runs/demo]

Every step is a command of this repository, printed before it runs, so any step can be rerun on its own:
  world      generate the synthetic egocentric world (raw Ego-Exo4D layout, WalkingTours-style walks, ImageFolder)
  undistort  fisheye videos -> pinhole frames (every 5th frame)
  poses      raw body-pose annotations -> camera-frame pose fragments
  stage1     DINO pretraining on the walks and the frames (configs/demo/stage1_dino_tiny.py)
  stage2     joint representation / prediction / action training from stage 1 (configs/demo/stage2_joint_tiny.py)
  convert    the stage-2 (and stage-1, and untrained) weights -> Hugging Face folders
  knn        kNN classification on the synthetic ImageFolder: stage 2 and stage 1, with the untrained network and
             raw pixels as rows of the same run
  retrieval  future-state retrieval: EgoAgent against its copy baseline, the stage-1 copy baseline, shuffled
             actions, raw pixels and the oracle (one run, one gallery, one similarity)
  motion     3D pose rollout: EgoAgent against the pose-only siMLPe (paper Table 3), with image controls (another
             clip's images, the mean image), zero / constant velocity as floors and two privileged oracles as
             ceilings (siMLPe and its oracles trained on the same clips first: tools/train_motion_baseline.py);
             then tools/diagnose_motion.py on the val and the training clips (why the images are or are not used)
  report     {out}/REPORT.md with the numbers, the paper's claims checked, and the PNGs
Rerunning resumes: the world is kept when its seed and size match, training continues from its checkpoints;
a step that finds its work already done keeps the timing of the run that did it (pipeline.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from internlm.checkpoint.atomic import atomic_write_json
from internlm.initialize.arguments import ScriptArgumentParser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE1_CONFIG = "configs/demo/stage1_dino_tiny.py"
STAGE2_CONFIG = "configs/demo/stage2_joint_tiny.py"
STEPS = ("world", "undistort", "poses", "stage1", "stage2", "convert", "knn", "retrieval", "motion", "report")
CACHED_STEPS = ("world", "undistort", "poses", "stage1", "stage2", "convert")  # rerun = resume, nothing redone
MOTION_ORACLES = ("scene", "view")
# siMLPe's 48 mixing blocks (its Human3.6M setting) scored the same as 8 on a development world (5.71 vs 5.70 cm),
# in a fifth of the time (docs/demo_findings.md)
SIMLPE_BLOCKS = 8  # privileged ceilings of the motion evaluation (internlm/eval/motion_oracles.py)


def parse_args(argv=None) -> argparse.Namespace:
    p = ScriptArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=0, help="world, weights and data order")
    p.add_argument("--data", default=None, help="world folder (default data/synthetic, data/synthetic_seed{S})")
    p.add_argument("--out", default=None, help="run folder (default runs/demo, runs/demo_seed{S})")
    p.add_argument("--size", default="default", help="world size preset of make_synthetic_egoworld.py")
    p.add_argument("--frame_size", type=int, default=96, help="undistorted frame side in pixels")
    p.add_argument("--only", nargs="+", choices=STEPS, default=None, help="run only these steps")
    p.add_argument("--motion_baseline_steps", type=int, default=3000,
                   help="optimizer steps of siMLPe and its oracles (tools/train_motion_baseline.py --steps)")
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
        self.previous = self._previous_record()

    def _previous_record(self) -> dict:
        try:
            with open(os.path.join(REPO, self.out, "pipeline.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

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

    def run(self, step: str, *commands: list[str], done: bool = False) -> None:
        """Run a step's commands. ``done``: its outputs existed before this run (a rerun resumes and finds
        nothing to do), so the step keeps the timing of the run that did the work."""
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
        kept = self.previous.get("timings_s", {}).get(step)
        if done and step in CACHED_STEPS and kept is not None:
            print(f"[demo] {step}: already done ({self.timings[step]:.0f}s now); keeping the first run's "
                  f"{kept:.0f}s", flush=True)
            self.timings[step] = kept
        else:
            print(f"[demo] {step} done in {self.timings[step]:.0f}s", flush=True)
        if step != "report":
            self.write_record()

    def write_record(self) -> None:
        """pipeline.json after every step, so that a run stopped half-way and resumed keeps the timings of the steps
        that did their work before the stop (a resumed step that finds its work done keeps those)."""
        timings = dict(self.previous.get("timings_s", {}), **self.timings)  # steps not run now keep theirs
        timings["total_before_report"] = sum(v for k, v in timings.items() if k in STEPS)
        commands = dict(self.previous.get("commands", {}), **self.commands)
        os.makedirs(os.path.join(REPO, self.out), exist_ok=True)
        record = {"seed": self.args.seed, "data": self.data, "out": self.out, "timings_s": timings,
                  "commands": commands}
        atomic_write_json(os.path.join(REPO, self.out, "pipeline.json"), record)

    def finished(self, ckpt_folder: str) -> bool:
        """A training run whose last step's checkpoint is complete."""
        path = os.path.join(REPO, ckpt_folder)
        return bool(self.previous.get("timings_s")) and os.path.isdir(path) and any(
            os.path.isfile(os.path.join(path, d, "COMPLETE")) for d in os.listdir(path))

    def world_is_current(self) -> bool:
        try:
            with open(os.path.join(REPO, self.data, "synthetic_world.json")) as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            return False
        from dataclasses import asdict

        from internlm.data.synthetic import resolve_size
        from internlm.data.synthetic.world import GENERATOR_VERSION

        return (manifest.get("seed") == self.args.seed and manifest.get("version") == GENERATOR_VERSION
                and manifest.get("size") == asdict(resolve_size(self.args.size)))

    def main(self) -> None:
        a, d = self.args, self.data
        start = time.perf_counter()
        print(f"[demo] seed {a.seed}: world in {d}, run in {self.out}", flush=True)
        if self.world_is_current():
            print(f"[demo] world: {d} already holds the seed-{a.seed} '{a.size}' world, kept", flush=True)
            if "world" in self.previous.get("timings_s", {}):
                self.timings["world"] = self.previous["timings_s"]["world"]
        else:
            overwrite = ["--overwrite"] if os.path.exists(os.path.join(REPO, d, "synthetic_world.json")) else []
            self.run("world", ["dataset_preprocess/make_synthetic_egoworld.py", "--out", d, "--seed", str(a.seed),
                               "--size", a.size] + overwrite)
        prepared = os.path.isdir(os.path.join(REPO, d, "egoexo4d_body_pose")) and bool(self.previous)
        self.run("undistort", ["dataset_preprocess/undistort_egovideos.py", "--root", f"{d}/egoexo4d_v2",
                               "--size", str(a.frame_size)], done=prepared)
        self.run("poses", ["dataset_preprocess/preprocess_egoexo_body_pose.py", "--root", f"{d}/egoexo4d_v2",
                           "--out", f"{d}/egoexo4d_body_pose"], done=prepared)
        self.run("stage1", ["train.py", "--config", STAGE1_CONFIG, "--seed", str(a.seed), *self.data_opts(),
                            "--opt", f"data.train_folder=['{d}/WTour']",
                            "--opt", f"ckpt.save_ckpt_folder={self.ckpt(1)}", *self.user_opts()],
                 done=self.finished(self.ckpt(1)))
        self.run("stage2", self.stage2_command(self.ckpt(2)), done=self.finished(self.ckpt(2)))
        convert = "tools/convert2hf_dino_conv_stem_cls.py"
        self.run("convert",
                 [convert, "--src_folder", self.ckpt(2), "--tgt_folder", self.hf("egoagent"), "--remove_vq_embed"],
                 [convert, "--src_folder", self.ckpt(1), "--tgt_folder", self.hf("stage1"), "--remove_vq_embed"],
                 ["tools/make_untrained_checkpoint.py", "--config", STAGE2_CONFIG, "--seed", str(a.seed),
                  "--out", os.path.join(self.out, "save_ckpt", "untrained"), *self.data_opts(), *self.user_opts()],
                 [convert, "--src_folder", os.path.join(self.out, "save_ckpt", "untrained"),
                  "--tgt_folder", self.hf("untrained"), "--remove_vq_embed"],
                 done=os.path.isdir(os.path.join(REPO, self.hf("untrained"))) and self.finished(self.ckpt(2)))
        self.run("knn", self.knn_command(self.hf("egoagent"), os.path.join(self.eval_dir("knn"), "egoagent.json"),
                                         references=True),
                 self.knn_command(self.hf("stage1"), os.path.join(self.eval_dir("knn"), "stage1.json")))
        self.run("retrieval", self.retrieval_command(self.ckpt(2), self.eval_dir("retrieval")))
        self.run("motion", *self.motion_baseline_commands(), self.motion_command(self.ckpt(2), self.eval_dir("motion")),
                 *self.motion_diagnosis_commands(self.ckpt(2), self.eval_dir("motion")))
        self.run("report", ["tools/make_demo_report.py", "--run", self.out])
        print(f"\n[demo] finished in {time.perf_counter() - start:.0f}s: {os.path.join(self.out, 'REPORT.md')}")

    # ------------------------------------------------------------------ commands (also used by run_ablation.py)

    def user_opts(self, extra: tuple = ()) -> list[str]:
        return [x for o in (*self.args.opt, *extra) for x in ("--opt", o)]

    def stage2_command(self, save_folder: str, extra_opts: tuple = ()) -> list[str]:
        init = {"path": self.ckpt(1), "content": ["model"]}
        return ["train.py", "--config", STAGE2_CONFIG, "--seed", str(self.args.seed), *self.data_opts(),
                "--opt", f"ckpt.save_ckpt_folder={save_folder}", "--opt", f"ckpt.load_ckpt_info={init}",
                *self.user_opts(extra_opts)]

    def knn_command(self, hf_folder: str, output: str, references: bool = False) -> list[str]:
        """kNN of an export; ``references`` adds the untrained network and raw pixels as rows."""
        crop = self.model_image_size(self.args.opt)
        cmd = ["eval_knn_conv_stem_cls.py", "--data_path", f"{self.data}/imagefolder", "--imgnet", "0",
               "--resize", str(round(crop * 256 / 224)), "--crop", str(crop), "--num_workers", "0",
               "--pretrained_weights", hf_folder, "--output", output]
        return cmd + (["--untrained_weights", self.hf("untrained"), "--raw_pixels"] if references else [])

    def retrieval_command(self, ckpt: str, out_dir: str, extra_opts: tuple = ()) -> list[str]:
        return ["eval_feature_retrieval.py", "--config", STAGE2_CONFIG, *self.data_opts(), "--ckpt_folder", ckpt,
                "--baseline_ckpt_folder", self.ckpt(1), "--output_dir", out_dir, "--num_workers", "0",
                *self.user_opts(extra_opts)]

    def motion_baseline_path(self, oracle: str = "") -> str:
        """siMLPe (the pose-only baseline) or one of its privileged oracles (MOTION_ORACLES)."""
        return os.path.join(self.out, "motion_baseline", f"{oracle}_oracle.pt" if oracle else "simlpe.pt")

    def motion_baseline_commands(self) -> list[list[str]]:
        """siMLPe and its oracles, trained on the same training clips (a minute each on the demo world)."""
        base = ["tools/train_motion_baseline.py", "--config", STAGE2_CONFIG, *self.data_opts(), "--seed",
                str(self.args.seed), "--blocks", str(SIMLPE_BLOCKS), "--steps", str(self.args.motion_baseline_steps),
                *self.user_opts()]
        return [base + ["--out", self.motion_baseline_path()]] + [
            base + ["--oracle", kind, "--out", self.motion_baseline_path(kind)]
            + (["--scene_truth", self.data] if kind == "scene" else []) for kind in MOTION_ORACLES]

    def motion_baselines_trained(self) -> bool:
        return all(os.path.isfile(os.path.join(REPO, self.motion_baseline_path(k))) for k in ("", *MOTION_ORACLES))

    def motion_diagnosis_commands(self, ckpt: str, out_dir: str) -> list[list[str]]:
        """tools/diagnose_motion.py on the val and the training clips (the report quotes them): teacher-forced and
        autoregressive errors, the image controls on clips the model was trained on and on new takes."""
        return [["tools/diagnose_motion.py", "--config", STAGE2_CONFIG, *self.data_opts(), "--ckpt_folder", ckpt,
                 "--motion_baseline", self.motion_baseline_path(), "--split", split,
                 "--out", os.path.join(out_dir, f"diagnosis_{split}.json"), *self.user_opts()]
                for split in ("val", "train")]

    def motion_command(self, ckpt: str, out_dir: str, extra_opts: tuple = ()) -> list[str]:
        oracles = [x for kind in MOTION_ORACLES for x in ("--oracle", self.motion_baseline_path(kind))]
        return ["eval_3dposes.py", "--config", STAGE2_CONFIG, *self.data_opts(), "--ckpt_folder", ckpt,
                "--motion_baseline", self.motion_baseline_path(), *oracles, "--scene_truth", self.data,
                "--output_dir", out_dir, "--num_workers", "0", *self.user_opts(extra_opts)]

    def model_image_size(self, opts: list[str]) -> int:
        from internlm.config import load_config, parse_override

        return load_config(os.path.join(REPO, STAGE2_CONFIG), [parse_override(o) for o in opts]).model.img_size


if __name__ == "__main__":
    Pipeline(parse_args()).main()
