"""What runs the model: batched scoring and generation, training examples and packing, the
Trainer's callbacks, DeepSpeed set-up, ranks, metrics."""
