"""The resumable, world-size independent sample stream (internlm/data/sampler.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from internlm.data.sampler import EvalShardSampler, SampleStream, StepBatchSampler, epoch_permutation, sample_rng

N, SEED = 23, 7


def steps(sampler: StepBatchSampler, n: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(iter(sampler), n))


def global_steps(world_size: int, micro_num: int, start: int, n: int) -> list[list[tuple[int, int]]]:
    """The global batches of n steps: the ranks' keys of each step, concatenated in rank order."""
    ranks = [steps(StepBatchSampler(N, micro_num, r, world_size, SEED, start=start), n) for r in range(world_size)]
    return [sum((ranks[r][s] for r in range(world_size)), []) for s in range(n)]


def reference_stream(length: int) -> list[tuple[int, int]]:
    """Epoch-by-epoch permutations written out directly."""
    perms = np.concatenate([epoch_permutation(N, SEED, e) for e in range(length // N + 1)])
    return [(int(perms[q]), q) for q in range(length)]


def test_epochs_are_permutations_seeded_by_epoch():
    stream = SampleStream(N, SEED)
    for epoch in range(3):
        got = [stream.index_at(epoch * N + i) for i in range(N)]
        assert sorted(got) == list(range(N))
        assert got == epoch_permutation(N, SEED, epoch).tolist()
    assert epoch_permutation(N, SEED, 0).tolist() != epoch_permutation(N, SEED, 1).tolist()
    assert epoch_permutation(N, SEED, 0).tolist() != epoch_permutation(N, SEED + 1, 0).tolist()
    assert [SampleStream(N, SEED, shuffle=False).index_at(q) for q in range(2 * N)] == list(range(N)) * 2


def test_two_ranks_concatenated_equal_one_rank():
    one = steps(StepBatchSampler(N, 6, 0, 1, SEED), 9)  # 9 steps of 6 cross two epoch boundaries
    assert global_steps(2, 3, 0, 9) == one
    assert global_steps(3, 2, 0, 9) == one
    assert sum(one, []) == reference_stream(54)
    # rank r takes positions [p + r * m, p + (r + 1) * m)
    rank1 = steps(StepBatchSampler(N, 3, 1, 2, SEED), 2)
    assert [q for _, q in rank1[0]] == [3, 4, 5] and [q for _, q in rank1[1]] == [9, 10, 11]


def test_resume_continues_the_exact_stream():
    full = sum(global_steps(2, 4, 0, 8), [])
    resumed = sum(global_steps(2, 4, 3 * 8, 5), [])
    assert resumed == full[24:]


@pytest.mark.parametrize("new_world_size", [1, 3])
def test_world_size_change_keeps_the_global_stream(new_world_size):
    saved = sum(global_steps(2, 4, 0, 3), [])  # 3 steps on 2 ranks: consumed = 24
    resumed = sum(global_steps(new_world_size, 4, len(saved), 4), [])
    stream = saved + resumed
    assert stream == reference_stream(len(stream))  # nothing repeated or skipped globally
    assert [q for _, q in stream] == list(range(len(stream)))


def test_one_epoch_stops_after_n_positions_and_drops_the_partial_step():
    sampler = StepBatchSampler(N, 5, 0, 2, SEED, one_epoch=True)  # steps of 10 over 23 samples
    got = list(sampler)
    assert len(got) == len(sampler) == 2
    keys = sum(global_steps_one_epoch(2, 5), [])
    assert sorted(i for i, _ in keys) == sorted(epoch_permutation(N, SEED, 0)[:20].tolist())
    assert len(StepBatchSampler(N, 5, 0, 2, SEED, start=10, one_epoch=True)) == 1
    with pytest.raises(ValueError, match="do not fill one step"):
        StepBatchSampler(N, 12, 0, 2, SEED, one_epoch=True)
    with pytest.raises(TypeError, match="endless"):
        len(StepBatchSampler(N, 5, 0, 2, SEED))


def global_steps_one_epoch(world_size: int, micro_num: int):
    ranks = [list(StepBatchSampler(N, micro_num, r, world_size, SEED, one_epoch=True)) for r in range(world_size)]
    return [sum((ranks[r][s] for r in range(world_size)), []) for s in range(len(ranks[0]))]


def test_sample_rng_depends_on_seed_and_draw_id_only():
    a = sample_rng(SEED, 5).random(4)
    assert np.array_equal(a, sample_rng(SEED, 5).random(4))
    assert not np.array_equal(a, sample_rng(SEED, 6).random(4))
    assert not np.array_equal(a, sample_rng(SEED + 1, 5).random(4))


def test_eval_shards_cover_the_order_once():
    shards = [list(EvalShardSampler(10, 3, r, 3)) for r in range(3)]
    assert sum(sum(shards, []), []) == list(range(10))
    # shards of 3, 3, 4 items in batches of 3
    assert [len(s) for s in shards] == [len(EvalShardSampler(10, 3, r, 3)) for r in range(3)] == [1, 1, 2]
    with pytest.raises(ValueError, match="rank=3"):
        EvalShardSampler(10, 3, 3, 3)
