"""Roofline estimate of a config's training step per GPU, on a CPU, from fake tensors (no GPU, no memory).

    python benchmarks/roofline.py --config configs/joint_train/lr6e-04_tmp004_300m.py --gpu h100-sxm --recommended
    python benchmarks/roofline.py --config configs/joint_train/lr6e-04_tmp004_1b.py --gpu a100-80gb
    python benchmarks/roofline.py --paper_table --json benchmarks/results/roofline-paper.json
    python benchmarks/roofline.py --budget_table        # recompute fraction that fits 40 / 80 GB at the paper batch

Prints, per setting: GPU kernels per optimizer step, GEMM / element-wise / attention / communication time, the host
dispatch time, the step time, the MFU ceiling (model FLOPs / (step time x the dtype's dense peak)) and peak memory per
GPU (model state by parallel mode + the traced buffers at their worst moment). THESE ARE ESTIMATES, NOT
MEASUREMENTS: every kernel at fixed shares of the data-sheet peaks (internlm/perf/roofline.py, Assumptions). What the
settings change is the traced work itself (internlm/perf/trace.py): compiled blocks fuse their element-wise ops,
recomputation re-runs the checkpointed blocks' forward, gradient accumulation fusion adds the weight gradients into
fp32 inside their GEMMs, the parallel mode moves bytes and holds state.

Settings ("as written" = what the config gives on a GPU; "recommended" = what the README tells a user of that card):
- as written: the config's model.checkpoint, parallel.zero1 and bucket size, model.compile and
  parallel.grad_accumulation_fusion as they resolve on CUDA (default on); ``--no_compile`` shows the step without
  both (eager blocks, autograd's gradient accumulation).
- recommended: compiled blocks and gradient accumulation fusion (unless the config turns it off); the smallest
  recompute fraction whose memory fits the card; plain DDP when the replicated optimizer state fits (ZeRO-1's
  parameter broadcast cannot overlap anything), else ZeRO-1; gradients across nodes in the run's dtype
  (parallel.low_precision_comm).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Optional

import torch

from internlm.config import TrainConfig, load_config, parse_override, with_overrides
from internlm.initialize.arguments import ScriptArgumentParser
from internlm.monitor.gpus import GPUS, gpu_by_key
from internlm.parallel.data_parallel import resolve_mode
from internlm.parallel.grad_accumulation import fusion_wanted
from internlm.perf.roofline import Assumptions, Estimate, Settings, estimate
from internlm.perf.trace import StepTrace, trace_step
from internlm.train.meta_arch import AUTOCAST_DTYPES

PAPER_CONFIGS = ("configs/dino_pretrain/lr5e-4_tmp004_300m.py", "configs/dino_pretrain/lr5e-4_tmp004_1b.py",
                 "configs/joint_train/lr6e-04_tmp004_300m.py", "configs/joint_train/lr6e-04_tmp004_1b.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Tracer:
    """Traces of one config, by (recompute fraction, compiled, gradient accumulation fusion), made once."""

    def __init__(self, cfg: TrainConfig, verbose: bool = True):
        self.cfg = cfg
        self.verbose = verbose
        self._traces: dict[tuple[float, bool, bool], StepTrace] = {}

    def get(self, checkpoint: float, compiled: bool, fused_grads: bool = False) -> StepTrace:
        key = (round(checkpoint, 6), compiled, fused_grads)
        if key not in self._traces:
            t0 = time.time()
            cfg = with_overrides(self.cfg, [("model.checkpoint", float(checkpoint))])
            self._traces[key] = trace_step(cfg, compiled=compiled, fused_grads=fused_grads)
            if self.verbose:
                print(f"  traced {os.path.relpath(self.cfg.source_file or '?', REPO)} checkpoint={checkpoint:g} "
                      f"{'compiled' if compiled else 'eager'}{', fused gradients' if fused_grads else ''} in "
                      f"{time.time() - t0:.0f} s", file=sys.stderr)
        return self._traces[key]

    def of(self, s: Settings) -> StepTrace:
        return self.get(s.checkpoint, s.compile, s.fused_grads)


def world_of(cfg: TrainConfig) -> int:
    """The GPUs the config was written for (its N_GPUS constant), else 8."""
    return int(cfg.constants.get("N_GPUS", 8))


def fused_on_cuda(cfg: TrainConfig, mode: str) -> bool:
    """parallel.grad_accumulation_fusion as it resolves on a GPU with this torch."""
    return fusion_wanted(cfg.parallel.grad_accumulation_fusion, torch.device("cuda"),
                         AUTOCAST_DTYPES.get(cfg.model.dtype), mode)


def as_written(cfg: TrainConfig, world: int, compile_blocks: Optional[bool] = None) -> Settings:
    """The config on a GPU; ``compile_blocks=False``: the step before this code's CUDA defaults (eager blocks, no
    gradient accumulation fusion)."""
    mode = resolve_mode(cfg.parallel, world)
    return Settings(compile=cfg.model.compile is not False if compile_blocks is None else compile_blocks,
                    checkpoint=cfg.model.checkpoint_fraction, parallel=mode, world=world,
                    bucket_mb=cfg.hybrid_zero_optimizer.reduce_bucket_size / 2**20,
                    low_precision_comm=cfg.parallel.low_precision_comm, bucket_view=True,
                    fused_grads=compile_blocks is not False and fused_on_cuda(cfg, mode))


def smallest_fitting(tracer: Tracer, gpu, base: Settings, modes: list[str],
                     a: Assumptions) -> tuple[Settings, Estimate]:
    """The smallest fraction of recomputed blocks (a whole number of blocks) whose memory fits ``gpu``, in the first
    of ``modes`` that fits at that fraction; memory falls linearly with the blocks recomputed, so the fraction is
    interpolated between none and all, then checked. Everything recomputed in the last mode if nothing fits."""
    layers = tracer.cfg.model.num_layers

    def settings(fraction: float, mode: str) -> Settings:  # FSDP2 runs without gradient accumulation fusion
        return Settings(**{**base.__dict__, "checkpoint": fraction, "parallel": mode,
                           "fused_grads": base.fused_grads and mode != "fsdp"})

    def try_fraction(k: int) -> Optional[tuple[Settings, Estimate]]:
        for mode in modes:
            s = settings(k / layers, mode)
            e = estimate(tracer.of(s), gpu, s, a)
            if e.memory["fits"]:
                return s, e
        return None

    found = try_fraction(0)
    if found:
        return found
    all_blocks = try_fraction(layers)
    if all_blocks is None:
        s = settings(1.0, modes[-1])
        return s, estimate(tracer.of(s), gpu, s, a)
    mode_all = settings(0.0, all_blocks[0].parallel)
    mem0 = estimate(tracer.of(mode_all), gpu, mode_all, a).memory["total_gib"]
    mem1, usable = all_blocks[1].memory["total_gib"], all_blocks[1].memory["usable_gib"]
    k = max(1, min(layers, math.ceil((mem0 - usable) / max(mem0 - mem1, 1e-9) * layers)))
    while k < layers:
        found = try_fraction(k)
        if found:
            return found
        k += 1
    return all_blocks


def recommended(tracer: Tracer, gpu, world: int, a: Assumptions) -> tuple[Settings, Estimate]:
    """Compiled blocks, gradient accumulation fusion (not with FSDP2, nor where the config turns it off); the
    smallest recompute fraction that fits, with plain DDP if its replicated optimizer state fits, else ZeRO-1, else
    FSDP2; gradients across nodes in the run's dtype."""
    cfg = tracer.cfg
    base = Settings(compile=True, world=world, bucket_mb=cfg.hybrid_zero_optimizer.reduce_bucket_size / 2**20,
                    low_precision_comm=True, bucket_view=True, fused_grads=fused_on_cuda(cfg, "ddp"))
    return smallest_fitting(tracer, gpu, base, ["ddp", "zero1", "fsdp"] if world > 1 else ["single"], a)


# ---------------------------------------------------------------------------------------------- printing

COLUMNS = (("kernels", "kernels", "{:,.0f}"), ("gemm_ms", "GEMM ms", "{:.0f}"), ("elementwise_ms", "elem ms", "{:.0f}"),
           ("attention_ms", "attn ms", "{:.0f}"), ("comm_ms", "comm ms", "{:.0f}"),
           ("comm_exposed_ms", "exposed", "{:.0f}"), ("cpu_ms", "host ms", "{:.0f}"), ("step_ms", "step ms", "{:.0f}"),
           ("mfu", "MFU ceiling", "{:.1%}"))


def describe(s: Settings) -> str:
    low = "low-precision comm" if s.low_precision_comm else "fp32 comm"
    return (f"{'compiled' if s.compile else 'eager'}, recompute {s.checkpoint:.2f}, {s.parallel} x{s.world}, "
            f"{s.bucket_mb:g} MB buckets, {low}{', fused gradient accumulation' if s.fused_grads else ''}")


def print_rows(rows: list[tuple[str, Estimate]]) -> None:
    name_w = max(len(name) for name, _ in rows)
    print(f"{'':{name_w}}  " + "  ".join(f"{title:>11}" for _, title, _ in COLUMNS) + "  memory / usable GiB")
    for name, e in rows:
        cells = "  ".join(f"{fmt.format(getattr(e, key)):>11}" for key, _, fmt in COLUMNS)
        m = e.memory
        print(f"{name:{name_w}}  {cells}  {m['total_gib']:.1f} / {m['usable_gib']:.1f} "
              f"{'fits' if m['fits'] else 'DOES NOT FIT'}")
    for name, e in rows:
        print(f"  {name}: {describe(e.settings)}; {e.host_syncs} host syncs per step; model {e.model_tflop:.1f} / "
              f"executed {e.executed_tflop:.1f} TFLOP per GPU per step")


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = ScriptArgumentParser(description=__doc__)
    p.add_argument("--config", help="a config file")
    p.add_argument("--gpu", default="h100-sxm", help=f"one of {', '.join(g.key for g in GPUS)} (or a100-40gb, "
                                                       "a100-80gb)")
    p.add_argument("--recommended", action="store_true", help="also estimate the recommended settings")
    p.add_argument("--gpus", type=int, default=None, help="GPUs of the run (default: the config's N_GPUS, else 8)")
    p.add_argument("--micro_batch", type=int, default=None, help="data.micro_num (samples per GPU per step)")
    p.add_argument("--no_compile", action="store_true", help="as written, with eager blocks")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--paper_table", action="store_true",
                   help="the four paper configs on A100-80GB and H100-SXM: eager as written, as written, recommended")
    p.add_argument("--budget_table", action="store_true",
                   help="the recompute fraction each paper config needs at its micro batch on 40 and 80 GB cards")
    p.add_argument("--json", default=None, help="write the rows here")
    return p.parse_args(argv)


def load(path: str, args) -> TrainConfig:
    overrides = [parse_override(o) for o in args.opt]
    if args.micro_batch:
        overrides.append(("data.micro_num", args.micro_batch))
    return load_config(path, overrides)


def estimate_config(cfg: TrainConfig, gpu_key: str, with_recommended: bool, eager_too: bool,
                    world: Optional[int] = None, tracer: Optional[Tracer] = None) -> list[tuple[str, Estimate]]:
    a = Assumptions()
    gpu = gpu_by_key(gpu_key)
    world = world or world_of(cfg)
    tracer = tracer or Tracer(cfg)
    rows = []
    settings = [("as written, eager", as_written(cfg, world, False))] if eager_too else []
    settings.append(("as written", as_written(cfg, world)))
    for name, s in settings:
        rows.append((name, estimate(tracer.of(s), gpu, s, a)))
    if with_recommended:
        rows.append(("recommended", recommended(tracer, gpu, world, a)[1]))
    return rows


def paper_table(args) -> list[dict]:
    out = []
    for path in PAPER_CONFIGS:
        cfg = load(os.path.join(REPO, path), args)
        tracer = Tracer(cfg)
        for gpu_key in ("a100-sxm-80gb", "h100-sxm"):
            print(f"\n{path} on {gpu_by_key(gpu_key).title}, {world_of(cfg)} GPUs, micro batch {cfg.data.micro_num} "
                  f"in {cfg.data.gradient_accumulation} chunks")
            rows = estimate_config(cfg, gpu_key, True, True, tracer=tracer)
            print_rows(rows)
            out += [dict(config=path, setting=name, **e.row()) for name, e in rows]
    return out


def budget_table(args) -> list[dict]:
    """What fits at the paper's micro batch on 40 and 80 GB cards (A100s: memory does not depend on the GPU's speed):
    eager in the config's parallel mode (how the authors ran), and recommended (compiled, the cheapest mode)."""
    a = Assumptions()
    out = []
    print(f"\n{'config':<44} {'card':>5}  {'eager, config mode':<26}  {'recommended (compiled)':<36}  MFU (A100)")
    for path in PAPER_CONFIGS:
        cfg = load(os.path.join(REPO, path), args)
        tracer = Tracer(cfg)
        world = world_of(cfg)
        for gpu_key in ("a100-sxm-40gb", "a100-sxm-80gb"):
            gpu = gpu_by_key(gpu_key)
            written = as_written(cfg, world, compile_blocks=False)
            s_eager, e_eager = smallest_fitting(tracer, gpu, written, [written.parallel], a)
            s_rec, e_rec = recommended(tracer, gpu, world, a)
            fits = "" if e_eager.memory["fits"] else " (no fit)"
            print(f"{path:<44} {gpu.memory_gb:>3.0f} GB  recompute {s_eager.checkpoint:.2f} {s_eager.parallel:<5} "
                  f"{e_eager.memory['total_gib']:>5.1f} GiB{fits:<9}  recompute {s_rec.checkpoint:.2f} "
                  f"{s_rec.parallel:<5} {e_rec.memory['total_gib']:>5.1f} GiB{'':<9}  {e_rec.mfu:>6.1%}")
            out += [dict(config=path, card_gb=gpu.memory_gb, setting="eager, config mode", **e_eager.row()),
                    dict(config=path, card_gb=gpu.memory_gb, setting="recommended", **e_rec.row())]
    return out


def main(argv=None) -> list:
    args = parse_args(argv)
    print("Roofline ESTIMATES on fake tensors (not measurements): kernels at fixed shares of the data-sheet peaks; "
          "see internlm/perf/roofline.py")
    if args.paper_table:
        rows = paper_table(args)
    elif args.budget_table:
        rows = budget_table(args)
    else:
        if not args.config:
            raise SystemExit("--config is required (or --paper_table / --budget_table)")
        cfg = load(args.config, args)
        gpu = gpu_by_key(args.gpu)
        world = args.gpus or world_of(cfg)
        print(f"\n{args.config} on {gpu.title}, {world} GPUs, micro batch {cfg.data.micro_num} in "
              f"{cfg.data.gradient_accumulation} chunks, {cfg.model.dtype}")
        est = estimate_config(cfg, args.gpu, args.recommended, args.no_compile, world)
        print_rows(est)
        rows = [dict(config=args.config, setting=name, **e.row()) for name, e in est]
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(["python"] + sys.argv),
                       "assumptions": Assumptions().__dict__, "estimates": rows}, f, indent=1, default=str)
        print(f"written to {args.json}")
    return rows


if __name__ == "__main__":
    main()
