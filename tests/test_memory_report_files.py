"""The memory report's work folders on a full disk: no config.json without its weights."""

from __future__ import annotations

import errno

import pytest

from starflow_core import presets
from starflow_core.generation import memory_report


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("kind", ["flow", "t5"])
def test_a_full_disk_leaves_no_stray_config(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(memory_report, "write_random_safetensors", full_disk)
    folder = tmp_path / kind
    with pytest.raises(OSError, match="No space"):
        if kind == "flow":
            memory_report.write_flow_folder(folder, presets.preset("tiny"), "float32")
        else:
            memory_report.write_t5_folder(folder)
    assert not (folder / "config.json").exists()
