"""STARFlow in MLX: arrays are NHWC (batch, height, width, channels)."""
