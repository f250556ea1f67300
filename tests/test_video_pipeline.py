"""The video pipeline in both twins on tiny random parts: text-to-video through a tiny Wan2.2 VAE
(the prompt template, guidance's wrapped empty prompt, the sliding window, the learned denoiser,
the temporal scale), image-to-video, a label-conditioned pixel video model, the result object."""

from __future__ import annotations

import numpy as np
import pytest

from starflow_core.video.settings import center_crop_box, latent_frames, sliding_window
from tests.helpers.tiny_video import make_label_video_pipeline, make_tiny_video_pipeline

# the twins run the same float32 arithmetic in a different order; a random flow amplifies
# rounding a little through its inverse (image pipelines: 1e-4), the Wan decode adds ~1e-6
TWIN_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("video_pipeline")
    return {"text": make_tiny_video_pipeline(root), "labels": make_label_video_pipeline(root)}


def mlx_pipe(folder):
    from starflow_mlx.video_pipeline import StarFlowVideoPipeline

    return StarFlowVideoPipeline.from_pretrained(folder, dtype="float32")


def torch_pipe(folder):
    from starflow_torch.video_pipeline import StarFlowVideoPipeline

    return StarFlowVideoPipeline.from_pretrained(folder, dtype="float32")


def relative(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_twins_make_the_same_video_beyond_the_training_length(folders):
    """9 frames = 3 latent frames from a model trained on 5 (2 latent): the sliding window, the
    learned denoiser in window chunks, the Wan decode with the 0.6 temporal scale, 16:9."""
    options = dict(seeds=[0, 1], num_frames=9, aspect_ratio="16:9")
    ours = mlx_pipe(folders["text"]).generate_video("a red fox", **options)
    theirs = torch_pipe(folders["text"]).generate_video("a red fox", **options)
    assert ours.frames.shape == theirs.frames.shape == (2, 9, 48, 80, 3)
    assert ours.denoise == theirs.denoise == "learned"
    assert relative(ours.frames, theirs.frames) < TWIN_TOLERANCE
    assert not np.allclose(ours.frames[0], ours.frames[1], atol=1e-3)  # the seeds differ


def test_the_flow_reads_the_official_prompt_template_for_prompt_and_guidance(folders, monkeypatch):
    pipe = mlx_pipe(folders["text"])
    seen = []
    real = type(pipe).encode_text

    def spy(self, prompts, guided):
        seen.extend(prompts)
        return real(self, prompts, guided)

    monkeypatch.setattr(type(pipe), "encode_text", spy)
    pipe.generate_video("a red fox", seeds=[0], num_frames=5, fps=12, aspect_ratio="16:9")
    # the template of official preprocess_text for fps_cond, cond_noise_level (noise_std 0.3) and mix_aspect
    assert seen == [
        "Noise Level 300:\nA video with 12 fps:\na red fox\n\n in a 16:9 aspect ratio.\n",
        "Noise Level 300:\nA video with 12 fps:\n\n\n in a 16:9 aspect ratio.\n",
    ]


def test_the_window_is_set_for_sampling_only(folders, monkeypatch):
    from starflow_mlx.model import StarFlow

    pipe = mlx_pipe(folders["text"])
    calls = []
    real = StarFlow.sample

    def spy(self, noise, *args, **kwargs):
        calls.append((self.config.local_attn_window, kwargs["context_length"], noise.shape[1]))
        return real(self, noise, *args, **kwargs)

    monkeypatch.setattr(StarFlow, "sample", spy)
    pipe.generate_video("a red fox", seeds=[0], num_frames=5)
    pipe.generate_video("a red fox", seeds=[0], num_frames=13)
    assert calls == [(None, None, 2), (2, 1, 4)]  # the training length (2 latent frames), context 1
    assert pipe.flow.config.local_attn_window is None


def test_image_to_video_starts_from_the_given_frame(folders, tmp_path):
    from PIL import Image

    pipe = mlx_pipe(folders["text"])
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (50, 100, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    plain = pipe.generate_video("a red fox", seeds=[0], num_frames=5)
    first = pipe.generate_video("a red fox", seeds=[0], num_frames=5, image=tmp_path / "a.png")
    again = pipe.generate_video("a red fox", seeds=[0], num_frames=5, image=tmp_path / "a.png")
    other = pipe.generate_video("a red fox", seeds=[0], num_frames=5, image=tmp_path / "b.png")
    np.testing.assert_array_equal(first.frames, again.frames)  # seeded noise on the first frame too
    assert not np.allclose(first.frames, plain.frames, atol=1e-3)
    assert not np.allclose(first.frames, other.frames, atol=1e-3)
    assert first.parameters(0)["image"] == str(tmp_path / "a.png")


def test_centre_crop_follows_the_official_resize_then_crop():
    # 50 x 100 (H x W) into 64 x 64: scale max(64/50, 64/100) = 1.28 -> 64 x 128, crop x 32..96
    assert center_crop_box(50, 100, 64, 64) == ((64, 128), (32, 0, 96, 64))
    # 480 x 640 into 352 x 640: scale max(0.733, 1) = 1 -> as is, crop y 64..416
    assert center_crop_box(480, 640, 352, 640) == ((480, 640), (0, 64, 640, 416))


def test_latent_frames_and_windows():
    assert [latent_frames(n, 4) for n in (1, 5, 81, 161)] == [1, 2, 21, 41]
    with pytest.raises(ValueError, match=r"4k \+ 1.*got 80; try 77 or 81"):
        latent_frames(80, 4)
    assert sliding_window(None, 21, 21) is None
    # the official sampler's --context_length default (16) for the 7B's 21-frame window
    assert sliding_window(None, 21, 41).frames == 21 and sliding_window(None, 21, 41).context == 16
    assert sliding_window(None, 9, 17).context == 8  # a window of 9 can re-encode at most 8
    assert sliding_window(8, 21, 5).frames == 8  # the model's own window wins


def test_label_video_model_takes_class_names_and_no_vae(folders, tmp_path):
    ours = mlx_pipe(folders["labels"]).video(["zero", "one"], seeds=[3], num_frames=3)
    theirs = torch_pipe(folders["labels"]).generate_video(["zero", "one"], seeds=[3], num_frames=3)
    assert ours.frames.shape == (2, 3, 8, 8, 3) and ours.frames.dtype == np.uint8  # grey shown as RGB
    assert relative(ours.generation.frames, theirs.frames) < TWIN_TOLERANCE
    assert ours.generation.denoise == "score"  # no learned denoiser: the score step
    assert ours.seeds == [3, 3] and ours.fps == 8
    written = ours.save(tmp_path / "digits.gif", metadata=True)
    assert [path.name for path in written] == [
        "digits_0000_seed3.gif", "digits_0000_seed3.json", "digits_0001_seed3.gif", "digits_0001_seed3.json",
    ]  # fmt: skip
    again = ours.save(tmp_path / "digits.gif")
    assert again[0].name == "digits_0000_seed3_1.gif"  # never overwritten


def test_the_deep_block_progress_bar_counts_frames(folders, monkeypatch):
    from starflow_mlx import sampling

    bars = []
    real = sampling.tqdm

    def spy(*args, **kwargs):
        bars.append((kwargs.get("desc"), kwargs.get("unit"), kwargs.get("unit_scale")))
        return real(*args, **{**kwargs, "disable": True})

    monkeypatch.setattr(sampling, "tqdm", spy)
    mlx_pipe(folders["text"]).generate_video("a red fox", seeds=[0], num_frames=5, progress=True)
    # the deep block (2) spans frames: 16 tokens a 64x64 frame; frame-local blocks run one frame each
    assert bars == [("block 2", " frame", 1 / 16), ("block 1", None, None), ("block 0", None, None)]
