"""Performance accounting: GPU specifications (MFU peaks), and the roofline estimate of a training step on fake
tensors (benchmarks/roofline.py)."""
