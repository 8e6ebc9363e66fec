"""Future-state retrieval: ranks, Top-1 and mAP on hand-made similarities; the exact K-dim cosine; the script."""

import json
import os

import pytest
import torch

from internlm.eval.retrieval import (
    LogitSpace,
    chance_level,
    deduplicate,
    paired_difference,
    rank_statistics,
    retrieval_ranks,
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
    s = rank_statistics(ranks)
    assert s["top1"] == pytest.approx(50.0)
    assert s["mAP"] == pytest.approx(100 * (1 + 1 / 4 + 1 + 1 / 2) / 4)  # 68.75
    assert s["num_queries"] == 4
    assert s["top1_se"] == pytest.approx(100 * 0.57735 / 2, rel=1e-4)  # std of (1, 0, 1, 0) / sqrt(4)
    d = paired_difference(ranks, torch.tensor([1, 1, 1, 1]))
    assert d["top1_diff"] == pytest.approx(-50.0) and d["mAP_diff"] == pytest.approx(68.75 - 100.0)


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


def _centred_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The K-dim definition, computed directly: (n, K), (m, K) -> (n, m)."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T


def test_centred_space_gives_the_exact_k_dim_centred_cosine():
    g = torch.Generator().manual_seed(0)
    K, r = 500, 16
    w_rep, w_pred, center = torch.randn(K, r, generator=g), torch.randn(K, r, generator=g), torch.randn(K, generator=g)
    rep_logits = torch.nn.functional.normalize(torch.randn(30, r, generator=g), dim=1) @ w_rep.T  # (30, K)
    pred_logits = torch.nn.functional.normalize(torch.randn(12, r, generator=g), dim=1) @ w_pred.T  # (12, K)
    space = LogitSpace([w_rep, w_pred], [center])
    fast = space.query(pred_logits) @ space.gallery(rep_logits, center).T
    assert torch.allclose(fast, _centred_cosine(pred_logits, rep_logits - center), atol=1e-5)
    assert space.basis.shape == (K, 2 * r + 2)  # r floats per head, one per centre, one for the ones vector
    with pytest.raises(RuntimeError, match="span"):
        space.query(rep_logits + torch.randn(K, generator=g))  # a bias would leave the span: refuse


def test_a_per_row_constant_changes_no_rank():
    # L_pred cannot see a constant added to a query's logits, so neither may the metric.
    g = torch.Generator().manual_seed(1)
    K, r, Q, G = 300, 8, 64, 40
    w = torch.randn(K, r, generator=g)
    center = torch.randn(K, generator=g)
    space = LogitSpace([w], [center])
    gallery = space.gallery(torch.randn(G, r, generator=g) @ w.T, center)
    queries = torch.randn(Q, r, generator=g) @ w.T
    targets, excluded = torch.randint(0, G, (Q,), generator=g), torch.full((Q,), -1)
    shifted = queries + 50.0 * torch.randn(Q, 1, generator=g)  # a large random constant per row
    before = retrieval_ranks(space.query(queries), gallery, targets, excluded)
    after = retrieval_ranks(space.query(shifted), gallery, targets, excluded)
    assert torch.equal(before, after)
    assert len(set(before.tolist())) > 5  # the ranks are spread, so the comparison means something


def test_oracle_ranks_first_and_random_queries_score_chance():
    from internlm.model.heads import DINOHead

    torch.manual_seed(0)
    head = DINOHead(32, 256, 64, 16)
    G, Q = 200, 2000
    with torch.no_grad():
        # (G, K) the gallery network's next-frame logits: frames of one world share most of their features
        logits = head(torch.randn(1, 32) + 0.2 * torch.randn(G, 32))
        center = logits.mean(0)
        space = LogitSpace([head.last_layer.weight], [center], student_temp=0.1, teacher_temp=0.04)
        gallery = space.gallery(logits, center)
        oracle = space.query(space.minimiser(logits, center) + 7.0)  # the loss's minimiser, plus a constant
        targets, excluded = torch.arange(G), (torch.arange(G) + 1) % G
        assert rank_statistics(retrieval_ranks(oracle, gallery, targets, excluded))["top1"] == 100.0
        # without the centre the "oracle" is wrong: the centre is part of what the loss compares
        no_center = retrieval_ranks(space.query(space.minimiser(logits, torch.zeros(256))), gallery, targets,
                                    excluded)
        assert rank_statistics(no_center)["top1"] < 90.0
        random_q = space.query(head(torch.randn(1, 32) + 0.2 * torch.randn(Q, 32)))
    q_targets = torch.randint(0, G, (Q,))
    stats = rank_statistics(retrieval_ranks(random_q, gallery, q_targets, (q_targets + 1) % G))
    chance = chance_level(G)
    # bound: 4 standard errors of the mean around chance (1 in 15,000 false alarms under the null)
    assert abs(stats["mAP"] - chance["mAP"]) < 4 * stats["mAP_se"], (stats, chance)
    assert abs(stats["top1"] - chance["top1"]) < 4 * max(stats["top1_se"], 100 * (chance["top1"] / 100 / Q) ** 0.5)


# ------------------------------------------------------------------------------------------- end to end


def strengthen_actions(folder: str, gain: float = 50.0) -> None:
    """A freshly initialised student barely uses its action tokens (std-0.006 weights): scale its action
    projector so that the state prediction depends on the actions, as a trained one does."""
    from internlm.checkpoint.layout import STUDENT_FILE

    path = os.path.join(folder, STUDENT_FILE)
    state = torch.load(path, weights_only=True)
    for name in [n for n in state if n.startswith("action_projector.") and n.endswith("weight")]:
        state[name] = state[name] * gain
    torch.save(state, path)


@pytest.mark.slow
def test_retrieval_script_end_to_end(tmp_path, processed_world):
    from eval_helpers import assert_same_numbers, make_checkpoint, run_script, torchrun, world_paths, write_tiny_config

    from internlm.config import load_config
    from internlm.data.build import build_eval_clip_dataset

    paths = world_paths(processed_world)
    cfg2 = write_tiny_config(tmp_path / "cfg2.py", 2, tmp_path / "run2", paths["frames"], paths["poses"])
    folder2 = make_checkpoint(cfg2)
    strengthen_actions(folder2)
    cfg1 = write_tiny_config(tmp_path / "cfg1.py", 1, tmp_path / "run1", paths["frames"], paths["poses"],
                             paths["walks"])
    folder1 = make_checkpoint(cfg1, seed=5)
    num_clips = len(build_eval_clip_dataset(load_config(cfg2).data))
    args = ["eval_feature_retrieval.py", "--config", cfg2, "--batch_size", "4", "--baseline_ckpt_folder",
            str(tmp_path / "run1")]
    proc = run_script(args + ["--output_dir", str(tmp_path / "pred")])
    res = json.loads((tmp_path / "pred" / "retrieval.json").read_text())
    rows = res["rows"]
    assert set(rows) == {"egoagent", "shuffled_actions", "copy", "stage1_copy", "raw_pixels", "oracle"}
    assert res["headline"] == "egoagent" and res["top1"] == rows["egoagent"]["top1"]
    assert res["num_clips"] == num_clips and res["num_queries"] == 3 * num_clips
    assert all(r["num_queries"] == 3 * num_clips for r in rows.values())
    assert [s["num_queries"] for s in res["per_step"]] == [num_clips] * 3
    assert 0 < res["num_gallery"] <= 3 * num_clips
    # the self-test holds on an untrained network: the protocol, not the model, makes the oracle first
    assert rows["oracle"]["top1"] >= 99.0 and res["oracle_self_test"]["passed"]
    # an untrained predictor is nowhere near the oracle; the copy baselines and pixels beat chance
    assert rows["egoagent"]["top1"] < 50.0
    for row in ("copy", "stage1_copy", "raw_pixels"):
        assert rows[row]["mAP"] > 2 * res["chance"]["mAP"], (row, rows[row], res["chance"])
    assert set(res["comparisons"]) == {"egoagent_minus_copy", "egoagent_minus_stage1_copy",
                                       "egoagent_minus_shuffled_actions", "egoagent_minus_raw_pixels"}
    c = res["comparisons"]["egoagent_minus_copy"]
    assert c["top1_diff"] == pytest.approx(rows["egoagent"]["top1"] - rows["copy"]["top1"])
    assert (tmp_path / "pred" / "retrieval_examples.png").stat().st_size > 1000
    # what each row was computed from: the checkpoints it names, and rows of different networks or inputs differ
    assert (res["checkpoint"], res["baseline_checkpoint"]) == (folder2, folder1)
    for a, b in (("stage1_copy", "copy"), ("egoagent", "shuffled_actions"), ("egoagent", "copy")):
        assert rows[a]["mAP"] != rows[b]["mAP"], (a, b, rows[a], rows[b])
    # the stage-2 checkpoint named as the baseline: its copy row is then the copy row, exactly
    run_script(args[:-1] + [str(tmp_path / "run2"), "--output_dir", str(tmp_path / "same")])
    same = json.loads((tmp_path / "same" / "retrieval.json").read_text())
    assert same["baseline_checkpoint"] == folder2
    numbers = {k: v for k, v in same["rows"]["copy"].items() if k != "query"}
    assert_same_numbers({k: same["rows"]["stage1_copy"][k] for k in numbers}, numbers, "stage1_copy", rel=0)
    assert "Top-1 %" in proc.stdout and "oracle" in proc.stdout

    # two ranks: each its shard of the clips, one gathered gallery, gathered ranks -> the same numbers
    torchrun(args + ["--output_dir", str(tmp_path / "pred2")])
    res2 = json.loads((tmp_path / "pred2" / "retrieval.json").read_text())
    assert res2["world_size"] == 2
    for key in ("num_queries", "num_gallery", "rows", "comparisons"):
        assert_same_numbers(res2[key], res[key], key, rel=1e-6)

    # a stage-1 checkpoint alone: copy, pixels and the oracle; --oracle makes the self-test the exit status
    run_script(["eval_feature_retrieval.py", "--config", cfg1, "--oracle", "--eval_iters", "1", "--batch_size", "8",
                "--output_dir", str(tmp_path / "base")])
    base = json.loads((tmp_path / "base" / "retrieval.json").read_text())
    assert set(base["rows"]) == {"copy", "raw_pixels", "oracle"} and base["headline"] == "oracle"
    assert base["num_queries"] == 24 and base["top1"] >= 99.0


@pytest.mark.slow
def test_untrained_residual_predictor_is_exactly_the_copy_baseline(tmp_path, processed_world):
    """model.prediction_residual: before any training the prediction is the teacher's copy of frame t, so the
    EgoAgent, shuffled-action and copy rows rank every query the same (the base is computed as in training)."""
    from eval_helpers import make_checkpoint, run_script, world_paths, write_tiny_config

    paths = world_paths(processed_world)
    cfg = write_tiny_config(tmp_path / "cfg.py", 2, tmp_path / "run", paths["frames"], paths["poses"])
    with open(cfg, "a") as f:
        f.write("model['prediction_residual'] = True\nteacher['prediction_residual'] = True\n")
    make_checkpoint(cfg)
    for gallery in ("teacher", "student"):
        out = tmp_path / gallery
        run_script(["eval_feature_retrieval.py", "--config", cfg, "--batch_size", "4", "--gallery", gallery,
                    "--output_dir", str(out)])
        rows = json.loads((out / "retrieval.json").read_text())["rows"]
        if gallery == "teacher":
            for row in ("egoagent", "shuffled_actions"):
                assert rows[row]["top1"] == rows["copy"]["top1"] and rows[row]["mAP"] == rows["copy"]["mAP"], row
        else:  # the copy row is now the student's; the prediction still starts from the teacher's copy
            assert rows["egoagent"]["mAP"] == rows["shuffled_actions"]["mAP"]
            assert rows["egoagent"]["mAP"] != rows["copy"]["mAP"]

    # tools/diagnose_prediction.py on the same checkpoint: nothing learned, so EgoAgent recovers none of what frame
    # t+1 adds over frame t, at any scale of its (zero) change; the oracle is L_pred's floor
    run_script(["tools/diagnose_prediction.py", "--config", cfg, "--out", str(tmp_path / "diag.json"),
                "--probe_steps", "30"])
    diag = json.loads((tmp_path / "diag.json").read_text())
    lp = diag["l_pred"]
    assert diag["residual"] and lp["egoagent"] == pytest.approx(lp["copy"], abs=1e-6)
    assert lp["shuffled_actions"] == pytest.approx(lp["copy"], abs=1e-6)
    assert lp["oracle"] < lp["copy"] and diag["gap_nats"] > 0 and abs(diag["recovered_nats"]["true"]) < 1e-5
    for scaled in diag["retrieval_scaled_change"].values():
        assert scaled["true"]["top1"] == scaled["shuffled"]["top1"] == diag["teacher_copy"]["top1"]
        assert scaled["l_pred"] == pytest.approx(lp["copy"], abs=1e-6)
    # the camera-motion probe: trained on the training clips, scored there and on val, on the same gallery rule
    probe = diag["probe"]
    assert probe["steps"] == 30 and set(probe["splits"]) == {"train", "val"}
    for got in probe["splits"].values():
        assert set(got["rows"]) == {"copy", "probe", "probe_shuffled_motion", "oracle"}
        assert got["rows"]["oracle"]["top1"] >= 99.0
    assert probe["splits"]["val"]["rows"]["copy"]["top1"] == diag["teacher_copy"]["top1"]


@pytest.mark.slow
def test_untrained_reprojection_predictor_is_exactly_the_reprojection_baseline(tmp_path, processed_world):
    """model.prediction_reprojection: before any training the prediction is the teacher's view of frame t reprojected
    by the step's camera rotation, so EgoAgent ranks every query as the reprojection row does; another clip's actions
    (the shuffled control) bring another rotation."""
    from eval_helpers import make_checkpoint, run_script, world_paths, write_tiny_config

    paths = world_paths(processed_world)
    cfg = write_tiny_config(tmp_path / "cfg.py", 2, tmp_path / "run", paths["frames"], paths["poses"])
    with open(cfg, "a") as f:
        f.write("data['camera_motion'] = True\n")
        for section in ("model", "teacher"):
            f.write(f"{section}['prediction_residual'] = True\n{section}['prediction_reprojection'] = True\n")
    make_checkpoint(cfg)
    run_script(["eval_feature_retrieval.py", "--config", cfg, "--batch_size", "4", "--output_dir", str(tmp_path / "r")])
    got = json.loads((tmp_path / "r" / "retrieval.json").read_text())
    rows = got["rows"]
    assert {"egoagent", "shuffled_actions", "copy", "reprojection", "oracle"} <= set(rows)
    for key in ("top1", "mAP"):
        assert rows["egoagent"][key] == rows["reprojection"][key], key
    assert rows["egoagent"]["mAP"] != rows["copy"]["mAP"] and rows["egoagent"]["mAP"] != rows["shuffled_actions"]["mAP"]
    assert got["comparisons"]["egoagent_minus_reprojection"]["mAP_diff"] == 0.0
    assert got["prediction_calibration"] == {"scale": 1.0, "calibrated": False}  # weights only: not calibrated
    assert rows["oracle"]["top1"] >= 99.0
    # the diagnosis tool measures the learned change from the same base: nothing learned, nothing changes
    run_script(["tools/diagnose_prediction.py", "--config", cfg, "--out", str(tmp_path / "diag.json")])
    diag = json.loads((tmp_path / "diag.json").read_text())
    assert diag["scaled_from"] == "reprojection"
    assert diag["l_pred"]["egoagent"] == pytest.approx(diag["l_pred"]["reprojection"], abs=1e-6)
    assert diag["l_pred"]["reprojection"] != pytest.approx(diag["l_pred"]["copy"], abs=1e-4)
    for scaled in diag["retrieval_scaled_change"].values():
        assert scaled["true"]["top1"] == rows["reprojection"]["top1"]
        assert scaled["l_pred"] == pytest.approx(diag["l_pred"]["reprojection"], abs=1e-6)


def _motion_world(n: int, seed: int):
    """n independent queries whose next frame is frame t moved by its camera motion: teacher logits l = W h of a
    random bottleneck h (as a DINO head's), and h_{t+1} = normalize(h_t + A m) for a random linear effect A of the
    12 motion numbers m."""
    from internlm.eval.prediction_probe import ProbeSet
    from internlm.train.losses import prediction_minimiser, teacher_probs

    g = torch.Generator().manual_seed(seed)
    K, r, d = 64, 8, 16
    W = torch.nn.functional.normalize(torch.randn(K, r, generator=g), dim=-1)  # unit prototypes
    A, lift = torch.randn(r, 12, generator=g), torch.randn(r, d, generator=g)
    center = 0.1 * torch.randn(K, generator=g)
    h = torch.nn.functional.normalize(torch.randn(n, r, generator=g), dim=-1)
    motion = torch.randn(n, 12, generator=g)
    h_next = torch.nn.functional.normalize(h + 0.4 * motion @ A.T / 12 ** 0.5, dim=-1)
    now, nxt = h @ W.T, h_next @ W.T  # (n, K) cosines to the prototypes
    data = ProbeSet(features=h @ lift, copy=prediction_minimiser(now, center, 0.04, 0.1),
                    target_probs=teacher_probs(nxt, center, 0.04), target_logits=nxt, motion=motion,
                    current=[("now", i) for i in range(n)], target=[("next", i) for i in range(n)])
    return data, W, center


@pytest.mark.parametrize("hypotheses", [1, 3])
def test_camera_motion_probe_starts_at_the_copy_and_learns_the_motion(hypotheses):
    """internlm/eval/prediction_probe.py on a world where the next frame is determined by frame t and the camera
    motion: the untrained probe is exactly the copy (L_pred and every rank); trained, it lowers L_pred below the
    copy's, retrieves the next frame better, and only with the true motion (another query's motion is worse)."""
    from internlm.eval.prediction_probe import MotionProbe, evaluate_probe, train_probe

    train, W, center = _motion_world(512, 0)
    probe = MotionProbe(16, 64, hypotheses=hypotheses, hidden_dim=64, bottleneck_dim=16)
    probe.fit_motion_statistics(train.motion)
    probe.eval()
    space = LogitSpace([W] + probe.last_layers(), [center], 0.1, 0.04)
    start = evaluate_probe(probe, train, space, center, 0.1)["rows"]
    assert start["probe"]["l_pred"] == pytest.approx(start["copy"]["l_pred"], abs=1e-6)
    assert (start["probe"]["top1"], start["probe"]["mAP"]) == (start["copy"]["top1"], start["copy"]["mAP"])
    assert start["oracle"]["top1"] == 100.0

    torch.manual_seed(0)
    losses = train_probe(probe, train, 0.1, steps=800, lr=1e-3)
    assert sum(losses[-20:]) < 0.9 * sum(losses[:20])
    got = evaluate_probe(probe, train, LogitSpace([W] + probe.last_layers(), [center], 0.1, 0.04), center, 0.1)
    rows = got["rows"]
    gap = rows["copy"]["l_pred"] - rows["oracle"]["l_pred"]
    assert rows["copy"]["l_pred"] - rows["probe"]["l_pred"] > 0.25 * gap, rows
    assert rows["probe_shuffled_motion"]["l_pred"] > rows["probe"]["l_pred"] + 0.1 * gap, rows
    d = got["probe_minus_copy"]
    assert d["top1_diff"] > 2 * d["top1_diff_se"], (d, rows)
