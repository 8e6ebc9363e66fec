"""Logging, TensorBoard scalars and progress/ETA for long loops."""
