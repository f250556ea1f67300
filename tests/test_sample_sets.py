"""Sample sets for evaluation: which sample is which, shards, data-parallel ranks, resuming after
a kill, and the manifest that keeps two sets apart (starflow_core.evaluation.sample_sets)."""

from __future__ import annotations

import numpy as np
import pytest

from starflow_core.evaluation import image_sets, sample_sets
from starflow_core.evaluation.sample_sets import SamplePlan


def fake_generator(calls: list, fail_on_call: int | None = None):
    """Images that encode their seed and condition, so every sample can be traced to its index."""

    def generate(prompts: list[str], seeds: list[int]) -> np.ndarray:
        calls.append(list(seeds))
        if fail_on_call is not None and len(calls) == fail_on_call:
            raise KeyboardInterrupt("killed")
        images = np.zeros((len(seeds), 4, 4, 3), np.uint8)
        images[..., 0] = np.asarray(seeds, np.uint8)[:, None, None]
        images[..., 1] = np.asarray([int(p or 0) for p in prompts], np.uint8)[:, None, None]
        return images

    return generate


def read_set(folder, plan: SamplePlan) -> dict[str, np.ndarray]:
    shards = [np.load(sample_sets.shard_path(folder, s)) for s in range(plan.num_shards)]
    return {key: np.concatenate([shard[key] for shard in shards]) for key in ("arr_0", "arr_1", "seeds")}


PLAN = SamplePlan(
    count=23, shard_size=5, conditions=sample_sets.class_balanced_conditions(10), first_seed=100, labels=True
)


def test_every_sample_is_fixed_by_its_index_and_classes_are_balanced():
    plan = SamplePlan(50, 7, sample_sets.class_balanced_conditions(10), first_seed=3, labels=True)
    prompts = [p for s in range(plan.num_shards) for p in plan.prompts(s)]
    seeds = [seed for s in range(plan.num_shards) for seed in plan.seeds(s)]
    assert seeds == list(range(3, 53))  # each seed once, in order, across uneven shards (7 x 7 + 1)
    assert np.bincount([int(p) for p in prompts]).tolist() == [5] * 10
    text = SamplePlan(5, 2, ("a cat", "a dog"))
    assert [p for s in range(text.num_shards) for p in text.prompts(s)] == ["a cat", "a dog"] * 2 + ["a cat"]


def test_ranks_share_the_shards_without_overlap():
    for world in (1, 2, 3, 8):
        owned = [s for rank in range(world) for s in PLAN.shards_of_rank(rank, world)]
        assert sorted(owned) == list(range(PLAN.num_shards))  # every shard once: no gap, no duplicate
    with pytest.raises(ValueError, match="outside world size"):
        PLAN.shards_of_rank(2, 2)


def test_a_killed_run_resumes_without_duplicating_or_changing_samples(tmp_path):
    reference, calls = tmp_path / "once", []
    sample_sets.prepare_folder(reference, {"count": PLAN.count})
    sample_sets.generate_shards(reference, PLAN, fake_generator(calls), batch_size=2)
    uninterrupted = read_set(reference, PLAN)
    assert len(calls) == 14  # 5 shards in batches of 2: four of 5 (2 + 2 + 1), the last of 3 (2 + 1)

    folder, calls = tmp_path / "killed", []
    sample_sets.prepare_folder(folder, {"count": PLAN.count})
    with pytest.raises(KeyboardInterrupt):  # killed in the middle of shard 2 (its second batch)
        sample_sets.generate_shards(folder, PLAN, fake_generator(calls, fail_on_call=8), batch_size=2)
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json",
        "samples_000000.npz",
        "samples_000001.npz",
    ]
    assert sample_sets.completed(folder, PLAN) == 10

    # resumed by two ranks (the first run had one): only shards 2, 3, 4 are made
    calls = []
    for rank in (1, 0):
        sample_sets.generate_shards(
            folder, PLAN, fake_generator(calls), batch_size=2, rank=rank, world_size=2
        )
    assert sorted(seed for batch in calls for seed in batch) == list(range(110, 123))
    resumed = read_set(folder, PLAN)
    for key, array in uninterrupted.items():
        np.testing.assert_array_equal(resumed[key], array, err_msg=key)
    assert resumed["seeds"].tolist() == list(range(100, 123))
    assert (resumed["arr_0"][:, 0, 0, 0] == resumed["seeds"].astype(np.uint8)).all()  # the image of its seed
    assert resumed["arr_1"].tolist() == [j % 10 for j in range(23)]

    calls = []  # complete: nothing to do
    assert (
        sample_sets.generate_shards(folder, PLAN, fake_generator(calls), batch_size=2) == [] and calls == []
    )


def test_a_damaged_shard_is_made_again(tmp_path):
    sample_sets.prepare_folder(tmp_path, {"count": PLAN.count})
    sample_sets.generate_shards(tmp_path, PLAN, fake_generator([]), batch_size=5)
    sample_sets.shard_path(tmp_path, 3).write_bytes(b"PK\x03\x04 truncated")  # not a zip file
    np.savez(sample_sets.shard_path(tmp_path, 1), arr_0=np.zeros((2, 4, 4, 3), np.uint8))  # 2 of 5 images
    calls = []
    assert sample_sets.generate_shards(tmp_path, PLAN, fake_generator(calls), batch_size=5) == [1, 3]
    assert calls == [list(range(105, 110)), list(range(115, 120))]


def test_a_folder_of_another_set_is_refused(tmp_path):
    sample_sets.prepare_folder(tmp_path / "a", {"count": 23, "guidance": 1.0})
    sample_sets.prepare_folder(tmp_path / "a", {"count": 23, "guidance": 1.0})  # the same: resumes
    with pytest.raises(ValueError, match=r"other parameters \(guidance: 1.0 -> 2.0\)"):
        sample_sets.prepare_folder(tmp_path / "a", {"count": 23, "guidance": 2.0})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "samples_000000.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="no manifest.json"):
        sample_sets.prepare_folder(tmp_path / "b", {"count": 23})


def test_the_evaluation_reads_complete_sets_only(tmp_path):
    sample_sets.prepare_folder(tmp_path, {"count": PLAN.count, "shard_size": PLAN.shard_size})
    sample_sets.generate_shards(tmp_path, PLAN, fake_generator([]), batch_size=5, rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"incomplete: 13/23 samples \(2 shard\(s\) missing, first 1\)"):
        image_sets.open_images(tmp_path)
    sample_sets.generate_shards(tmp_path, PLAN, fake_generator([]), batch_size=5, rank=1, world_size=2)
    source = image_sets.open_images(tmp_path)
    batches = list(source.batches(4))
    assert source.count == 23 and sum(len(b.images) for b in batches) == 23
    assert np.concatenate([b.labels for b in batches]).tolist() == [j % 10 for j in range(23)]


def test_a_shard_cut_off_while_written_leaves_no_file_under_its_name(tmp_path, monkeypatch):
    def savez_killed(handle, **arrays):
        handle.write(b"PK\x03\x04 half a shard")
        raise KeyboardInterrupt("killed while writing")

    sample_sets.prepare_folder(tmp_path, {"count": PLAN.count})
    monkeypatch.setattr(sample_sets.np, "savez", savez_killed)
    with pytest.raises(KeyboardInterrupt):
        sample_sets.generate_shards(tmp_path, PLAN, fake_generator([]), batch_size=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no partial file, no debris
