"""Video pieces both twins share: files (MP4, GIF, WebP, frame folders) with their metadata, and
the official prompt templates of the video models."""
