"""Deprecated: `python -m starflow_torch.sample` is now `python -m starflow_torch.generate` (same flags)."""

import sys

from .generate import main

if __name__ == "__main__":
    print("note: starflow_torch.sample is deprecated; use python -m starflow_torch.generate", file=sys.stderr)
    sys.exit(main())
