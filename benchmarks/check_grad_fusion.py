"""Gradient accumulation fusion on this device (parallel.grad_accumulation_fusion): a stack of InternLM blocks of
the 300M's width, three passes per chunk (two sequence lengths, as the crops and the joint sequence) and two
chunks, under fp16 and bf16 autocast; the blocks' weight gradients from the fused path and from autograd, each
against an fp32 run's (relative error over all of them), and the time of one accumulation step each.

    python benchmarks/check_grad_fusion.py --device cuda --json out.json      (part of benchmarks/gpu_check.sh)

On a GPU with torch's fp16/bf16 -> fp32 GEMM (aten::addmm.dtype_out) the fused path must be at least as close to
fp32 as autograd's (it sums passes and chunks in fp32) and faster; elsewhere it runs the fallback (CPU: a check of
the logic, not of the speed).
"""

from __future__ import annotations

import json
import time

import torch

from internlm.initialize.arguments import ScriptArgumentParser
from internlm.model.attention import MaskLayout
from internlm.model.modeling_internlm import InternLMBackbone
from internlm.parallel.grad_accumulation import GradAccumulationFusion, fused_wgrad_available

LOSS_SCALE = 1024.0  # as fp16 training scales its loss (unscaled gradients of this loss underflow fp16)


def step(backbone, fusion, inputs, dtype, device) -> None:
    """One optimizer step's worth of backward: chunks of passes (x, r), loss = mean(output * r) (scaled; the
    output is RMS-normed, so a loss of its square alone would have no gradient)."""
    if fusion is not None:
        fusion.begin_step()
    for c, passes in enumerate(inputs):
        if fusion is not None:
            fusion.set_sync(c == len(inputs) - 1)
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(
            device.type, enabled=False)
        with autocast, backbone.weights_cast_once(dtype or torch.float32):
            loss = sum((backbone(x, MaskLayout("full", x.shape[1])).float() * r).mean() for x, r in passes)
        (loss * LOSS_SCALE).backward()
    if fusion is not None:
        fusion.finish_step()


def weight_grads(backbone) -> torch.Tensor:
    return torch.cat([p.grad.flatten().float() for n, p in backbone.named_parameters()
                      if "norm" not in n and p.grad is not None]) / LOSS_SCALE


def main(argv=None) -> dict:
    p = ScriptArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda", help="where to run (cuda; cpu checks the fallback's logic)")
    p.add_argument("--tiny", action="store_true", help="a toy width (CI on a CPU)")
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    width, layers, heads, batch, lengths = (64, 2, 2, 2, (20, 50)) if args.tiny else (1024, 4, 8, 8, (197, 796))
    torch.manual_seed(0)
    template = InternLMBackbone(width, layers, heads, 8 / 3).to(device)
    inputs = [[(torch.randn(batch, n, width, device=device), torch.randn(batch, n, width, device=device))
               for n in (lengths[0], lengths[0], lengths[1])] for _ in range(2)]
    result = {"device": str(device), "fused_gemm": fused_wgrad_available() and device.type == "cuda",
              "width": width, "layers": layers, "chunks": 2, "passes": 3}

    def run(dtype, fused: bool, repeats: int = 1):
        model = InternLMBackbone(width, layers, heads, 8 / 3).to(device)
        model.load_state_dict(template.state_dict())
        fusion = GradAccumulationFusion(model, "", 2**62) if fused else None
        seconds = []
        for _ in range(repeats):
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(model, fusion, inputs, dtype, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - t0)
        return weight_grads(model), min(seconds[1:] or seconds)

    reference, _ = run(None, False)
    ok = True
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        repeats = 1 if args.tiny else 4
        plain, t_plain = run(dtype, False, repeats)
        fused, t_fused = run(dtype, True, repeats)
        err = {k: ((g - reference).norm() / reference.norm()).item() for k, g in (("autograd", plain),
                                                                                   ("fused", fused))}
        row = {"rel_error_autograd": err["autograd"], "rel_error_fused": err["fused"],
               "ms_autograd": 1e3 * t_plain, "ms_fused": 1e3 * t_fused,
               "fused_no_less_accurate": err["fused"] <= 1.05 * err["autograd"] + 1e-7}
        result[name] = row
        ok &= row["fused_no_less_accurate"]
        print(f"{name}: relative error of the blocks' weight gradients vs fp32: autograd {err['autograd']:.2e}, "
              f"fused {err['fused']:.2e}; one step {1e3 * t_plain:.1f} ms vs {1e3 * t_fused:.1f} ms")
    result["ok"] = bool(ok)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if not ok:
        raise SystemExit("the fused gradients are further from fp32 than autograd's")
    return result


if __name__ == "__main__":
    main()
