"""Performance accounting: the roofline estimate of a training step on fake tensors (benchmarks/roofline.py),
priced with the GPU data sheets of internlm/monitor/gpus.py."""
