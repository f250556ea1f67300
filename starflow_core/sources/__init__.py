"""Where a model comes from: our pipeline folders, Hub repos, and the official releases."""

from .hub import MissingModelFileError
from .pipeline_folder import PipelineParts, read_pipeline_folder, write_pipeline_folder
from .releases import RELEASES
from .resolve import resolve

__all__ = [
    "RELEASES",
    "MissingModelFileError",
    "PipelineParts",
    "read_pipeline_folder",
    "resolve",
    "write_pipeline_folder",
]
