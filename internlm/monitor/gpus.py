"""Data-sheet numbers of the GPUs this framework is planned for, looked up by the exact name CUDA reports.

Peaks are dense (no 2:4 sparsity), per GPU, in TFLOP/s: ``tensor16`` for fp16/bf16 tensor cores, ``tf32`` for
fp32 matmuls with TF32 allowed (model.dtype "torch.tf32"), ``fp32`` for plain fp32 (PyTorch's default for fp32
matmuls on CUDA, so an fp32 run is measured against it). Memory bandwidth in GB/s, memory in GB (10^9 bytes),
``nvlink_gbs``: the all-reduce bus bandwidth NCCL reaches between the GPUs of one node (0: PCIe only);
``nic_gbs``: the network bandwidth per GPU between nodes in the usual 8-GPU server of that GPU (one InfiniBand
adapter per GPU: 200 Gb/s HDR with A100, 400 Gb/s NDR with H100/H200), GB/s.

Matching is by full name, never by substring: "H100 PCIe" (756 TFLOP/s) is not "H100 80GB HBM3" (989), and
"H20" is not "H200". A name not listed gives None: MFU is then left out unless monitor.peak_tflops is set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class GPUSpec:
    key: str
    title: str
    tensor16: float  # TFLOP/s, fp16/bf16 tensor cores, dense
    tf32: float
    fp32: float
    hbm_gbs: float  # memory bandwidth, GB/s
    memory_gb: float
    nvlink_gbs: float  # achievable all-reduce bus bandwidth inside a node, GB/s (0: PCIe only)
    nic_gbs: float  # network bandwidth per GPU between nodes, GB/s
    names: tuple[str, ...]  # torch.cuda.get_device_name(), without the "NVIDIA " / "Tesla " prefix, as regexes

    def peak_tflops(self, dtype: str) -> float:
        """Peak for a model.dtype value ("torch.float16", "torch.bfloat16", "torch.tf32", "torch.float32")."""
        if dtype in ("torch.float16", "torch.half", "torch.bfloat16"):
            return self.tensor16
        return self.tf32 if dtype == "torch.tf32" else self.fp32

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9


# NVIDIA data sheets (A100: 2021 revision; H100 / H200: 2024). The NVLink column is a bus bandwidth NCCL's
# all_reduce_perf reports on 8-GPU nodes (A100 ~230 GB/s, H100 ~450 GB/s), not the link's marketing figure.
GPUS = (
    GPUSpec("a100-sxm-40gb", "A100 SXM4 40GB", 312.0, 156.0, 19.5, 1555.0, 40.0, 230.0, 25.0, (r"A100-SXM4?-40GB",)),
    GPUSpec("a100-sxm-80gb", "A100 SXM4 80GB", 312.0, 156.0, 19.5, 2039.0, 80.0, 230.0, 25.0, (r"A100-SXM4?-80GB",)),
    GPUSpec("a100-pcie-40gb", "A100 PCIe 40GB", 312.0, 156.0, 19.5, 1555.0, 40.0, 0.0, 25.0, (r"A100-PCIE-40GB",)),
    GPUSpec("a100-pcie-80gb", "A100 PCIe 80GB", 312.0, 156.0, 19.5, 1935.0, 80.0, 0.0, 25.0, (r"A100 80GB PCIe",)),
    GPUSpec("a800-sxm-80gb", "A800 SXM4 80GB", 312.0, 156.0, 19.5, 2039.0, 80.0, 150.0, 25.0, (r"A800-SXM4-80GB",)),
    GPUSpec("h100-sxm", "H100 SXM5 80GB", 989.4, 494.7, 66.9, 3350.0, 80.0, 450.0, 50.0,
            (r"H100 80GB HBM3", r"H100-SXM5-80GB")),
    GPUSpec("h100-pcie", "H100 PCIe 80GB", 756.5, 378.0, 51.2, 2039.0, 80.0, 0.0, 50.0, (r"H100 PCIe",)),
    GPUSpec("h100-nvl", "H100 NVL 94GB", 835.5, 417.5, 60.0, 3938.0, 94.0, 0.0, 50.0, (r"H100 NVL",)),
    GPUSpec("h800-sxm", "H800 SXM5 80GB", 989.4, 494.7, 66.9, 3350.0, 80.0, 200.0, 50.0, (r"H800",)),
    GPUSpec("h200", "H200 SXM 141GB", 989.4, 494.7, 66.9, 4800.0, 141.0, 450.0, 50.0, (r"H200",)),
    GPUSpec("h200-nvl", "H200 NVL 141GB", 835.5, 417.5, 60.0, 4800.0, 141.0, 0.0, 50.0, (r"H200 NVL",)),
    GPUSpec("l40s", "L40S 48GB", 362.1, 183.0, 91.6, 864.0, 48.0, 0.0, 25.0, (r"L40S",)),
    GPUSpec("a10", "A10 24GB", 125.0, 62.5, 31.2, 600.0, 24.0, 0.0, 12.5, (r"A10",)),
    GPUSpec("v100-sxm2", "V100 SXM2", 125.0, 15.7, 15.7, 900.0, 32.0, 120.0, 12.5, (r"V100-SXM2-(16|32)GB",)),
)
ALIASES = {"a100-40gb": "a100-sxm-40gb", "a100-80gb": "a100-sxm-80gb", "h100": "h100-sxm", "h200-sxm": "h200"}


def gpu_by_key(key: str) -> GPUSpec:
    key = ALIASES.get(key.lower(), key.lower())
    for spec in GPUS:
        if spec.key == key:
            return spec
    raise ValueError(f"unknown GPU type {key!r}; expected one of {', '.join(s.key for s in GPUS)} "
                     f"(or {', '.join(ALIASES)})")


def gpu_by_device_name(device_name: str) -> Optional[GPUSpec]:
    """The spec whose name pattern matches the whole of ``device_name`` (as torch.cuda.get_device_name gives it)."""
    name = re.sub(r"^(NVIDIA|Tesla)\s+", "", device_name.strip())
    for spec in GPUS:
        if any(re.fullmatch(pattern, name) for pattern in spec.names):
            return spec
    return None


def peak_tflops(device_name: str, dtype: str) -> Optional[float]:
    """MFU denominator of a run in ``dtype`` (model.dtype) on ``device_name``; None for an unlisted GPU."""
    spec = gpu_by_device_name(device_name)
    return spec.peak_tflops(dtype) if spec else None
