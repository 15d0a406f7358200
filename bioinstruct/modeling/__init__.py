"""Models and the numbers about them: loading and checks, the tiny LLaMA, batched scoring and
generation, training examples and packing, the Trainer's callbacks and DeepSpeed set-up,
process groups, evaluation metrics."""
