"""Correctness of every attention backend in fp16 and bf16 at the paper's sequence lengths, forward and gradients,
against an fp32 reference on the same device (and flex's gradients against sdpa's): the first thing to run on a
new GPU (benchmarks/gpu_check.sh).

    python benchmarks/check_attention.py --device cuda --json gpu_check/attention.json
    python benchmarks/check_attention.py --device cpu --tiny       # what a CPU can run (no flex backward there)

Layouts (internlm/model/attention.py): a global view (197 tokens, full), a local view (50, full) and the joint clip
(4 steps x (196 + 3) = 796 tokens, block-causal), with the heads of the 300M (8 x 128) and 1B (16 x 128) models.
Each backend runs through the model's own AttentionKernel (its masks, its compiled flex on CUDA). The error is the
largest absolute difference to the fp32 reference divided by the reference's largest magnitude; a case passes
below 16 eps of its dtype (fp16 0.016, bf16 0.125; the JSON keeps every number, a kernel that is right lands far
below). A backend that cannot run a case is reported with AttentionBackendError's reason, never silently skipped;
exit status 1 when any case is wrong.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from internlm.initialize.arguments import ScriptArgumentParser
from internlm.model.attention import (
    AttentionBackendError,
    AttentionKernel,
    MaskLayout,
    check_backend,
    joint_layout,
    representation_layout,
)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def layouts(tiny: bool) -> dict[str, MaskLayout]:
    if tiny:  # the same kinds of mask at CPU sizes
        return {"global": representation_layout(16, True, True), "joint": joint_layout(2, 16, True)}
    return {"global": representation_layout(196, True, True), "local": representation_layout(49, True, True),
            "joint": joint_layout(4, 196, True)}


def heads(tiny: bool) -> dict[str, tuple[int, int]]:
    return {"tiny": (2, 16)} if tiny else {"300m": (8, 128), "1b": (16, 128)}


def reference(q, k, v, layout: MaskLayout, scale: float) -> torch.Tensor:
    """fp32 attention written out: softmax(q k^T scale + mask) v."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    allowed = layout.dense(q.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1) @ v.float()


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().float(), ref.detach()
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def check_case(backend: str, layout: MaskLayout, H: int, D: int, dtype: torch.dtype, device: torch.device,
               batch: int, with_grad: bool) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(batch, H, layout.seq_len, D, generator=g).to(device) for _ in range(3))
    dout = torch.randn(batch, H, layout.seq_len, D, generator=g).to(device)
    scale = D ** -0.5
    q32, k32, v32 = (t.clone().requires_grad_(with_grad) for t in (q, k, v))
    ref = reference(q32, k32, v32, layout, scale)
    row = {"backend": backend, "layout": layout.kind, "seq_len": layout.seq_len, "heads": H, "head_dim": D,
           "dtype": str(dtype).split(".")[-1]}
    try:
        check_backend(backend, layout.kind, device, dtype, needs_grad=with_grad)
        kernel = AttentionKernel(backend)
        ql, kl, vl = (t.to(dtype).requires_grad_(with_grad) for t in (q, k, v))
        out = kernel(ql, kl, vl, kernel.prepare(layout, device, dtype), scale)
    except AttentionBackendError as exc:
        return {**row, "status": "cannot run", "why": str(exc)}
    limit = 16 * torch.finfo(dtype).eps
    row["forward_error"] = relative_error(out, ref)
    ok = row["forward_error"] < limit
    if with_grad:
        ref.backward(dout)
        out.backward(dout.to(dtype))
        for name, low, high in (("dq", ql, q32), ("dk", kl, k32), ("dv", vl, v32)):
            row[f"{name}_error"] = relative_error(low.grad, high.grad)
            ok &= row[f"{name}_error"] < limit
        row["grads"] = {"dq": ql.grad, "dk": kl.grad, "dv": vl.grad}
    row.update(status="ok" if ok else "WRONG", limit=limit)
    return row


def run(device: torch.device, tiny: bool, backends: list[str], dtypes: list[str], batch: int) -> list[dict]:
    rows = []
    for (model, (H, D)) in heads(tiny).items():
        for name, layout in layouts(tiny).items():
            for dtype_name in dtypes:
                dtype = DTYPES[dtype_name]
                with_grad = not (device.type == "cpu" and "flex" in backends)  # flex has no CPU backward
                by_backend = {}
                for backend in backends:
                    grad_here = with_grad or backend != "flex"
                    row = check_case(backend, layout, H, D, dtype, device, batch, grad_here)
                    row.update(model=model, view=name)
                    by_backend[backend] = row
                sdpa, flex = by_backend.get("sdpa", {}), by_backend.get("flex", {})
                if "grads" in sdpa and "grads" in flex:  # flex's gradients against sdpa's, same dtype
                    flex["flex_vs_sdpa_grad_error"] = max(relative_error(flex["grads"][n], sdpa["grads"][n].float())
                                                          for n in ("dq", "dk", "dv"))
                elif flex.get("status") == "ok" and device.type == "cpu":
                    flex["grads_not_checked"] = "FlexAttention has no backward on the CPU; checked on a GPU"
                for row in by_backend.values():
                    row.pop("grads", None)
                    rows.append(row)
                    line = "  ".join(f"{k} {row[k]:.2e}" for k in row if k.endswith("_error"))
                    print(f"{model:>5} {name:<6} {row['dtype']:<8} {row['backend']:<5} {row['status']:<10} "
                          f"{line or row.get('why', '')}", flush=True)
    return rows


def main(argv=None) -> dict:
    p = ScriptArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="CPU-sized layouts and heads")
    p.add_argument("--backends", nargs="+", default=["sdpa", "flex", "flash"])
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    t0 = time.time()
    rows = run(device, args.tiny, args.backends, args.dtypes, args.batch)
    wrong = [r for r in rows if r["status"] == "WRONG"]
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(["python"] + sys.argv),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "seconds": time.time() - t0, "cases": rows,
              "ok": sum(r["status"] == "ok" for r in rows), "wrong": len(wrong),
              "cannot_run": sum(r["status"] == "cannot run" for r in rows)}
    print(f"{result['ok']} ok, {result['wrong']} WRONG, {result['cannot_run']} cannot run ({result['seconds']:.0f} s)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if wrong:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
