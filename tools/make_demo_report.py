"""Write {run}/REPORT.md for a demo run (tools/run_demo.py): the three evaluations with their baselines and
controls, the paper's three effects checked at this small scale, and the plots.

    python tools/make_demo_report.py --run runs/demo

Every verdict is computed here from the eval JSONs of the run; an effect holds only when each of its margins is
larger than its standard error:
- representation: the trained teacher's kNN Top-1 above the untrained network's and above raw pixels'
  (standard error of the difference of two independent accuracies on the same test images);
- prediction: EgoAgent's retrieval Top-1 and mAP above the same checkpoint's copy baseline and the stage-1 copy
  baseline, and true actions above shuffled actions (paired differences over the same queries); with camera
  motion in the clips, what the learned prediction adds over the geometric reprojection of frame t is stated
  in the same row;
- action (paper Table 3): EgoAgent beats the pose-only (siMLPe) baseline and uses its images: its MPJPE@30fps
  below siMLPe's, and below its own with another clip's images (paired differences over the same clips); zero and
  constant velocity (floors), the mean-image control and the privileged oracles (ceilings) are stated beside it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from internlm.initialize.arguments import ScriptArgumentParser

PREDICTOR_LABELS = {"model": "EgoAgent", "model_other_images": "EgoAgent with another clip's images (control)",
                    "model_mean_image": "EgoAgent with the mean image (control)",
                    "simlpe": "siMLPe (pose only, paper Table 3's baseline)",
                    "scene_oracle": "scene oracle: siMLPe + what is in view (privileged ceiling)",
                    "view_oracle": "view oracle: siMLPe + where each step image is taken (privileged ceiling)",
                    "constant_velocity": "constant velocity", "zero_velocity": "zero velocity"}
HORIZON_PLOTTED = ("model", "simlpe", "view_oracle", "constant_velocity", "zero_velocity")
RETRIEVAL_LABELS = {"egoagent": "EgoAgent: predicted feature of frame t+1", "shuffled_actions":
                    "EgoAgent with another clip's actions (control)", "copy": "copy frame t (same checkpoint)",
                    "reprojection": "frame t reprojected by the step's camera rotation (geometry, nothing learned)",
                    "stage1_copy": "copy frame t (stage-1 checkpoint)", "raw_pixels": "copy frame t (raw pixels)",
                    "oracle": "oracle: the loss's minimiser (self-test)"}


def load_json(path: str):
    with open(path) as f:
        return json.load(f)


def load_metrics(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def save(fig, out: str) -> None:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_training(run: str, out: str) -> None:
    """Both stages side by side (stage 2 continues stage 1's clock): loss terms and the teacher's entropy."""
    stages = [load_metrics(os.path.join(run, f"save_ckpt/demo_stage{s}/metrics.jsonl")) for s in (1, 2)]
    panels = (("loss_rep", "L_rep (DINO)"), ("loss_pred", "L_pred"), ("loss_act", "L_act (m, L1)"),
              ("teacher_entropy", "teacher entropy (nats)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    offset = stages[0][-1]["step"] if stages[0] else 0
    for ax, (key, title) in zip(axes, panels):
        for s, rows in enumerate(stages):
            pts = [(r["step"] + (offset if s else 0), r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), lw=1.0, color=("#4575b4", "#d73027")[s], label=f"stage {s + 1}")
        if offset:
            ax.axvline(offset, color="grey", lw=0.8, ls="--")
        ax.set_title(title)
        ax.set_xlabel("optimizer step (stage 2 after stage 1)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save(fig, out)


def plot_horizon(motion: dict, out: str) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name in HORIZON_PLOTTED:
        if name in motion:
            label = PREDICTOR_LABELS[name]
            h = motion[name]["per_horizon"]
            ax.plot(h["ms_after_last_input"], h["mpjpe"], marker="o", ms=3, label=label)
    ax.set_ylabel("MPJPE (cm)")
    ax.set_title("Pose error per horizon (30 fps)")
    ax.set_xlabel("ms after the last input pose")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, out)


def training_state(run: str) -> dict:
    """The collapse monitors and loss terms of each stage: first and last logged values (mean of 5)."""
    state = {}
    keys = ("teacher_entropy", "kl_teacher_student", "feature_std", "loss_rep", "loss_pred", "loss_act")
    for stage in (1, 2):
        rows = load_metrics(os.path.join(run, f"save_ckpt/demo_stage{stage}/metrics.jsonl"))
        state[stage] = {"steps": rows[-1]["step"] if rows else 0}
        for when, part in (("first", rows[:5]), ("last", rows[-5:])):
            state[stage][when] = {k: sum(r[k] for r in part) / len(part) for k in keys
                                  if part and all(r.get(k) is not None for r in part)}
    return state


def margin(diff: float, se: float) -> str:
    return f"{diff:+.2f} ± {se:.2f}"


def check(diffs: list[tuple[str, float, float]]) -> tuple[bool, str]:
    """Every (name, difference that must be > 0, its standard error): holds when each exceeds its SE."""
    ok = all(d > se for _, d, se in diffs)
    return ok, "; ".join(f"{name} {margin(d, se)}" for name, d, se in diffs)


def representation_claim(knn: dict) -> tuple[bool, str]:
    rows = knn["rows"]
    ours = rows["model"]
    diffs = []
    for other, label in (("untrained", "vs untrained"), ("raw_pixels", "vs raw pixels")):
        if other in rows:
            se = math.hypot(ours["top1_se"], rows[other]["top1_se"])
            diffs.append((label, ours["top1"] - rows[other]["top1"], se))
    ok, text = check(diffs)
    return ok and len(diffs) == 2, f"kNN Top-1 {ours['top1']:.2f}%: {text} points"


def prediction_claim(ret: dict) -> tuple[bool, str]:
    """(holds, margins); with the reprojection row, what the learned part adds over it is stated in the same row
    (not a criterion: the verdict is the paper's comparison)."""
    c = ret["comparisons"]
    diffs = []
    for key, label in (("egoagent_minus_copy", "vs copy"), ("egoagent_minus_stage1_copy", "vs stage-1 copy"),
                       ("egoagent_minus_shuffled_actions", "vs shuffled actions")):
        if key in c:
            diffs.append((f"Top-1 {label}", c[key]["top1_diff"], c[key]["top1_diff_se"]))
            diffs.append((f"mAP {label}", c[key]["mAP_diff"], c[key]["mAP_diff_se"]))
    ok, text = check(diffs)
    text += " points"
    geometry = c.get("egoagent_minus_reprojection")
    if geometry is not None:
        cal = ret.get("prediction_calibration") or {}
        kept = f", {cal['scale']:g} of the learned change kept" if cal.get("calibrated") else ""
        text += (f". Beside it, what the learned part adds over the reprojection alone (geometry): Top-1 "
                 f"{margin(geometry['top1_diff'], geometry['top1_diff_se'])} points{kept}")
    return ok and len(diffs) == 6, text


def learned_prediction(ret: dict) -> str:
    """What the learned state prediction adds over the geometric reprojection of frame t (when the run has that
    row): a plain statement beside the prediction verdict, like the pose-only baseline's beside the action's; with
    data.calibration_takes, how much of the learned change the prediction keeps and why."""
    c = ret["comparisons"].get("egoagent_minus_reprojection")
    if c is None:
        return ""
    rows = ret["rows"]
    scores = (f"Top-1 {rows['egoagent']['top1']:.2f} vs {rows['reprojection']['top1']:.2f}% (difference "
              f"{margin(c['top1_diff'], c['top1_diff_se'])} points; mAP {margin(c['mAP_diff'], c['mAP_diff_se'])})")
    geometry = "the reprojection of frame t by the true camera rotation (geometry, nothing learned)"
    cal = ret.get("prediction_calibration") or {}
    held_out = ""
    if cal.get("calibrated"):
        l_pred = dict(zip(cal["scales"], cal["l_pred"]))
        held_out = (f"{len(cal['takes'])} training take(s) held out of stage 2 (data.calibration_takes; L_pred "
                    f"{l_pred[0.0]:.4f} nats with none of the change, {l_pred[1.0]:.4f} with all of it")
        if cal["scale"] == 0.0:
            return (f"The learned change is left out: every share of it raises L_pred on {held_out}), so EgoAgent's "
                    f"state prediction is {geometry}: {scores}.")
        held_out = (f" Its learned change enters at {cal['scale']:g} of its trained size, the share with the lowest "
                    f"L_pred on {held_out}, {l_pred[cal['scale']]:.4f} with this share).")
    d, se = c["top1_diff"], c["top1_diff_se"]
    adds = "adds to" if d > se else "**takes away** from" if d < -se else "does **not** add (beyond its SE) to"
    return f"The learned state prediction {adds} {geometry}: {scores}.{held_out}"


def action_claim(motion: dict) -> tuple[bool, str, str]:
    """(holds, margins, the floors, the mean-image control and the ceilings stated beside it)."""
    c, controls = motion.get("comparisons", {}), motion.get("image_controls", {})
    diffs = []
    if "model_minus_simlpe" in c:
        diffs.append(("vs siMLPe", -c["model_minus_simlpe"]["mpjpe_30fps_diff"],
                      c["model_minus_simlpe"]["mpjpe_30fps_diff_se"]))
    if "other_images" in controls:
        diffs.append(("true images vs another clip's", controls["other_images"]["mpjpe_30fps_diff"],
                      controls["other_images"]["mpjpe_30fps_diff_se"]))
    ok, text = check(diffs)
    m = motion["model"]["mpjpe_30fps"]
    beside = []
    floors = [(PREDICTOR_LABELS[o], -c[f"model_minus_{o}"]["mpjpe_30fps_diff"],
               c[f"model_minus_{o}"]["mpjpe_30fps_diff_se"])
              for o in ("zero_velocity", "constant_velocity") if f"model_minus_{o}" in c]
    if floors:
        beside.append("floors: EgoAgent below " + "; ".join(f"{n} by {margin(d, se)}" for n, d, se in floors) + " cm"
                      + ("" if all(d > se for _, d, se in floors) else " (**not** every floor is cleared)"))
    if "mean_image" in controls:
        mi = controls["mean_image"]
        cost = margin(mi["mpjpe_30fps_diff"], mi["mpjpe_30fps_diff_se"])
        beside.append(f"the mean image instead of the true ones costs {cost} cm ({'used' if mi['used'] else 'unused'})")
    for row, mg in motion.get("oracle_margins", {}).items():
        beside.append(f"{PREDICTOR_LABELS.get(row, row).split(':')[0]} {motion[row]['mpjpe_30fps']:.2f} cm, "
                      f"{margin(mg['mpjpe_30fps_diff'], mg['mpjpe_30fps_diff_se'])} cm below siMLPe")
    simlpe = f" (siMLPe {motion['simlpe']['mpjpe_30fps']:.2f})" if "simlpe" in motion else ""
    statement = ("Beside the action verdict: " + "; ".join(beside) + ".") if beside else ""
    return ok and len(diffs) == 2, f"MPJPE@30fps {m:.2f} cm{simlpe}; improvement {text} cm", statement


def diagnosis(run: str, holds: dict, knn: dict, ret: dict, motion: dict, out_dim: int) -> list[str]:
    """Measured reasons, written when an effect does not hold: the controls and where training stands."""
    if all(holds.values()):
        return []
    st = training_state(run)
    uniform = math.log(out_dim)
    lines = ["## Why an effect does not hold here", "", "Measured in this run:", ""]
    for stage in (1, 2):
        first, last = st[stage]["first"], st[stage]["last"]
        if "teacher_entropy" in last:
            lines.append(f"- stage {stage}, {st[stage]['steps']} steps: teacher entropy {first['teacher_entropy']:.2f}"
                         f" -> {last['teacher_entropy']:.2f} nats (uniform over {out_dim} prototypes: {uniform:.2f}); "
                         f"L_rep {first['loss_rep']:.2f} -> {last['loss_rep']:.2f}"
                         + (f"; L_pred {first['loss_pred']:.2f} -> {last['loss_pred']:.2f}; L_act "
                            f"{100 * first['loss_act']:.1f} -> {100 * last['loss_act']:.1f} cm" if "loss_pred" in last
                            else ""))
    if not holds["representation"]:
        r = knn["rows"]
        lines.append(f"- representation: kNN Top-1 trained {r['model']['top1']:.2f}%, untrained "
                     f"{r.get('untrained', {}).get('top1', float('nan')):.2f}%, raw pixels "
                     f"{r.get('raw_pixels', {}).get('top1', float('nan')):.2f}%: training has not (yet) added "
                     "features that the architecture's initialisation or the pixels do not already give.")
    if not holds["prediction"]:
        rows, c = ret["rows"], ret["comparisons"]
        gap = c.get("egoagent_minus_shuffled_actions", {})
        lines.append(f"- prediction: Top-1 EgoAgent {rows['egoagent']['top1']:.2f}%, copy {rows['copy']['top1']:.2f}%, "
                     f"stage-1 copy {rows.get('stage1_copy', {}).get('top1', float('nan')):.2f}%, raw pixels "
                     f"{rows['raw_pixels']['top1']:.2f}%, oracle {rows['oracle']['top1']:.2f}%. True minus shuffled "
                     f"actions: {margin(gap.get('top1_diff', float('nan')), gap.get('top1_diff_se', float('nan')))} "
                     "points Top-1"
                     + (" (the predictor does not use the action)" if gap and gap["top1_diff"] <= gap["top1_diff_se"]
                        else ""))
    if not holds["action"]:
        rows = ", ".join(f"{PREDICTOR_LABELS[n]} {motion[n]['mpjpe_30fps']:.2f}" for n in PREDICTOR_LABELS
                         if n in motion)
        lines.append(f"- action: MPJPE@30fps {rows} cm.")
        for control, c in motion.get("image_controls", {}).items():
            lines.append(f"- {control.replace('_', ' ')} instead of the true ones: "
                         f"{margin(c['mpjpe_30fps_diff'], c['mpjpe_30fps_diff_se'])} cm: the images are "
                         f"{'used' if c['used'] else '**unused** (within the SE, or the control is better)'}.")
        for row, c in motion.get("oracle_margins", {}).items():
            gain = margin(c["mpjpe_30fps_diff"], c["mpjpe_30fps_diff_se"])
            lines.append(f"- ceiling: {PREDICTOR_LABELS.get(row, row)} is {gain} cm below siMLPe: what that "
                         "privileged input adds to the pose-only model.")
        lines += motion_diagnosis(run)
    lines += ["", "The oracle row is the protocol's self-test (it must rank first for >= 99% of the queries); the "
              "copy, shuffled-action, untrained and raw-pixel rows are the floors a trained model has to clear.", ""]
    return lines


def motion_diagnosis(run: str) -> list[str]:
    """What tools/diagnose_motion.py measured on this run's checkpoint (eval/motion/diagnosis_{val,train}.json):
    teacher-forced against autoregressive error, and the image controls on the training clips and on new takes."""
    found = {split: load_json(path) for split in ("val", "train")
             if os.path.isfile(path := os.path.join(run, f"eval/motion/diagnosis_{split}.json"))}
    if "val" not in found:
        return []
    val = found["val"]["mpjpe"]
    simlpe_step1 = val.get("siMLPe", {}).get("step1", {}).get("all", math.nan)
    lines = [f"- teacher-forced (the true poses of the earlier steps as action tokens, as in training; a diagnostic, "
             f"not a prediction): {val['teacher-forced']['all']:.2f} cm, against {val['autoregressive']['all']:.2f} "
             f"autoregressive; step 1 (the same inputs for both) EgoAgent "
             f"{val['autoregressive']['step1']['all']:.2f} vs siMLPe {simlpe_step1:.2f} cm."]
    for split, d in found.items():
        e = d["image_effect"]["autoregressive other images"]
        lines.append(f"- another clip's images instead of the true ones, on the {split} clips "
                     f"({d['num_clips']}): {margin(e['diff'], e['se'])} cm")
    if "train" in found:
        tr, va = (found[s]["image_effect"]["autoregressive other images"] for s in ("train", "val"))
        if tr["diff"] > tr["se"] and va["diff"] <= va["se"]:
            lines.append("- so the action pathway uses its images on the takes it was trained on and not on new ones: "
                         "what it learned from them is specific to the training takes (memorised), not transferable.")
    return lines


def mark(ok: bool) -> str:
    return "holds" if ok else "**does not hold**"


def git_commit(repo: str) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def output_dim(run: str) -> int:
    """The number of DINO prototypes, from the stage-2 checkpoint's resolved config."""
    import glob

    for path in sorted(glob.glob(os.path.join(run, "save_ckpt/demo_stage2/*/config.json"))):
        return int(load_json(path)["model"]["output_dim"])
    raise FileNotFoundError(f"no config.json under {run}/save_ckpt/demo_stage2/<step>/")


def knn_table(knn: dict, stage1: dict) -> list[str]:
    rows = [("EgoAgent (stage 2 teacher)", knn["rows"]["model"]), ("stage 1 (DINO only)", stage1["rows"]["model"])]
    rows += [(label, knn["rows"][n]) for n, label in (("untrained", "untrained network (initialisation)"),
                                                      ("raw_pixels", "raw pixels")) if n in knn["rows"]]
    return ["| features | Top-1 % | ± SE | Top-5 % |", "|---|---|---|---|",
            *[f"| {label} | {r['top1']:.2f} | {r['top1_se']:.2f} | {r['top5']:.2f} |" for label, r in rows]]


def _order(row: str) -> int:
    return list(RETRIEVAL_LABELS).index(row) if row in RETRIEVAL_LABELS else len(RETRIEVAL_LABELS)


def retrieval_table(ret: dict) -> list[str]:
    return ["| query | Top-1 % | ± SE | mAP % | ± SE |", "|---|---|---|---|---|",
            *[f"| {RETRIEVAL_LABELS.get(n, n)} | {r['top1']:.2f} | {r['top1_se']:.2f} | {r['mAP']:.2f} | "
              f"{r['mAP_se']:.2f} |" for n, r in sorted(ret["rows"].items(), key=lambda kv: _order(kv[0]))],
            f"| chance | {ret['chance']['top1']:.2f} | | {ret['chance']['mAP']:.2f} | |"]


def motion_table(motion: dict) -> list[str]:
    return ["| method | MPJPE@30fps (cm) | MPJVE@30fps (cm/s) | MPJPE@10fps | MPJVE@10fps |", "|---|---|---|---|---|",
            *[f"| {label} | {motion[n]['mpjpe_30fps']:.2f} | {motion[n]['mpjve_30fps']:.2f} | "
              f"{motion[n]['mpjpe_10fps']:.2f} | {motion[n]['mpjve_10fps']:.2f} |"
              for n, label in PREDICTOR_LABELS.items() if n in motion]]


def main(argv=None) -> dict:
    p = ScriptArgumentParser(description=__doc__)
    p.add_argument("--run", required=True, help="the demo run folder")
    args = p.parse_args(argv)
    run = args.run
    pipeline = load_json(os.path.join(run, "pipeline.json"))
    knn = load_json(os.path.join(run, "eval/knn/egoagent.json"))
    knn_stage1 = load_json(os.path.join(run, "eval/knn/stage1.json"))
    ret = load_json(os.path.join(run, "eval/retrieval/retrieval.json"))
    motion = load_json(os.path.join(run, "eval/motion/motion.json"))
    plot_training(run, os.path.join(run, "training_curves.png"))
    plot_horizon(motion, os.path.join(run, "motion_horizon.png"))

    rep_ok, rep_text = representation_claim(knn)
    pred_ok, pred_text = prediction_claim(ret)
    act_ok, act_text, learned = action_claim(motion)
    over_geometry = learned_prediction(ret)
    claims = [("representation", "Representation: the trained teacher's kNN Top-1 above the untrained network's "
               "and above raw pixels'", rep_ok, rep_text),
              ("prediction", "Prediction (paper Table 2): EgoAgent's retrieval Top-1 and mAP above its copy "
               "baseline and the stage-1 copy baseline, true actions above shuffled ones", pred_ok, pred_text),
              ("action", "Action (paper Table 3): EgoAgent beats the pose-only (siMLPe) baseline and uses its "
               "images: MPJPE@30fps below siMLPe's and below its own with another clip's images", act_ok, act_text)]
    holds = {key: ok for key, _, ok, _ in claims}
    t = pipeline["timings_s"]
    out_dim = output_dim(run)
    lines = [
        "# EgoAgent demo report",
        "",
        f"Seed {pipeline['seed']}, world `{pipeline['data']}`, run `{run}`; {time.strftime('%Y-%m-%d %H:%M')}, "
        f"commit {git_commit(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))}, "
        f"{platform.machine()} CPU x{os.cpu_count()}, no GPU.",
        "",
        "## The paper's three effects at this scale",
        "",
        "An effect holds when every margin below is larger than its standard error (± SE).",
        "",
        "| effect | result | margins (± standard error) |",
        "|---|---|---|",
        *[f"| {text} | {mark(ok)} | {detail} |" for _, text, ok, detail in claims],
        "",
        *([over_geometry, ""] if over_geometry else []),
        *([learned, ""] if learned else []),
        f"Retrieval self-test: the oracle ranks first for {ret['oracle_self_test']['top1']:.2f}% of the queries "
        f"({'passed' if ret['oracle_self_test']['passed'] else '**FAILED**'}: >= {ret['oracle_self_test']['floor']:g}%"
        " needed).",
        "",
        *diagnosis(run, holds, knn, ret, motion, out_dim),
        "## Representation: kNN on the synthetic ImageFolder",
        "",
        f"Weighted kNN (k={knn['results'][0]['k_used']}, T={knn['temperature']}), {knn['num_classes']} classes, "
        f"{knn['num_train']} train / {knn['num_val']} test images, teacher weights; standard error "
        "sqrt(p (1 - p) / n).",
        "",
        *knn_table(knn, knn_stage1),
        "",
        "## Future-state retrieval on the val clips",
        "",
        f"{ret['num_queries']} queries, {ret['num_gallery']} gallery frames (the {ret['gallery']}'s representation "
        "of every true next frame; the query's own frame t is excluded). Similarity: cosine of centred "
        "log-probabilities, which is blind to exactly what L_pred is blind to (a constant added to a query).",
        "",
        *retrieval_table(ret),
        "",
        "| EgoAgent minus | Top-1 (points) | mAP (points) |",
        "|---|---|---|",
        *[f"| {k.replace('egoagent_minus_', '')} | {margin(v['top1_diff'], v['top1_diff_se'])} | "
          f"{margin(v['mAP_diff'], v['mAP_diff_se'])} |" for k, v in ret["comparisons"].items()],
        "",
        "Per query: frame t, the true frame t+1, then EgoAgent's top 5 and the copy baseline's top 5 (green: the true "
        "next frame).",
        "",
        "![retrieval examples](eval/retrieval/retrieval_examples.png)",
        "",
        "## 3D motion prediction (15 future poses, autoregressive)",
        "",
        f"{motion['num_clips']} val clips, poses in the `{motion.get('pose_frame', 'camera')}` frame.",
        "",
        *motion_table(motion),
        "",
        "![per horizon](motion_horizon.png)",
        "",
        "![rollouts](eval/motion/rollouts.png)",
        "",
        "## Training",
        "",
        "![training curves](training_curves.png)",
        "",
        "## Time per step (seconds)",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in t.items()],
        "",
        "## Commands",
        "",
        "```",
        *[c for cmds in pipeline["commands"].values() for c in cmds],
        "```",
        "",
    ]
    with open(os.path.join(run, "REPORT.md"), "w") as f:
        f.write("\n".join(lines))
    summary = {"effects": [{"effect": key, "claim": text, "holds": ok, "margins": detail}
                           for key, text, ok, detail in claims],
               "action_beside": learned, "prediction_over_reprojection": over_geometry,
               "knn": {k: v["top1"] for k, v in knn["rows"].items()},
               "retrieval": {k: [v["top1"], v["mAP"]] for k, v in ret["rows"].items()},
               "mpjpe_30fps": {k: motion[k]["mpjpe_30fps"] for k in PREDICTOR_LABELS if k in motion}}
    with open(os.path.join(run, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("\n".join(lines[:14 + len(claims)]))
    return summary


if __name__ == "__main__":
    main()
