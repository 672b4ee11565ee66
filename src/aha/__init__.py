"""aha: the DeepSeek-R1 training system (GRPO, rule rewards, R1-Zero, the R1 stages, distillation,
evaluation), small enough to read and to run on a laptop CPU."""

__version__ = "0.1.0"
