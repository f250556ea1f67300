"""Library-level checks of the file-validation fault classes (the command-line cases are in
helpers/fault_files.py, run by tests/test_faults.py): special files, label trimming, the shape
checks' messages."""

from __future__ import annotations

import os

import pytest
from PIL import ImageFont

from starflow_core.generation.images import _fit
from starflow_core.validation import FileFormatError, load_yaml, refuse_special_file


def test_a_fifo_is_refused_without_being_opened(tmp_path):
    fifo = tmp_path / "prompts.txt"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes: it is never opened
    with pytest.raises(FileFormatError, match=r"--prompt-file .*prompts.txt is a FIFO \(named pipe\)"):
        refuse_special_file(fifo, "--prompt-file")
    refuse_special_file(tmp_path, "a folder")  # folders and regular files pass
    refuse_special_file(tmp_path / "missing", "a missing file")  # left to the caller's message


class CountingFont:
    """A font that counts the characters it measures."""

    def __init__(self, font):
        self.font, self.measured = font, 0

    def getlength(self, text: str) -> float:
        self.measured += len(text)
        return self.font.getlength(text)


def test_a_long_row_label_is_trimmed_in_linear_time():
    font = ImageFont.load_default(size=12)
    for text in ("cat", "a photo of a cat " * 20, "x" * 3_000):
        # the longest prefix + "..." that fits, one character at a time (from the first 200:
        # 160 pixels never hold more, and this loop is the quadratic one that was replaced)
        naive = text[:200]
        if font.getlength(naive) > 160:
            while font.getlength(naive + "...") > 160:
                naive = naive[:-1]
            naive += "..."
        counting = CountingFont(font)
        assert _fit(text, counting, 160) == naive
        # at most ~log2(161) measurements of at most 164 characters each, whatever the length
        assert counting.measured <= 10 * 164, counting.measured


def test_yaml_python_tags_are_refused_by_name():
    for text in ("a: !!python/object/apply:os.system ['true']", "!!python/name:os.system"):
        with pytest.raises(FileFormatError, match="uses the YAML tag .*python/.*refused"):
            load_yaml(text, "run.yaml", "fix it")
