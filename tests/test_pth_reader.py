"""The torch-free .pth reader: exact parity with torch.load(weights_only=True), refusal of
pickled code, clear errors on damaged files, and streaming to safetensors in bounded memory."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from starflow_core.io import read_safetensors_header
from starflow_core.official.arguments import resolve_config
from starflow_core.official.pth_reader import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    iter_pth_tensors,
    list_pth_tensors,
    read_pth_state_dict,
)
from starflow_core.official.safetensors_stream import stream_pth_to_safetensors

torch = pytest.importorskip("torch")

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = [FIXTURES / "starflow_tiny" / "official.pth", FIXTURES / "tarflow_tiny" / "official.pth"]


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Torch tensor -> numpy in the reader's convention (bfloat16 as uint16 bit patterns)."""
    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


def assert_same(ours: dict[str, np.ndarray], theirs: dict[str, torch.Tensor]) -> None:
    """Same names (in any order: safetensors sorts them), dtypes, shapes and bytes."""
    assert set(ours) == set(theirs), f"missing {set(theirs) - set(ours)}, extra {set(ours) - set(theirs)}"
    for name, tensor in theirs.items():
        expected = as_numpy(tensor)
        assert ours[name].dtype == expected.dtype, name
        assert ours[name].shape == expected.shape, name
        np.testing.assert_array_equal(ours[name], expected, err_msg=name)  # exact: same bytes


def rewrite_record(source: Path, target: Path, suffix: str, data: bytes) -> None:
    """Copy a checkpoint zip, replacing the record whose name ends with `suffix`."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        for info in old.infolist():
            new.writestr(info.filename, data if info.filename.endswith(suffix) else old.read(info))


@pytest.mark.parametrize("path", OFFICIAL, ids=lambda p: p.parent.name)
def test_official_fixtures_equal_torch_load(path: Path):
    assert_same(read_pth_state_dict(path), torch.load(path, weights_only=True))


def test_every_storage_dtype_is_exact(tmp_path: Path):
    generator = torch.Generator().manual_seed(0)
    floats = torch.randn(5, 3, generator=generator)
    tensors = {
        "f64": floats.double(),
        "f32": floats,
        "f16": floats.half(),
        "bf16": floats.bfloat16(),
        "i64": torch.arange(-6, 6).reshape(3, 4) * 10**12,
        "i32": torch.arange(-6, 6, dtype=torch.int32),
        "i16": torch.arange(-6, 6, dtype=torch.int16),
        "i8": torch.arange(-6, 6, dtype=torch.int8),
        "u8": torch.arange(0, 250, 20, dtype=torch.uint8),
        "bool": torch.tensor([[True, False], [False, True]]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }
    torch.save(tensors, tmp_path / "dtypes.pth")
    ours = read_pth_state_dict(tmp_path / "dtypes.pth")
    assert_same(ours, torch.load(tmp_path / "dtypes.pth", weights_only=True))
    infos = list_pth_tensors(tmp_path / "dtypes.pth")
    assert infos["bf16"].dtype == "bfloat16" and ours["bf16"].dtype == np.uint16


def test_views_and_shared_storages(tmp_path: Path):
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    tensors = {
        "base": base,
        "transposed": base.t(),
        "strided_slice": base[1:5:2, 1::3],
        "row": base[3],
        "expanded": torch.tensor([1.0, 2.0, 3.0]).expand(4, 3),  # stride 0
        "bf16_transposed": base.bfloat16().t(),
    }
    torch.save(tensors, tmp_path / "views.pth")
    infos = list_pth_tensors(tmp_path / "views.pth")
    assert infos["transposed"].storage == infos["base"].storage == infos["row"].storage
    assert infos["transposed"].stride == (1, 8) and infos["row"].offset == 24
    assert infos["expanded"].stride == (0, 1)
    assert_same(
        read_pth_state_dict(tmp_path / "views.pth"), torch.load(tmp_path / "views.pth", weights_only=True)
    )


def test_float_conversions_round_like_torch(tmp_path: Path):
    values = torch.randn(4096, generator=torch.Generator().manual_seed(1)) * 1e3
    # Values on bfloat16 rounding ties and specials, where a naive truncation would differ from torch.
    specials = torch.tensor(
        [1.0 + 2**-8, 1.0 + 3 * 2**-8, 65504.0, 1e-40, float("inf"), float("-inf"), float("nan")]
    )
    tensors = {
        "f32": torch.cat([values, specials]),
        "f16": values.half(),
        "bf16": values.bfloat16(),
        "i64": torch.arange(3),
    }
    torch.save(tensors, tmp_path / "mixed.pth")
    reference = torch.load(tmp_path / "mixed.pth", weights_only=True)
    for dtype, torch_dtype in [
        ("float32", torch.float32),
        ("float16", torch.float16),
        ("bfloat16", torch.bfloat16),
    ]:
        ours = read_pth_state_dict(tmp_path / "mixed.pth", dtype=dtype)
        expected = {k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in reference.items()}
        # torch's vectorised kernels write NaN as bfloat16 0xFFFF, its scalar code as 0x7FC0; we write
        # the quiet NaN 0x7FC0 everywhere, so compare NaN positions, then all other values bit for bit.
        nan = torch.isnan(reference["f32"])
        ours_values = (
            (ours["f32"].astype(np.uint32) << 16).view(np.float32) if dtype == "bfloat16" else ours["f32"]
        )
        np.testing.assert_array_equal(np.isnan(ours_values), nan.numpy())
        ours["f32"], expected["f32"] = ours["f32"][~nan.numpy()], expected["f32"][~nan]
        assert_same(ours, expected)  # int64 stays int64: dtype converts floating-point tensors only


def test_parameters_and_wrapped_state_dicts(tmp_path: Path):
    state = {"weight": torch.nn.Parameter(torch.ones(2, 3)), "bias": torch.zeros(3)}
    torch.save({"model": state, "epoch": 7, "optimizer": {"lr": 0.1}}, tmp_path / "wrapped.pth")
    assert_same(read_pth_state_dict(tmp_path / "wrapped.pth", key="model"), state)
    with pytest.raises(ValueError, match=r"not a dict of tensors.*\"model\".*\"epoch\".*\"optimizer\""):
        read_pth_state_dict(tmp_path / "wrapped.pth")
    with pytest.raises(KeyError, match=r"no top-level key 'ema'.*'epoch', 'model', 'optimizer'"):
        read_pth_state_dict(tmp_path / "wrapped.pth", key="ema")
    with pytest.raises(ValueError, match="dtype must be one of"):
        read_pth_state_dict(tmp_path / "wrapped.pth", key="model", dtype="int8")


class RunsShellOnLoad:
    """Unpickling this runs a shell command: the classic malicious-checkpoint payload."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def assert_both_refuse(path: Path, marker: Path, refused_name: str) -> None:
    with pytest.raises(UnsafeCheckpointError, match=rf"carries code \({refused_name}\) and was refused"):
        read_pth_state_dict(path)
    with pytest.raises(UnsafeCheckpointError):
        list(iter_pth_tensors(path))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not marker.exists(), "the payload ran"


def test_pickled_code_is_refused_like_torch(tmp_path: Path):
    marker = tmp_path / "payload_ran"
    torch.save({"weight": torch.ones(2), "evil": RunsShellOnLoad(f"touch {marker}")}, tmp_path / "evil.pth")
    assert_both_refuse(tmp_path / "evil.pth", marker, os.system.__module__ + r"\.system")

    # Handwritten pickles in a valid torch zip: protocol 0 GLOBAL to posix.system, and builtins.eval.
    payloads = {
        "posix.system": f"cposix\nsystem\n(V touch {marker}\ntR.".encode(),
        "builtins.eval": f"cbuiltins\neval\n(V__import__('os').system('touch {marker}')\ntR.".encode(),
    }
    for name, payload in payloads.items():
        rewrite_record(tmp_path / "evil.pth", tmp_path / "handwritten.pth", "/data.pkl", payload)
        assert_both_refuse(tmp_path / "handwritten.pth", marker, name.replace(".", r"\."))

    # The marker check means something: an unrestricted unpickler does run the payload.
    pickle.loads(payloads["posix.system"])
    assert marker.exists()


def test_descriptor_tampering_is_caught_before_reading(tmp_path: Path):
    """A pickle BUILD opcode can rewrite a descriptor after its layout was checked; the reader
    checks again before reading, so it never reads outside the storage."""
    torch.save({"w": torch.arange(4.0)}, tmp_path / "good.pth")
    with zipfile.ZipFile(tmp_path / "good.pth") as archive:
        data = archive.read("good/data.pkl")
    assert data.endswith(b"s.")  # ... REDUCE (the tensor), SETITEM, STOP
    # Opcodes for {'shape': (10**9,)} then BUILD, applied to the tensor just built.
    huge_shape = b"}X\x05\x00\x00\x00shapeJ" + (10**9).to_bytes(4, "little") + b"\x85sb"
    rewrite_record(
        tmp_path / "good.pth", tmp_path / "tampered.pth", "/data.pkl", data[:-2] + huge_shape + b"s."
    )
    with pytest.raises(CheckpointFormatError, match=r"overruns its storage of 4 elements"):
        read_pth_state_dict(tmp_path / "tampered.pth")
    # The same BUILD on a storage type would poison every later load in the process.
    shared_type = b"ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x05\x00\x00\x00int64sb0"
    rewrite_record(
        tmp_path / "good.pth", tmp_path / "poison.pth", "/data.pkl", data[:2] + shared_type + data[2:]
    )
    assert read_pth_state_dict(tmp_path / "poison.pth")["w"].dtype == np.float32  # the BUILD hit a copy
    assert read_pth_state_dict(tmp_path / "good.pth")["w"].dtype == np.float32
    with pytest.raises((pickle.UnpicklingError, TypeError)):  # torch applies the state to a tensor and fails
        torch.load(tmp_path / "tampered.pth", weights_only=True)


def test_legacy_and_damaged_files_give_clear_errors(tmp_path: Path):
    tensors = {"weight": torch.arange(4096, dtype=torch.float32)}
    torch.save(tensors, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointFormatError, match="legacy.*Re-save it with torch"):
        read_pth_state_dict(tmp_path / "legacy.pth")

    torch.save(tensors, tmp_path / "good.pth")
    blob = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated or corrupt zip"):
        read_pth_state_dict(tmp_path / "truncated.pth")

    at = blob.find(tensors["weight"].numpy().tobytes()) + 1000  # one byte inside the tensor data
    (tmp_path / "bitflip.pth").write_bytes(blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1 :])
    with pytest.raises(CheckpointFormatError, match="storage 0 is corrupt.*CRC"):
        read_pth_state_dict(tmp_path / "bitflip.pth")

    rewrite_record(tmp_path / "good.pth", tmp_path / "big_endian.pth", "/byteorder", b"big")
    with pytest.raises(CheckpointFormatError, match="big-endian"):
        read_pth_state_dict(tmp_path / "big_endian.pth")

    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="not a torch checkpoint"):
        read_pth_state_dict(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        read_pth_state_dict(tmp_path / "missing.pth")


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Load with the safetensors library itself (through torch, as numpy has no bfloat16)."""
    from safetensors.torch import load_file

    return {name: as_numpy(tensor) for name, tensor in load_file(path).items()}


def test_stream_official_fixture_to_safetensors(tmp_path: Path):
    def deprecated(name: str) -> bool:
        return name == "var" or name.endswith(".attn_mask")

    reference = torch.load(OFFICIAL[0], weights_only=True)
    kept = {name: tensor for name, tensor in reference.items() if not deprecated(name)}
    written, dropped = stream_pth_to_safetensors(
        OFFICIAL[0], tmp_path / "model.safetensors", drop=deprecated, metadata={"format": "starflow"}
    )
    assert written == list(kept) and dropped == [name for name in reference if deprecated(name)]
    assert read_safetensors_header(tmp_path / "model.safetensors")["__metadata__"] == {"format": "starflow"}
    assert_same(load_safetensors(tmp_path / "model.safetensors"), kept)

    for dtype, torch_dtype in [("bfloat16", torch.bfloat16), ("float16", torch.float16)]:
        stream_pth_to_safetensors(
            OFFICIAL[0], tmp_path / f"{dtype}.safetensors", dtype=dtype, drop=deprecated
        )
        header = read_safetensors_header(tmp_path / f"{dtype}.safetensors")
        assert {entry["dtype"] for entry in header.values()} == {"BF16" if dtype == "bfloat16" else "F16"}
        loaded = load_safetensors(tmp_path / f"{dtype}.safetensors")
        assert_same(loaded, {name: tensor.to(torch_dtype) for name, tensor in kept.items()})


def test_stream_views_rename_drop_names_and_atomicity(tmp_path: Path):
    base = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    tensors = {
        "base": base,
        "t": base.t(),
        "slice": base[::2, 1:],
        "flags": base > 0,
        "step": torch.tensor(5),
    }
    torch.save(tensors, tmp_path / "views.pth")
    written, dropped = stream_pth_to_safetensors(
        tmp_path / "views.pth",
        tmp_path / "out.safetensors",
        drop=["base", "absent"],
        rename={"t": "transposed"},
    )
    assert written == ["transposed", "slice", "flags", "step"] and dropped == ["base"]
    expected = {"transposed": base.t(), "slice": base[::2, 1:], "flags": base > 0, "step": torch.tensor(5)}
    assert_same(load_safetensors(tmp_path / "out.safetensors"), expected)

    with pytest.raises(ValueError, match="rename maps both 'base' and 't' to 'same'"):
        stream_pth_to_safetensors(
            tmp_path / "views.pth", tmp_path / "x.safetensors", rename=lambda name: "same"
        )

    # A failure midway leaves neither a partial output nor temporary files behind.
    blob = (tmp_path / "views.pth").read_bytes()
    at = blob.find(base.numpy().tobytes()) + 8
    (tmp_path / "bad.pth").write_bytes(blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1 :])
    with pytest.raises(CheckpointFormatError, match="corrupt"):
        stream_pth_to_safetensors(tmp_path / "bad.pth", tmp_path / "partial.safetensors")
    assert not any(path.name.startswith((".partial", "partial")) for path in tmp_path.iterdir())


TENSOR_BYTES = 4 << 20  # 4 MiB per tensor
N_TENSORS = 8  # 32 MiB in all
# Streaming holds one tensor's storage plus about one tensor of scratch (zip reads, 1 MiB
# conversion chunks): bound it by 3 tensors, well below the 8 tensors of the whole file.
PEAK_BOUND = 3 * TENSOR_BYTES


def test_streaming_memory_is_about_one_tensor(tmp_path: Path):
    generator = torch.Generator().manual_seed(3)
    tensors = {f"layer{i}": torch.randn(TENSOR_BYTES // 4, generator=generator) for i in range(N_TENSORS)}
    tensors["transposed"] = tensors["layer0"].reshape(1024, 1024).t()
    torch.save(tensors, tmp_path / "big.pth")
    del tensors

    def peak_of(run) -> int:
        tracemalloc.start()
        try:
            run()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    for dtype in (None, "bfloat16"):
        out = tmp_path / f"big_{dtype}.safetensors"
        peak = peak_of(
            lambda dtype=dtype, out=out: stream_pth_to_safetensors(tmp_path / "big.pth", out, dtype=dtype)
        )
        assert peak < PEAK_BOUND, f"dtype={dtype}: peak {peak / 2**20:.1f} MiB"

    def consume_one_at_a_time():
        for _, array in iter_pth_tensors(tmp_path / "big.pth"):
            del array

    peak = peak_of(consume_one_at_a_time)
    assert peak < PEAK_BOUND, f"iter_pth_tensors: peak {peak / 2**20:.1f} MiB"


def test_reader_never_imports_torch():
    code = (
        "import sys; from starflow_core.official.pth_reader import read_pth_state_dict; "
        f"assert len(read_pth_state_dict({str(OFFICIAL[0])!r})) > 0; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# Every function that reads a .pth, in both twins (the commands go through these).
def _pth_readers() -> dict:
    from starflow_core.official.convert import convert_official_checkpoint
    from starflow_mlx import StarFlow as MlxStarFlow
    from starflow_mlx.checkpoint import read_official_state_dict as mlx_state_dict
    from starflow_mlx.vae import read_weights as mlx_vae_weights
    from starflow_torch import StarFlow as TorchStarFlow
    from starflow_torch.checkpoint import read_official_state_dict as torch_state_dict
    from starflow_torch.vae import read_weights as torch_vae_weights

    config = FIXTURES / "tarflow_tiny" / "config.json"
    return {
        "read_pth_state_dict": read_pth_state_dict,
        "iter_pth_tensors": lambda path: list(iter_pth_tensors(path)),
        "list_pth_tensors": list_pth_tensors,
        "stream_pth_to_safetensors": lambda path: stream_pth_to_safetensors(path, path.with_suffix(".st")),
        "convert_official_checkpoint": lambda path: convert_official_checkpoint(
            path, resolve_config(config), path.parent / "converted"
        ),
        "mlx read_official_state_dict": mlx_state_dict,
        "mlx StarFlow.from_official": lambda path: MlxStarFlow.from_official(path, config),
        "mlx vae read_weights": mlx_vae_weights,
        "torch read_official_state_dict": torch_state_dict,
        "torch StarFlow.from_official": lambda path: TorchStarFlow.from_official(path, config),
        "torch vae read_weights": torch_vae_weights,
    }


def test_torch_globals_outside_the_table_are_refused_on_every_path(tmp_path: Path):
    """Only the tensor-rebuilding globals are allowed: a torch function is code like any other
    (torch.save writes files, torch.serialization.load reads another pickle), so a reader that
    trusted the torch.* namespace would run it."""
    marker = tmp_path / "payload_ran"
    torch.save({"weight": torch.ones(2)}, tmp_path / "good.pth")
    # protocol 0: GLOBAL torch.save, called as torch.save("x", marker); then torch.serialization.load
    payloads = {
        "torch.save": f"ctorch\nsave\n(Vx\nV{marker}\ntR.".encode(),
        "torch.serialization.load": f"ctorch.serialization\nload\n(V{marker}\ntR.".encode(),
    }
    pickle.loads(payloads["torch.save"])  # the marker check means something: unrestricted, it runs
    assert marker.exists()
    marker.unlink()
    for name, payload in payloads.items():
        path = tmp_path / f"{name}.pth"
        rewrite_record(tmp_path / "good.pth", path, "/data.pkl", payload)
        for reader, read in _pth_readers().items():
            # our reader names the global; torch.load(weights_only=True) names it too ("GLOBAL ...")
            with pytest.raises((UnsafeCheckpointError, ValueError), match=name.replace(".", r"\.")):
                read(path)
            assert not marker.exists(), f"{reader} ran {name}"
