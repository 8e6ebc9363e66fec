"""Merge the parts of a benchmarks/gpu_check.sh run into OUT/gpu_check.json (whatever parts exist: a part that
failed or ran out of time is recorded with its status), and with --estimate add the roofline estimate of each
measured step beside it (CPU work, fake tensors).

    python benchmarks/gpu_check_summary.py OUT [--estimate]
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

from internlm.initialize.arguments import ScriptArgumentParser

PARTS = ("environment", "attention", "grad_fusion", "step_300m", "step_1b", "estimates")


def read(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def estimate_steps(out: str) -> dict:
    """The roofline estimate (one GPU, no communication) of each measured step, with the settings it ran with."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from internlm.config import load_config
    from internlm.monitor.gpus import gpu_by_device_name, gpu_by_key
    from internlm.perf.roofline import Settings, estimate
    from internlm.perf.trace import trace_step

    env = read(os.path.join(out, "environment.json")) or {}
    gpu = gpu_by_device_name(env.get("name", "")) or gpu_by_key("h100-sxm")
    estimates = {}
    for part in ("step_300m", "step_1b"):
        measured = read(os.path.join(out, f"{part}.json"))
        if not measured or "step_s_median" not in measured:
            continue
        cfg = load_config(measured["config"], [("data.micro_num", measured["batch"]),
                                               ("data.gradient_accumulation", measured["accum"]),
                                               ("loss.grad_accum", measured["accum"]), ("loss.batch_size", None),
                                               ("model.checkpoint", measured["checkpoint"])])
        settings = Settings(compile=measured["compiled_blocks"], checkpoint=measured["checkpoint"],
                            parallel="single", world=1, fused_grads=measured.get("fused_grads", False))
        e = estimate(trace_step(cfg, compiled=settings.compile, fused_grads=settings.fused_grads), gpu, settings)
        estimates[part] = {"gpu": gpu.key, "step_s": e.step_ms / 1e3, "mfu_ceiling": e.mfu,
                           "memory_gib": e.memory["total_gib"], "kernels": e.kernels,
                           "measured_over_estimated_step": measured["step_s_median"] / (e.step_ms / 1e3),
                           "note": "an estimate (internlm/perf/roofline.py), not a measurement"}
        with open(os.path.join(out, "estimates.json"), "w") as f:  # after each: a time-out keeps what is done
            json.dump(estimates, f, indent=1)
    return estimates


def summarize(out: str) -> dict:
    summary = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "out": os.path.abspath(out), "parts": {}}
    for name in PARTS:
        status = read(os.path.join(out, f"{name}.status.json"))
        result = read(os.path.join(out, f"{name}.json"))
        if status is None and result is None:
            summary["parts"][name] = {"status": "not run"}
            continue
        ok = status is not None and status["rc"] == 0
        summary["parts"][name] = {"status": "ok" if ok else ("timed out" if status and status["timed_out"]
                                                               else "failed" if status else "incomplete"),
                                  **(status or {}), "result": result}
    headline = {}
    for part in ("step_300m", "step_1b"):
        r = summary["parts"][part].get("result") or {}
        if "step_s_median" in r:
            headline[part] = {k: r.get(k) for k in ("device", "step_s_median", "samples_per_s", "mfu",
                                                     "peak_memory_gib", "compiled_blocks", "checkpoint")}
    attention = summary["parts"]["attention"].get("result") or {}
    headline["attention"] = {k: attention.get(k) for k in ("ok", "wrong", "cannot_run")}
    fusion = summary["parts"]["grad_fusion"].get("result") or {}
    headline["grad_fusion"] = {k: fusion.get(k) for k in ("ok", "fused_gemm", "fp16", "bf16")}
    summary["headline"] = headline
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    return summary


def main(argv=None) -> dict:
    p = ScriptArgumentParser(description=__doc__)
    p.add_argument("out")
    p.add_argument("--estimate", action="store_true")
    args = p.parse_args(argv)
    if args.estimate:
        print(json.dumps(estimate_steps(args.out), indent=1))
    summary = summarize(args.out)
    for name, part in summary["parts"].items():
        print(f"{name:<12} {part['status']}")
    print(json.dumps(summary["headline"], indent=1, default=str))
    leftover = sorted(os.path.basename(p) for p in glob.glob(os.path.join(args.out, "*.log")))
    print(f"logs: {', '.join(leftover)}")
    return summary


if __name__ == "__main__":
    main()
