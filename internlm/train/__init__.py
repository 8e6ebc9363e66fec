"""Training: the meta-architecture (student, EMA teacher, losses) and the loop."""
