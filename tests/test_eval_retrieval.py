"""Future-state retrieval: ranks, Top-1 and mAP on hand-made similarities; the exact K-dim cosine; the script."""

import json

import pytest
import torch

from internlm.eval.retrieval import (
    LogitSubspace,
    deduplicate,
    rank_sums,
    retrieval_ranks,
    summary_from_sums,
    top_retrieved,
)

# With the identity as gallery, query row i IS its similarity to gallery entries 0..4.
SIMS = torch.tensor([
    [0.9, 0.1, 0.2, 0.3, 0.0],  # target 0: the most similar -> rank 1
    [0.5, 0.4, 0.8, 0.1, 0.6],  # target 1: 0.5, 0.8, 0.6 are above -> rank 4
    [0.2, 0.3, 0.1, 0.7, 0.9],  # target 3; entry 4 (its current frame, 0.9) is excluded -> rank 1 (else 2)
    [0.3, 0.2, 0.6, 0.5, 0.4],  # target 4; entry 2 (0.6) excluded, 0.5 above -> rank 2
])
TARGETS = torch.tensor([0, 1, 3, 4])
EXCLUDED = torch.tensor([-1, -1, 4, 2])


def test_ranks_top1_and_map_by_hand():
    ranks = retrieval_ranks(SIMS, torch.eye(5), TARGETS, EXCLUDED)
    assert ranks.tolist() == [1, 4, 1, 2]
    s = summary_from_sums(rank_sums(ranks[:2]) + rank_sums(ranks[2:]))  # sums add up over ranks/steps
    assert s["top1"] == pytest.approx(50.0)
    assert s["mAP"] == pytest.approx(100 * (1 + 1 / 4 + 1 + 1 / 2) / 4)  # 68.75
    assert s["num_queries"] == 4


def test_chunking_does_not_change_ranks():
    g = torch.Generator().manual_seed(0)
    queries, gallery = torch.randn(37, 6, generator=g), torch.randn(23, 6, generator=g)
    targets = torch.randint(0, 23, (37,), generator=g)
    excluded = torch.where(torch.arange(37) % 3 == 0, (targets + 1) % 23, torch.full_like(targets, -1))
    full = retrieval_ranks(queries, gallery, targets, excluded)
    assert torch.equal(full, retrieval_ranks(queries, gallery, targets, excluded, queries_per_chunk=4,
                                             gallery_per_chunk=5))
    sims = queries @ gallery.T  # brute force
    for q in range(37):
        others = [g_ for g_ in range(23) if g_ not in (int(targets[q]), int(excluded[q]))]
        assert int(full[q]) == 1 + sum(bool(sims[q, g_] >= sims[q, targets[q]]) for g_ in others)


def test_current_frame_is_never_retrieved():
    # Query 2's current frame (entry 4) is its nearest entry; it must be neither ranked nor shown.
    assert retrieval_ranks(SIMS, torch.eye(5), TARGETS, torch.tensor([-1, -1, -1, -1]))[2] == 2
    top = top_retrieved(SIMS, torch.eye(5), EXCLUDED, k=4)
    assert top[2].tolist() == [3, 1, 0, 2] and top[3].tolist() == [3, 4, 0, 1]
    assert top[0].tolist() == [0, 3, 2, 1]


def test_ties_count_against_the_query():
    collapsed = torch.ones(3, 4)  # every similarity equal
    ranks = retrieval_ranks(collapsed, torch.ones(5, 4), torch.tensor([0, 1, 2]), torch.tensor([1, -1, 4]))
    assert ranks.tolist() == [4, 5, 4]  # last place, not first


def test_bad_indices_are_errors():
    with pytest.raises(ValueError, match="also its excluded"):
        retrieval_ranks(SIMS, torch.eye(5), TARGETS, torch.tensor([0, -1, -1, -1]))
    with pytest.raises(ValueError, match="must index the gallery"):
        retrieval_ranks(SIMS, torch.eye(5), torch.tensor([0, 1, 3, 5]), EXCLUDED)


def test_deduplicate_keeps_first_occurrence():
    keys = [("a", 5), ("a", 10), ("b", 5), ("a", 5), ("a", 10), ("a", 15)]
    kept, index_of = deduplicate(keys)
    assert kept == [0, 1, 2, 5]
    assert index_of == {("a", 5): 0, ("a", 10): 1, ("b", 5): 2, ("a", 15): 3}


def test_logit_subspace_gives_the_exact_k_dim_cosine():
    g = torch.Generator().manual_seed(0)
    K, r = 500, 16
    w_rep, w_pred = torch.randn(K, r, generator=g), torch.randn(K, r, generator=g)
    rep_logits = torch.nn.functional.normalize(torch.randn(30, r, generator=g), dim=1) @ w_rep.T  # (30, K)
    pred_logits = torch.nn.functional.normalize(torch.randn(12, r, generator=g), dim=1) @ w_pred.T  # (12, K)
    direct = torch.nn.functional.normalize(pred_logits, dim=1) @ torch.nn.functional.normalize(rep_logits, dim=1).T
    sub = LogitSubspace(w_rep)
    fast = sub.queries(pred_logits) @ sub.gallery(rep_logits).T
    assert torch.allclose(fast, direct, atol=1e-5), (fast - direct).abs().max()
    with pytest.raises(RuntimeError, match="column space"):
        sub.gallery(rep_logits + 1.0)  # a bias would leave the subspace: refuse instead of returning wrong numbers


def test_logit_subspace_on_the_real_heads():
    from internlm.model.heads import DINOHead

    torch.manual_seed(0)
    rep, pred = DINOHead(32, 300, 64, 16), DINOHead(32, 300, 64, 16)
    f_now, f_next = torch.randn(9, 32), torch.randn(20, 32)
    with torch.no_grad():
        q_logits, g_logits = pred(f_now), rep(f_next)
        sub = LogitSubspace(rep.last_layer.weight)
        direct = torch.nn.functional.normalize(q_logits, dim=1) @ torch.nn.functional.normalize(g_logits, dim=1).T
        assert torch.allclose(sub.queries(q_logits) @ sub.gallery(g_logits).T, direct, atol=1e-5)


# ------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_retrieval_script_end_to_end(tmp_path, processed_world):
    from eval_helpers import assert_same_numbers, make_checkpoint, run_script, torchrun, world_paths, write_tiny_config

    from internlm.config import load_config
    from internlm.data.build import build_eval_clip_dataset

    paths = world_paths(processed_world)
    cfg2 = write_tiny_config(tmp_path / "cfg2.py", 2, tmp_path / "run2", paths["frames"], paths["poses"])
    make_checkpoint(cfg2)
    num_clips = len(build_eval_clip_dataset(load_config(cfg2).data))
    proc = run_script(["eval_feature_retrieval.py", "--config", cfg2, "--output_dir", str(tmp_path / "pred"),
                       "--batch_size", "4"])
    res = json.loads((tmp_path / "pred" / "retrieval.json").read_text())
    assert res["num_clips"] == num_clips and res["num_queries"] == 3 * num_clips
    assert [s["num_queries"] for s in res["per_step"]] == [num_clips] * 3
    assert 0 < res["num_gallery"] <= 3 * num_clips
    assert 0.0 <= res["top1"] <= res["mAP"] <= 100.0
    assert (res["which"], res["baseline"], res["step"]) == ("model", "none", 7)
    assert (tmp_path / "pred" / "retrieval_examples.png").stat().st_size > 1000
    assert "Top-1 %" in proc.stdout

    # two ranks: each its shard of the clips, one gathered gallery, summed counts -> the same numbers
    torchrun(["eval_feature_retrieval.py", "--config", cfg2, "--output_dir", str(tmp_path / "pred2"),
              "--batch_size", "4"])
    res2 = json.loads((tmp_path / "pred2" / "retrieval.json").read_text())
    assert res2["world_size"] == 2
    for key in ("num_queries", "num_gallery", "top1", "mAP", "per_step"):
        assert_same_numbers(res2[key], res[key], key)

    # the representation baseline runs on a stage-1 checkpoint and config; --eval_iters limits the batches
    cfg1 = write_tiny_config(tmp_path / "cfg1.py", 1, tmp_path / "run1", paths["frames"], paths["poses"],
                             paths["walks"])
    make_checkpoint(cfg1)
    run_script(["eval_feature_retrieval.py", "--config", cfg1, "--baseline", "representation", "--which", "teacher",
                "--eval_iters", "1", "--batch_size", "8", "--output_dir", str(tmp_path / "base")])
    base = json.loads((tmp_path / "base" / "retrieval.json").read_text())
    assert (base["num_queries"], base["baseline"], base["which"]) == (24, "representation", "teacher")
    # Here the query IS the representation of frame t: had frame t stayed in the gallery (it is the next frame of
    # the previous clip), it would beat the true next frame every time (cosine 1) and Top-1 would be 0.
    assert 0.0 < base["top1"] <= base["mAP"] <= 100.0
