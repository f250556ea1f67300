"""Evaluation as papers report it, framework-free: the maths of FID, Inception Score,
precision/recall and bits/dim intervals (metrics), sample sets written in shards (sample_sets),
the digit feature extractor (digit_features) and the command lines both twins share."""
