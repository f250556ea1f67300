"""The official format: reading official `.pth` checkpoints without torch, the key tables
and shapes they must have, the official argument names, and conversion into our folders."""
