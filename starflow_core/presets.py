"""Named model configurations, each a `replace` of one STARFlow text-to-image base.

The base is the architecture of Apple's released 3B model (configs/starflow_3B_t2i_256x256.yaml
with the official train.py defaults, SPEC section 4): RoPE, sos, softplus scale, final norm,
soft clip 4, text in the deep block only, L2R. The other presets change only what they must.
"""

from __future__ import annotations

from starflow_core.config import FlowConfig

STARFLOW_3B_T2I_256 = FlowConfig(
    in_channels=4,
    img_size=32,
    patch_size=1,
    channels=3072,
    num_blocks=6,
    layers_per_block=(2, 2, 2, 2, 2, 24),
    head_dim=64,
    rope=True,
    sos=True,
    txt_size=128,
    txt_dim=2048,
    cond_top_only=True,
    use_softplus=True,
    use_final_norm=True,
    soft_clip=4.0,
    seq_order="L2R",
    noise_std=0.3,
)

# The released STARFlow-V 7B text-to-video model (configs/starflow-v_7B_t2v_caus_480p.yaml with the
# official train.py defaults, SPEC section 9): Wan2.2 latents (48 channels, 640 px / 16 = 40),
# a 4096-wide deep block, frame-local shallow blocks, the conditional learned denoiser.
STARFLOW_V_7B_T2V_480P = STARFLOW_3B_T2I_256.replace(
    in_channels=48,
    img_size=40,
    pt_seq_len=32,
    txt_size=256,
    noise_std=0.5,
    top_block_channels=4096,
    temporal_causal=2,
    shallow_block_local=True,
    learnable_self_denoiser=True,
    conditional_denoiser=True,
    denoiser_window=10,
)

PRESETS: dict[str, FlowConfig] = {
    "starflow-3b-t2i-256": STARFLOW_3B_T2I_256,
    "starflow-v-7b-t2v-480p": STARFLOW_V_7B_T2V_480P,
    # the sampling benchmark model (57M parameters, 16x16x4 latents)
    "bench-small": STARFLOW_3B_T2I_256.replace(
        img_size=16, channels=512, layers_per_block=(2, 2, 2, 2, 2, 8), txt_size=16, txt_dim=64
    ),
    # the embedded demo model: class-conditional 8x8 grey digits, labels through the text path
    "digits": STARFLOW_3B_T2I_256.replace(
        in_channels=1,
        img_size=8,
        patch_size=2,  # 16 tokens of 2x2 pixels: 3x cheaper than single pixels on CPU
        channels=128,
        num_blocks=4,
        layers_per_block=(1, 1, 1, 4),
        head_dim=32,
        txt_size=1,
        txt_dim=11,
        num_classes=10,
        noise_std=0.08,
    ),
    # tests and examples
    "tiny": STARFLOW_3B_T2I_256.replace(
        img_size=8, channels=64, num_blocks=3, layers_per_block=(1, 1, 2), head_dim=32, txt_size=6, txt_dim=32
    ),
}


def preset(name: str) -> FlowConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
