"""Throughput of the training step: samples/s, tokens/s, achieved TFLOP/s (analytic count, internlm/model/flops.py),
MFU against a given or detected peak, and peak memory.

    python benchmarks/bench_train_step.py --config configs/demo/stage2_joint_tiny.py --steps 10
    python benchmarks/bench_train_step.py --config configs/joint_train/lr6e-04_tmp004_300m.py --attn flex \
        --dtype bf16 --batch 16 --accum 1 --steps 20

One full optimizer step (teacher and student forward, backward, clip, AdamW, EMA, centers) on one batch of random
tensors with the real shapes, repeated; data loading is measured separately (benchmarks/bench_dataloader.py).
--compile also times the same trainer after torch.compile of its transformer blocks (model.compile): the ratio
compiled / eager in one run, the compilation (the first compiled steps) reported separately. --threads runs the
whole measurement once per intra-op thread count (CPU). Prints a table and writes JSON (with date, device,
command).

    python benchmarks/bench_train_step.py --config configs/demo/stage2_joint_tiny.py --compile --threads 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

import torch

from internlm.config import load_config, parse_override
from internlm.initialize.launch import init_distributed
from internlm.model.attention import BACKENDS
from internlm.model.flops import sample_cost
from internlm.perf.gpus import peak_tflops

DTYPES = {"fp32": "torch.float32", "bf16": "torch.bfloat16", "fp16": "torch.float16"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--attn", choices=BACKENDS, default=None, help="default: the config's backend")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: the config's dtype")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    p.add_argument("--batch", type=int, default=None, help="samples per step (data.micro_num)")
    p.add_argument("--accum", type=int, default=None, help="gradient-accumulation chunks")
    p.add_argument("--checkpoint", type=float, default=None, help="fraction of blocks recomputed")
    p.add_argument("--peak-tflops", type=float, default=None, help="for MFU; default detected from the GPU name")
    p.add_argument("--device", default=None)
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--compile", action="store_true", help="also time the compiled blocks (ratio to eager)")
    p.add_argument("--threads", type=int, nargs="+", default=None, help="CPU intra-op threads (one run each)")
    p.add_argument("--json", default=None, help="output file (default benchmarks/results/train_step-*.json)")
    return p.parse_args(argv)


def overrides(args) -> list:
    o = [("data.dataset_type", "Generated"), ("data.num_workers", 0), ("ckpt.enable_save_ckpt", False),
         ("ckpt.load_ckpt_info", None), ("ckpt.load_ckpt_folder", None), ("ckpt.auto_resume", False),
         ("monitor.metrics_file", False), ("parallel.zero1", 1)]
    for section in ("model", "teacher"):
        if args.attn:
            o.append((f"{section}.attn_backend", args.attn))
        if args.dtype:
            o.append((f"{section}.dtype", DTYPES[args.dtype]))
    if args.checkpoint is not None:
        o.append(("model.checkpoint", args.checkpoint))
    if args.batch:
        o.append(("data.micro_num", args.batch))
    if args.accum:
        o += [("data.gradient_accumulation", args.accum), ("loss.grad_accum", args.accum)]
    return o


def timed_steps(trainer, batch, steps: int, sync) -> list[float]:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step(batch)
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        results = []
        for n in args.threads:
            torch.set_num_threads(n)
            results.append(measure(args, suffix=f"-threads{n}"))
        return {"by_threads": results}
    return measure(args)


def measure(args, suffix: str = "") -> dict:
    tmp = tempfile.mkdtemp(prefix="bench_train_step_")
    cfg = load_config(args.config, overrides(args) + [parse_override(o) for o in args.opt] + [
        ("ckpt.save_ckpt_folder", tmp), ("monitor.tensorboard_folder", None)])
    ctx = init_distributed(None, device=args.device)
    from torch.utils.data import default_collate

    from internlm.data.generated import GeneratedSamples
    from internlm.train.trainer import Trainer

    trainer = Trainer(cfg, ctx)
    trainer.writer.close()
    ds = GeneratedSamples(cfg.data, joint=cfg.loss.is_joint)
    batch = default_collate([ds[i] for i in range(cfg.data.micro_num)])
    cuda = ctx.device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        trainer.train_step(batch)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = timed_steps(trainer, batch, args.steps, sync)
    step_s = times[len(times) // 2]  # median
    compiled = None
    if args.compile:
        from internlm.parallel.compile import compile_blocks

        compile_blocks(trainer.meta)
        t0 = time.perf_counter()
        for _ in range(max(args.warmup, 2)):  # the first compiled steps compile (both mask layouts, fwd and bwd)
            trainer.train_step(batch)
        sync()
        compile_s = time.perf_counter() - t0
        c_times = timed_steps(trainer, batch, args.steps, sync)
        c_step = c_times[len(c_times) // 2]
        compiled = {"step_s_median": c_step, "samples_per_s": cfg.data.micro_num / c_step,
                    "speedup_vs_eager": step_s / c_step, "compile_and_warmup_s": compile_s,
                    "break_even_steps": compile_s / max(step_s - c_step, 1e-9) if c_step < step_s else None}
    cost = sample_cost(cfg)
    samples_s = cfg.data.micro_num / step_s
    tflops = samples_s * cost.train_flops / 1e12
    peak = args.peak_tflops or (peak_tflops(torch.cuda.get_device_name(), cfg.model.dtype) if cuda else None)
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()}, " \
                                                            f"{torch.get_num_threads()} threads)"
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": device_name, "torch": torch.__version__,
        "command": " ".join(["python"] + sys.argv), "config": args.config, "stage": cfg.stage,
        "attn": cfg.model.resolved_attn_backend, "dtype": cfg.model.dtype, "batch": cfg.data.micro_num,
        "accum": cfg.data.gradient_accumulation, "checkpoint": cfg.model.checkpoint_fraction,
        "step_s_median": step_s, "step_s_min": times[0], "samples_per_s": samples_s,
        "tokens_per_s": samples_s * (cost.student_tokens + cost.teacher_tokens),
        "train_gflop_per_sample": cost.train_flops / 1e9, "tflops": tflops,
        "peak_tflops": peak, "mfu": tflops / peak if peak else None,
        "peak_memory_gib": (torch.cuda.max_memory_allocated() if cuda else
                            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30,
        "memory_kind": "max allocated (CUDA)" if cuda else "max RSS of the process",
        "threads": torch.get_num_threads(), "compiled": compiled,
    }
    rows = [("samples/s", f"{samples_s:.2f}"), ("tokens/s", f"{result['tokens_per_s']:.0f}"),
            ("step (median)", f"{step_s * 1000:.1f} ms"), ("GFLOP/sample", f"{cost.train_flops / 1e9:.2f}"),
            ("TFLOP/s", f"{tflops:.3f}"), ("MFU", f"{100 * result['mfu']:.1f}%" if peak else "n/a (no peak)"),
            ("peak memory", f"{result['peak_memory_gib']:.2f} GiB ({result['memory_kind']})")]
    if compiled:
        rows += [("compiled step", f"{compiled['step_s_median'] * 1000:.1f} ms, "
                                   f"{compiled['speedup_vs_eager']:.2f}x eager"),
                 ("compilation", f"{compiled['compile_and_warmup_s']:.1f} s (first {max(args.warmup, 2)} steps)"
                                 + (f", repaid after {compiled['break_even_steps']:.0f} steps"
                                    if compiled["break_even_steps"] else ", never repaid"))]
    print(f"\n{args.config}  stage {cfg.stage}  {result['attn']}  {cfg.model.dtype}  batch {cfg.data.micro_num}"
          f"  on {device_name}")
    for name, value in rows:
        print(f"  {name:<16}{value}")
    out = args.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                    f"train_step-{os.path.basename(args.config)[:-3]}-{result['attn']}-"
                                    f"{cfg.model.dtype.split('.')[-1]}{suffix}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"  written to {out}")
    return result


if __name__ == "__main__":
    main()
