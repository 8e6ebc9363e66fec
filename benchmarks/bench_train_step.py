"""Throughput of the training step: samples/s, tokens/s, achieved TFLOP/s (analytic count, internlm/model/flops.py),
MFU against the peak of the exact GPU and the run's dtype (internlm/monitor/gpus.py), and peak memory.

    python benchmarks/bench_train_step.py --config configs/demo/stage2_joint_tiny.py --steps 10
    python benchmarks/bench_train_step.py --config configs/joint_train/lr6e-04_tmp004_300m.py --recommended --estimate

One full optimizer step (teacher and student forward, backward over data.gradient_accumulation chunks, clip, AdamW,
EMA, centers) on a batch of random tensors with the real shapes, repeated with the run's settings: the config's
micro batch, accumulation, dtype, recompute fraction and model.compile (default on CUDA), unless overridden. The
batch sits in pinned memory and is copied to the GPU one step ahead on a side stream (internlm/data/prefetch.py,
what training does), so the step does not wait for it. Data loading is measured apart (bench_dataloader.py).

--recommended: the settings benchmarks/roofline.py recommends for this GPU (compiled blocks, the smallest recompute
fraction that fits); --estimate: the roofline's estimate of the same step beside the measurement (one process, no
communication). --compile times eager first, then the same trainer with compiled blocks (the ratio, compilation
apart). --threads runs the whole measurement once per intra-op thread count (CPU). Prints a table and writes JSON
(with date, device, command).
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import platform
import resource
import sys
import tempfile
import time

import torch

from internlm.config import load_config, parse_override, with_overrides
from internlm.data.prefetch import DevicePrefetcher
from internlm.initialize.arguments import ScriptArgumentParser
from internlm.initialize.launch import init_distributed
from internlm.model.attention import BACKENDS
from internlm.model.flops import sample_cost
from internlm.monitor.gpus import GPUS, gpu_by_device_name, gpu_by_key, peak_tflops

DTYPES = {"fp32": "torch.float32", "bf16": "torch.bfloat16", "fp16": "torch.float16"}


def parse_args(argv=None):
    p = ScriptArgumentParser(description=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--attn", choices=BACKENDS, default=None, help="default: the config's backend")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: the config's dtype")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    p.add_argument("--batch", type=int, default=None, help="samples per step (data.micro_num)")
    p.add_argument("--accum", type=int, default=None, help="gradient-accumulation chunks")
    p.add_argument("--checkpoint", type=float, default=None, help="fraction of blocks recomputed")
    p.add_argument("--recommended", action="store_true",
                   help="the roofline's recommended settings for this GPU (compile, recompute fraction)")
    p.add_argument("--estimate", action="store_true", help="the roofline's estimate of this step beside it")
    p.add_argument("--gpu", default=None, help=f"GPU type for --recommended / --estimate off a GPU "
                                                 f"({', '.join(g.key for g in GPUS)})")
    p.add_argument("--peak_tflops", type=float, default=None, help="for MFU; default from the exact GPU name")
    p.add_argument("--device", default=None)
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--compile", action="store_true", help="time eager, then compiled blocks (ratio to eager)")
    p.add_argument("--threads", type=int, nargs="+", default=None, help="CPU intra-op threads (one run each)")
    p.add_argument("--json", default=None, help="output file (default benchmarks/results/train_step-*.json)")
    return p.parse_args(argv)


def overrides(args) -> list:
    o = [("data.dataset_type", "Generated"), ("data.num_workers", 0), ("ckpt.enable_save_ckpt", False),
         ("ckpt.load_ckpt_info", None), ("ckpt.load_ckpt_folder", None), ("ckpt.auto_resume", False),
         ("monitor.metrics_file", False), ("parallel.zero1", 1), ("data.calibration_takes", 0)]
    for section in ("model", "teacher"):
        if args.attn:
            o.append((f"{section}.attn_backend", args.attn))
        if args.dtype:
            o.append((f"{section}.dtype", DTYPES[args.dtype]))
    if args.compile:
        o.append(("model.compile", False))  # the eager baseline first
    if args.checkpoint is not None:
        o.append(("model.checkpoint", args.checkpoint))
    if args.batch:
        o += [("data.micro_num", args.batch), ("loss.batch_size", None)]
    if args.accum:
        o += [("data.gradient_accumulation", args.accum), ("loss.grad_accum", args.accum), ("loss.batch_size", None)]
    return o


def timed_steps(trainer, batches, steps: int, sync) -> list[float]:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step(next(batches))
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


def gpu_spec(args, cuda: bool):
    if args.gpu:
        return gpu_by_key(args.gpu)
    return gpu_by_device_name(torch.cuda.get_device_name()) if cuda else None


def roofline(cfg, args, cuda: bool):
    """(settings applied, estimate) of benchmarks/roofline.py for this one-process step."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from roofline import Tracer, recommended

    from internlm.perf.roofline import Assumptions, Settings, estimate

    spec = gpu_spec(args, cuda)
    if spec is None:
        raise SystemExit("--recommended / --estimate: unknown GPU; pass --gpu (one of "
                         f"{', '.join(g.key for g in GPUS)})")
    tracer = Tracer(cfg)
    if args.recommended:
        settings, est = recommended(tracer, spec, 1, Assumptions())
    else:
        from internlm.parallel.grad_accumulation import fusion_wanted
        from internlm.train.meta_arch import AUTOCAST_DTYPES

        fused = fusion_wanted(cfg.parallel.grad_accumulation_fusion, torch.device("cuda" if cuda else "cpu"),
                              AUTOCAST_DTYPES.get(cfg.model.dtype), "single")
        settings = Settings(compile=cfg.model.compile is not False if cuda else bool(cfg.model.compile),
                            checkpoint=cfg.model.checkpoint_fraction, parallel="single", world=1, fused_grads=fused)
        est = estimate(tracer.of(settings), spec, settings)
    return settings, est


def measure(args, suffix: str = "") -> dict:
    tmp = tempfile.mkdtemp(prefix="bench_train_step_")
    cfg = load_config(args.config, overrides(args) + [parse_override(o) for o in args.opt] + [
        ("ckpt.save_ckpt_folder", tmp), ("monitor.tensorboard_folder", None)])
    ctx = init_distributed(None, device=args.device)
    cuda = ctx.device.type == "cuda"
    settings = est = None
    if args.recommended or args.estimate:
        settings, est = roofline(cfg, args, cuda)
        gc.collect()  # the traces' millions of small objects would slow every later garbage collection
        if args.recommended:
            cfg = with_overrides(cfg, [("model.checkpoint", settings.checkpoint), ("model.compile", settings.compile)])
    from torch.utils.data import default_collate

    from internlm.data.generated import GeneratedSamples
    from internlm.train.trainer import Trainer

    trainer = Trainer(cfg, ctx)
    trainer.writer.close()
    ds = GeneratedSamples(cfg.data, joint=cfg.loss.is_joint)
    batch = default_collate([ds[i] for i in range(cfg.data.micro_num)])
    if cuda:
        batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}
    batches = iter(DevicePrefetcher(itertools.repeat(batch), ctx.device))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        trainer.train_step(next(batches))
    sync()
    warmup_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = timed_steps(trainer, batches, args.steps, sync)
    step_s = times[len(times) // 2]  # median
    compiled = None
    if args.compile:
        from internlm.parallel.compile import compile_blocks

        compile_blocks(trainer.meta, cfg)
        t0 = time.perf_counter()
        for _ in range(max(args.warmup, 2)):  # the first compiled steps compile (every shape, fwd and bwd)
            trainer.train_step(next(batches))
        sync()
        compile_s = time.perf_counter() - t0
        c_times = timed_steps(trainer, batches, args.steps, sync)
        c_step = c_times[len(c_times) // 2]
        compiled = {"step_s_median": c_step, "samples_per_s": cfg.data.micro_num / c_step,
                    "speedup_vs_eager": step_s / c_step, "compile_and_warmup_s": compile_s,
                    "break_even_steps": compile_s / max(step_s - c_step, 1e-9) if c_step < step_s else None}
    cost = sample_cost(cfg.model, cfg.sample_shapes())
    samples_s = cfg.data.micro_num / step_s
    tflops = samples_s * cost.train_flops / 1e12
    peak = args.peak_tflops or (peak_tflops(torch.cuda.get_device_name(), cfg.model.dtype) if cuda else None)
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()}, " \
                                                            f"{torch.get_num_threads()} threads)"
    from internlm.parallel.compile import compile_enabled

    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": device_name, "torch": torch.__version__,
        "command": " ".join(["python"] + sys.argv), "config": args.config, "stage": cfg.stage,
        "attn": cfg.model.resolved_attn_backend, "dtype": cfg.model.dtype, "batch": cfg.data.micro_num,
        "accum": cfg.data.gradient_accumulation, "checkpoint": cfg.model.checkpoint_fraction,
        "compiled_blocks": compile_enabled(cfg, ctx.device) and not args.compile,
        "fused_grads": trainer.plan.fusion is not None,
        "step_s_median": step_s, "step_s_min": times[0], "warmup_s": warmup_s, "samples_per_s": samples_s,
        "tokens_per_s": samples_s * (cost.student_tokens + cost.teacher_tokens),
        "train_gflop_per_sample": cost.train_flops / 1e9, "tflops": tflops,
        "peak_tflops": peak, "mfu": tflops / peak if peak else None,
        "peak_memory_gib": (torch.cuda.max_memory_allocated() if cuda else
                            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30,
        "memory_kind": "max allocated (CUDA)" if cuda else "max RSS of the process",
        "threads": torch.get_num_threads(), "compiled": compiled,
        "roofline_estimate": None if est is None else {
            "gpu": est.gpu, "step_s": est.step_ms / 1e3, "mfu_ceiling": est.mfu, "kernels": est.kernels,
            "memory_gib": est.memory["total_gib"], "settings": est.settings.__dict__,
            "measured_over_estimated_step": step_s / (est.step_ms / 1e3)},
    }
    rows = [("samples/s", f"{samples_s:.2f}"), ("tokens/s", f"{result['tokens_per_s']:.0f}"),
            ("step (median)", f"{step_s * 1000:.1f} ms"), ("GFLOP/sample", f"{cost.train_flops / 1e9:.2f}"),
            ("TFLOP/s", f"{tflops:.3f}"), ("MFU", f"{100 * result['mfu']:.1f}%" if peak else "n/a (no peak)"),
            ("peak memory", f"{result['peak_memory_gib']:.2f} GiB ({result['memory_kind']})")]
    if est is not None:
        rows += [("roofline estimate", f"{est.step_ms:.1f} ms, MFU ceiling {100 * est.mfu:.1f}%, "
                                       f"{est.memory['total_gib']:.1f} GiB on {est.gpu} (an estimate)")]
    if compiled:
        rows += [("compiled step", f"{compiled['step_s_median'] * 1000:.1f} ms, "
                                   f"{compiled['speedup_vs_eager']:.2f}x eager"),
                 ("compilation", f"{compiled['compile_and_warmup_s']:.1f} s (first {max(args.warmup, 2)} steps)"
                                 + (f", repaid after {compiled['break_even_steps']:.0f} steps"
                                    if compiled["break_even_steps"] else ", never repaid"))]
    print(f"\n{args.config}  stage {cfg.stage}  {result['attn']}  {cfg.model.dtype}  batch {cfg.data.micro_num} in "
          f"{cfg.data.gradient_accumulation} chunks  recompute {cfg.model.checkpoint_fraction:g}  "
          f"{'compiled' if result['compiled_blocks'] else 'eager'}  on {device_name}")
    for name, value in rows:
        print(f"  {name:<18}{value}")
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
