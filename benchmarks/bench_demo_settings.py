"""How to spend a small CPU on the demo: real training runs of the demo configs on a synthetic world, with the
intra-op thread count, the number of loader workers and torch.compile varied, as samples/s ratios against the
shipped setting measured in the same run.

    python benchmarks/bench_demo_settings.py --data data/synthetic [--steps 60] [--stage 2]

Each setting trains a fresh run of ``--steps`` steps (train.py in a subprocess, OMP_NUM_THREADS set, no
checkpoints); samples/s is the median of the logged per-step throughput after the first 10 steps (so the
start-up, the pose index and torch.compile's compilation are not in it; the compilation time is reported on its
own as the extra wall time of the run). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from internlm.initialize.arguments import ScriptArgumentParser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {1: "configs/demo/stage1_dino_tiny.py", 2: "configs/demo/stage2_joint_tiny.py"}
# (label, threads, loader workers, compile); the first is the baseline of the ratios
SETTINGS = (("2 threads, 1 worker", 2, 1, False), ("2 threads, 0 workers", 2, 0, False),
            ("1 thread, 1 worker", 1, 1, False), ("2 threads, 1 worker, torch.compile", 2, 1, True),
            ("2 threads, 0 workers, torch.compile", 2, 0, True))


def parse_args(argv=None) -> argparse.Namespace:
    p = ScriptArgumentParser(description=__doc__)
    p.add_argument("--data", default="data/synthetic", help="a synthetic world (make_synthetic_egoworld.py)")
    p.add_argument("--stage", type=int, choices=(1, 2), default=2)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--json", default=None, help="default: benchmarks/results/demo_settings-stage{S}.json")
    return p.parse_args(argv)


def run_setting(args, threads: int, workers: int, compile_: bool) -> dict:
    d = args.data
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as tmp:
        opts = [f"data.egoexo_frames_folder={d}/egoexo4d_v2/processed_data",
                f"data.egoexo_pose_folder={d}/egoexo4d_body_pose", f"data.total_steps={args.steps}",
                f"data.num_workers={workers}", f"model.compile={compile_}", f"teacher.compile={compile_}",
                "ckpt.enable_save_ckpt=False", "ckpt.load_ckpt_info=None", f"ckpt.save_ckpt_folder={tmp}",
                "monitor.log_every=1000"] + ([f"data.train_folder=['{d}/WTour']"] if args.stage == 1 else [])
        cmd = [sys.executable, "train.py", "--config", CONFIGS[args.stage], *(x for o in opts for x in ("--opt", o))]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        with open(os.path.join(tmp, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    rates = [r["samples_per_s"] for r in rows[10:]]
    return {"samples_per_s": statistics.median(rates), "wall_s": wall, "steps": len(rows)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    results = []
    for label, threads, workers, compile_ in SETTINGS:
        r = run_setting(args, threads, workers, compile_)
        results.append({"setting": label, "threads": threads, "workers": workers, "compile": compile_, **r})
        print(f"  {label:<40} {r['samples_per_s']:7.1f} samples/s  ({r['wall_s']:.0f} s wall)", flush=True)
    base = results[0]
    for r in results:
        r["ratio"] = r["samples_per_s"] / base["samples_per_s"]
        r["extra_wall_s"] = r["wall_s"] - base["wall_s"]
    print(f"\ndemo stage {args.stage}, {args.steps} steps, {platform.machine()} x{os.cpu_count()}, "
          f"torch {torch.__version__}")
    print(f"  {'setting':<40} {'samples/s':>10} {'ratio':>7} {'extra wall s':>13}")
    for r in results:
        print(f"  {r['setting']:<40} {r['samples_per_s']:10.1f} {r['ratio']:6.2f}x {r['extra_wall_s']:13.0f}")
    out = args.json or os.path.join(REPO, "benchmarks", "results", f"demo_settings-stage{args.stage}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.machine()} x{os.cpu_count()}",
                   "torch": torch.__version__, "stage": args.stage, "steps": args.steps, "results": results}, f,
                  indent=1)
    print(f"  written to {out}")
    return {"results": results}


if __name__ == "__main__":
    main()
