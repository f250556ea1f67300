"""Framework-free pieces of image generation shared by both twins' pipelines and commands."""
