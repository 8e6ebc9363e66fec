"""Run measurements: logging, TensorBoard scalars, progress/ETA for long loops, and the GPU data sheets whose peaks
are MFU's denominator (gpus.py)."""
