"""The paper's Table 4 in miniature: which of the three losses each evaluation needs.

    python tools/run_ablation.py [--seed 0] [--opt KEY=VALUE ...]

From the demo's stage-1 checkpoint (made first with tools/run_demo.py's world and stage-1 steps when missing), it
trains stage 2 four times with the demo config: the full model (reused from the demo run when that finished) and
the three leave-one-out variants, loss.rep_weight=0 (without L_rep), loss.pred_weight=0 (without L_pred) and
loss.act_weight=0 (without L_act). Each variant gets the three evaluations of the demo (kNN of its teacher,
future-state retrieval, 3D motion) and the results go to {out}/ABLATION.md, ablation.json and ablation.png, next to
the paper's Table 4 (EgoAgent-300M, 14,400 iterations on Ego-Exo4D; ImageNet-100 kNN for representation).
Not part of the main job: about four times the demo's stage 2 on a CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from internlm.initialize.arguments import ScriptArgumentParser

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
VARIANTS = {  # name -> (label, the override that removes a loss)
    "full": ("EgoAgent (all three losses)", ()),
    "no_rep": ("without L_rep", ("loss.rep_weight=0",)),
    "no_pred": ("without L_pred", ("loss.pred_weight=0",)),
    "no_act": ("without L_act", ("loss.act_weight=0",)),
}
# Paper Table 4 (EgoAgent-300M ablation schedule): retrieval Top-1 / mAP, ImageNet-100 kNN Top-1, MPJPE@30fps (cm).
PAPER = {"full": (37.77, 53.72, 41.64, 14.49), "no_rep": (25.90, 40.17, 1.00, 14.49),
         "no_pred": (0.01, 0.07, 39.12, 14.70), "no_act": (34.86, 49.13, 39.92, 107.03)}
METRICS = (("retrieval Top-1 %", "higher"), ("retrieval mAP %", "higher"), ("kNN Top-1 %", "higher"),
           ("MPJPE@30fps cm", "lower"))


def load_demo_pipeline():
    """tools/run_demo.py's Pipeline (a sibling script), for its paths and the exact commands of the demo."""
    spec = importlib.util.spec_from_file_location("run_demo", os.path.join(HERE, "run_demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None) -> argparse.Namespace:
    p = ScriptArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="world folder (default: the demo's for this seed)")
    p.add_argument("--demo_out", default=None, help="the demo run (default runs/demo, runs/demo_seed{S})")
    p.add_argument("--out", default=None, help="default: runs/ablation, runs/ablation_seed{S}")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="which variants to train and evaluate")
    p.add_argument("--size", default="default", help="world size preset (as tools/run_demo.py --size)")
    p.add_argument("--frame_size", type=int, default=96, help="undistorted frame side (as tools/run_demo.py)")
    p.add_argument("--motion_baseline_steps", type=int, default=3000,
                   help="siMLPe's training steps when the demo run has none (as tools/run_demo.py)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every variant and evaluation (repeatable)")
    return p.parse_args(argv)


def call(cmd: list[str]) -> None:
    print("\n[ablation] python " + " ".join(cmd), flush=True)
    code = subprocess.call([sys.executable] + cmd, cwd=REPO)
    if code != 0:
        raise SystemExit(f"[ablation] failed (exit code {code}): python {' '.join(cmd)}; rerun to resume")


def results_of(folder: str) -> tuple[float, float, float, float]:
    ret = json.load(open(os.path.join(REPO, folder, "retrieval", "retrieval.json")))
    knn = json.load(open(os.path.join(REPO, folder, "knn.json")))
    motion = json.load(open(os.path.join(REPO, folder, "motion", "motion.json")))
    return ret["rows"]["egoagent"]["top1"], ret["rows"]["egoagent"]["mAP"], knn["top1"], motion["model"]["mpjpe_30fps"]


def plot(results: dict, out: str) -> None:
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6))
    names = list(results)
    for i, (ax, (metric, better)) in enumerate(zip(axes, METRICS)):
        ours = [results[n][i] for n in names]
        paper = [PAPER[n][i] for n in names]
        x = range(len(names))
        ax.bar([v - 0.2 for v in x], ours, width=0.4, label="this demo", color="#4575b4")
        ax.bar([v + 0.2 for v in x], paper, width=0.4, label="paper Table 4", color="#bbbbbb")
        ax.set_xticks(list(x))
        ax.set_xticklabels([n.replace("_", " ") for n in names], fontsize=8)
        ax.set_title(f"{metric} ({better} is better)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    suffix = "" if args.seed == 0 else f"_seed{args.seed}"
    out = args.out or f"runs/ablation{suffix}"
    demo_args = ["--seed", str(args.seed), "--size", args.size, "--frame_size", str(args.frame_size),
                 "--motion_baseline_steps", str(args.motion_baseline_steps)] + \
        (["--data", args.data] if args.data else []) + (["--out", args.demo_out] if args.demo_out else []) + \
        [x for o in args.opt for x in ("--opt", o)]
    call(["tools/run_demo.py", *demo_args, "--only", "world", "undistort", "poses", "stage1"])
    demo = load_demo_pipeline()
    pipe = demo.Pipeline(demo.parse_args(demo_args))
    if not pipe.motion_baselines_trained():
        for command in pipe.motion_baseline_commands():
            call(command)
    results = {}
    for name in args.variants:
        opts = VARIANTS[name][1]
        folder = os.path.join(out, name)
        ckpt = pipe.ckpt(2) if name == "full" else os.path.join(folder, "save_ckpt")
        call(pipe.stage2_command(ckpt, opts))  # resumes (or finds the demo's finished run) when already trained
        hf = os.path.join(folder, "hf")
        call(["tools/convert2hf_dino_conv_stem_cls.py", "--src_folder", ckpt, "--tgt_folder", hf,
              "--remove_vq_embed"])
        call(pipe.knn_command(hf, os.path.join(folder, "knn.json")))
        call(pipe.retrieval_command(ckpt, os.path.join(folder, "retrieval"), opts))
        call(pipe.motion_command(ckpt, os.path.join(folder, "motion"), opts))
        results[name] = results_of(folder)
    plot(results, os.path.join(REPO, out, "ablation.png"))
    head = "| variant | " + " | ".join(m for m, _ in METRICS) + " |"
    lines = ["# Leave-one-out ablation (paper Table 4 in miniature)", "",
             f"Seed {args.seed}; stage 2 of the demo config from the demo's stage-1 checkpoint, one loss removed at "
             "a time. Each cell: this demo / the paper (EgoAgent-300M, Table 4; its kNN column is ImageNet-100, ours "
             "the synthetic ImageFolder).", "", head, "|---" * (len(METRICS) + 1) + "|"]
    lines += [f"| {VARIANTS[n][0]} | " + " | ".join(f"{r[i]:.2f} / {PAPER[n][i]:.2f}" for i in range(len(METRICS)))
              + " |" for n, r in results.items()]
    lines += ["", "![ablation](ablation.png)", ""]
    with open(os.path.join(REPO, out, "ABLATION.md"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(REPO, out, "ablation.json"), "w") as f:
        json.dump({"seed": args.seed, "metrics": [m for m, _ in METRICS], "results": results, "paper": PAPER}, f,
                  indent=1)
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
