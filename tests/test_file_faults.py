"""Library-level checks of the file-validation fault classes (the command-line cases are in
helpers/fault_files.py, run by tests/test_faults.py): special files, label trimming, the shape
checks' messages."""

from __future__ import annotations

import os

import numpy as np
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


def test_a_trainer_refused_at_the_same_instant_leaves_the_winners_lock_and_folder(tmp_path, monkeypatch):
    """Two trainers start in the same new folder at once: the other one makes the folder and takes
    the lock between this one's look and its own mkdir. This one is refused, and its cleanup must
    not delete the winner's lock or folder (it did when it counted the folder as its own)."""
    import fcntl

    from starflow_core.training import run_folder

    out = tmp_path / "runs" / "run"
    real, held = run_folder.prepare_out_dir, []

    def the_other_trainer_wins(path):
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / run_folder.LOCK_NAME, "a+")  # noqa: SIM115 (a second open file: flock conflicts)
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(lock)
        return real(path)

    monkeypatch.setattr(run_folder, "prepare_out_dir", the_other_trainer_wins)
    with pytest.raises(run_folder.RunFolderBusyError), run_folder.claim_run_folder(out, None, lambda p: p):
        pass
    assert (out / run_folder.LOCK_NAME).is_file()  # the winner's lock and folder are still there
    held[0].close()


@pytest.fixture(scope="module")
def label_pipes(tmp_path_factory):
    import starflow_mlx.pipeline as mlx_pipeline
    import starflow_torch.pipeline as torch_pipeline
    from tests.helpers.tiny_pipeline import make_label_pipeline

    folder = make_label_pipeline(tmp_path_factory.mktemp("labels"))
    return {
        "mlx": mlx_pipeline.StarFlowPipeline.from_pretrained(folder),
        "torch": torch_pipeline.StarFlowPipeline.from_pretrained(folder),
    }


@pytest.mark.parametrize("twin", ["mlx", "torch"])
@pytest.mark.parametrize("masked", [False, True], ids=["image-to-image", "inpainting"])
def test_edits_call_the_per_block_callback(twin, masked, label_pipes):
    """The edit branch returned before passing the callback on: --stepwise-output-dir wrote nothing."""
    pipe = label_pipes[twin]
    size = pipe.default_size
    image = np.zeros((size, size, pipe.image_channels), np.uint8)
    mask = np.ones((size, size), np.float32) if masked else None
    blocks = []
    pipe.generate(
        "cat",
        seeds=1,
        image=image,
        mask_image=mask,
        strength=0.5,
        inpaint_rounds=1,
        callback=lambda index, latents: blocks.append(index),
    )
    assert blocks == list(range(pipe.config.num_blocks))[::-1]  # every block, last index first


@pytest.mark.parametrize(
    "seeds, message",
    [("42", "seeds must be an integer"), ([1.5], "seeds must be an integer"), ([True], "seeds must be")],
)
def test_api_seeds_of_the_wrong_type_are_refused(seeds, message, label_pipes):
    with pytest.raises(ValueError, match=message):  # '42' was taken as the seeds [4, 2]
        label_pipes["torch"].generate("cat", seeds=seeds)


def test_api_height_0_is_an_error_not_the_default(label_pipes):
    for twin in ("mlx", "torch"):
        with pytest.raises(ValueError, match="height 0 is not a positive multiple"):
            label_pipes[twin].generate("cat", seeds=1, height=0)
        with pytest.raises(ValueError, match="width must be a whole number of pixels, got 8.0"):
            label_pipes[twin].generate("cat", seeds=1, width=8.0)


def test_edit_and_score_images_are_read_as_training_reads_them(tmp_path):
    """16-bit greys scaled (a mid-grey scored like white when clipped), transparency onto white."""
    import warnings

    from starflow_core.generation.edit_inputs import load_image
    from tests.helpers.fault_workspace import make_image_modes

    make_image_modes(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each conversion is announced; not what is tested here
        grey = load_image(tmp_path / "grey16.png", 1)
        rgba = load_image(tmp_path / "rgba.png", 3)
    byte = lambda pixels: np.round((pixels + 1) * 127.5)  # [-1, 1] back to 0..255, exact for 8-bit values
    assert np.all(byte(grey) == 128)  # 32896 / 257, not 255
    assert np.all(byte(rgba[:4]) == 255)  # the transparent top half: white
    assert np.all(byte(rgba[4:]) == [200, 0, 0])
