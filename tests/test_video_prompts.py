"""The official video prompt templates (utils/common.py `preprocess_text`), pinned string for string
for every combination of fps_cond, cond_noise_level and mix_aspect. The expected strings are
written out by hand from the official function, not produced by our code."""

from __future__ import annotations

import itertools

import pytest

from starflow_core.video.prompts import TemplateFlags, noise_level_number, wrap_prompt, wrap_prompts

# (fps_cond, cond_noise_level, mix_aspect) -> "a fox" at 16 fps, noise_std 0.5, 16:9
EXPECTED = {
    (0, 0, 0): "a fox",
    (1, 0, 0): "A video with 16 fps:\na fox\n",
    (0, 1, 0): "Noise Level 500:\na fox",
    (0, 0, 1): "a fox\n in a 16:9 aspect ratio.\n",
    (1, 1, 0): "Noise Level 500:\nA video with 16 fps:\na fox\n",
    (1, 0, 1): "A video with 16 fps:\na fox\n\n in a 16:9 aspect ratio.\n",
    (0, 1, 1): "Noise Level 500:\na fox\n in a 16:9 aspect ratio.\n",
    (1, 1, 1): "Noise Level 500:\nA video with 16 fps:\na fox\n\n in a 16:9 aspect ratio.\n",
}


@pytest.mark.parametrize("flags", list(itertools.product((0, 1), repeat=3)))
def test_every_flag_combination_wraps_as_the_official_template(flags):
    template = TemplateFlags(*map(bool, flags))
    wrapped = wrap_prompts(["a fox"], template, fps=16, noise_std=0.5, aspect_ratio="16:9")
    assert wrapped == [EXPECTED[flags]]


def test_the_7b_yaml_flags_wrap_the_empty_prompt_of_guidance_too():
    flags = TemplateFlags.from_arguments({"fps_cond": 1, "cond_noise_level": 1, "mix_aspect": 1})
    assert flags == TemplateFlags(True, True, True)
    wrapped = wrap_prompts(["a fox", ""], flags, fps=16, noise_std=0.5, aspect_ratio="16:9")
    assert wrapped[1] == "Noise Level 500:\nA video with 16 fps:\n\n\n in a 16:9 aspect ratio.\n"


def test_a_batch_gives_each_prompt_its_own_rate_and_noise_level():
    flags = TemplateFlags(fps_cond=True, cond_noise_level=True)
    wrapped = wrap_prompts(["a", "b"], flags, fps=[16, 0], noise_std=[0.5, 0.25])
    assert wrapped == ["Noise Level 500:\nA video with 16 fps:\na\n", "Noise Level 250:\nAn image:\nb\n"]
    with pytest.raises(ValueError, match="3 fps values for 2 prompts"):
        wrap_prompts(["a", "b"], flags, fps=[16, 8, 4], noise_std=0.5)


def test_fps_zero_is_an_image_and_the_noise_level_is_truncated():
    assert wrap_prompt("a fox", fps=0) == "An image:\na fox\n"
    # int(noise_std * 1000) truncates: 0.4999 -> 499 (not 500), 0.0015 -> 1, 2.01 -> 2009
    # (2.01 * 1000 is 2009.9999999999998 in floating point)
    cases = {0.5: 500, 0.4999: 499, 0.0015: 1, 2.01: 2009, 0.1 + 0.2: 300, 0.0: 0, 1: 1000}
    assert {n: noise_level_number(n) for n in cases} == cases
    assert wrap_prompt("a fox", noise_std=0.0) == "Noise Level 0:\na fox"


def test_the_chat_template_of_decoder_only_text_models():
    expected = (
        "<start_of_turn>user\nPlease generate a video about: A video with 8 fps:\na fox\n<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert wrap_prompt("a fox", fps=8, chat_template=True) == expected
    assert wrap_prompt("a fox", fps=0, chat_template=True).startswith(
        "<start_of_turn>user\nPlease generate an image about: An image:\n"
    )
    assert wrap_prompt("a fox", chat_template=True).startswith(
        "<start_of_turn>user\nPlease generate an image"
    )


def test_a_flag_without_its_value_and_bad_values_are_refused():
    with pytest.raises(ValueError, match="needs fps, aspect_ratio"):
        wrap_prompts(["a fox"], TemplateFlags(True, False, True), noise_std=0.5)
    with pytest.raises(ValueError, match="fps must be a whole number"):
        wrap_prompt("a fox", fps=16.0)
    with pytest.raises(ValueError, match="mix_aspect must be 0 or 1"):
        TemplateFlags.from_arguments({"mix_aspect": 2})
    assert wrap_prompts(["a fox"], TemplateFlags(), fps=16) == ["a fox"]  # off: the value is unused
