"""Data parallelism (DDP, ZeRO-1, FSDP2), applied to the model from outside."""
