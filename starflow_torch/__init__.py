"""STARFlow in PyTorch: tensors are NCHW (batch, channels, height, width)."""
