"""kNN evaluation: the weighted vote against a brute-force reference, edge cases, and the script end to end."""

import json
import logging
import os

import pytest
import torch

from internlm.eval.knn import knn_class_scores, knn_classify


def brute_force_scores(train, labels, test, num_classes, k, T):
    """Per test image, loop over every training image: sort by cosine, keep k, add exp(sim/T) per class."""
    train = torch.nn.functional.normalize(train.double(), dim=1)
    test = torch.nn.functional.normalize(test.double(), dim=1)
    out = torch.zeros(test.shape[0], num_classes, dtype=torch.float64)
    for i in range(test.shape[0]):
        sims = sorted(((float(test[i] @ train[j]), int(labels[j])) for j in range(train.shape[0])), reverse=True)
        for sim, label in sims[:k]:
            out[i, label] += torch.exp(torch.tensor(sim / T, dtype=torch.float64))
    return out


def brute_force_accuracy(scores, test_labels, n=5):
    order = [sorted(range(scores.shape[1]), key=lambda c: -float(row[c])) for row in scores]
    top1 = sum(o[0] == int(y) for o, y in zip(order, test_labels)) / len(order)
    top5 = sum(int(y) in o[:n] and float(row[int(y)]) > 0 for o, y, row in zip(order, test_labels, scores))
    top5 /= len(order)
    return 100 * top1, 100 * top5


def random_set(seed, n_train=60, n_test=25, dim=12, classes=7):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n_train, dim, generator=g), torch.randint(0, classes, (n_train,), generator=g),
            torch.randn(n_test, dim, generator=g), torch.randint(0, classes, (n_test,), generator=g))


@pytest.mark.parametrize("seed, k, T", [(0, 20, 0.07), (1, 5, 0.5), (2, 1, 0.07)])
def test_weighted_vote_equals_brute_force(seed, k, T):
    train, labels, test, test_labels = random_set(seed)  # continuous random features: no ties
    train_n = torch.nn.functional.normalize(train.double(), dim=1)
    test_n = torch.nn.functional.normalize(test.double(), dim=1)
    ref = brute_force_scores(train, labels, test, 7, k, T)
    got = knn_class_scores(train_n, labels, test_n, 7, k, T)
    assert torch.allclose(got, ref, rtol=1e-9, atol=0), (got - ref).abs().max()
    want1, want5 = brute_force_accuracy(ref, test_labels)
    for chunk in (1, 4, 1024):  # chunking must not change anything
        r = knn_classify(train, labels, test, test_labels, 7, k, T, queries_per_chunk=chunk)
        assert (r.top1, r.top5) == pytest.approx((want1, want5))
    assert want1 <= want5


def test_separated_clusters_are_all_right():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(5, 16) * 10
    labels = torch.arange(5).repeat_interleave(30)
    train = centres[labels] + 0.3 * torch.randn(150, 16, generator=g)
    test_labels = torch.arange(5).repeat(4)
    test = centres[test_labels] + 0.3 * torch.randn(20, 16, generator=g)
    r = knn_classify(train, labels, test, test_labels, 5)
    assert (r.top1, r.top5, r.top_n) == (100.0, 100.0, 5)


def test_fewer_test_images_than_chunks_and_k_above_train_size(caplog):
    train, labels, test, test_labels = random_set(3, n_train=6, n_test=2, classes=3)
    with caplog.at_level(logging.INFO, logger="internlm.eval.knn"):
        r = knn_classify(train, labels, test, test_labels, 3, k=20, queries_per_chunk=100)
    assert r.k == 6 and r.num_test == 2 and r.top_n == 3
    assert any("k=20 is larger than the training set (6 images): using k=6" in m for m in caplog.messages)
    ref = brute_force_scores(train, labels, test, 3, 6, 0.07)
    assert (r.top1, r.top5) == pytest.approx(brute_force_accuracy(ref, test_labels, n=3))
    assert r.top5 == 100.0  # only 3 classes: "top-5" is top-3, always right


def test_empty_sets_are_an_error():
    with pytest.raises(ValueError, match="needs training and test images"):
        knn_classify(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.randn(3, 4),
                     torch.zeros(3, dtype=torch.long), 2)


# ------------------------------------------------------------------------------------------- end to end


def teacher_features(run_folder: str, dataset) -> torch.Tensor:
    """(N, d) features of the training code's own model (not the HF export the script loads): the teacher weights
    of the checkpoint, EgoAgent.encode (the final-normed state-query output) on the dataset's crops."""
    from internlm.checkpoint import load_model

    model, _, _ = load_model(run_folder, "teacher")
    images = torch.stack([img for img, _ in dataset])
    with torch.no_grad():
        return model.encode(images)


def solid_colour_folder(root, classes=3, per_class=4, size=40, seed=0):
    """An ImageFolder whose classes are colours (each image its class colour plus noise): any encoder that does
    not ignore its input puts every val image next to its class, so kNN Top-1 must be 100%."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 220, 50)][:classes]
    for split, n in (("train", per_class), ("val", 2)):
        for c, colour in enumerate(colours):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.mark.slow
def test_knn_script_end_to_end(tmp_path, processed_world):
    """The script's rows equal an independent computation (the training model's features of the same crops, the
    brute-force-checked vote): the model row from the trained export, the untrained row from a different export
    (tools/make_untrained_checkpoint.py), the raw-pixel row from the crops themselves."""
    from eval_helpers import converter_module, make_checkpoint, run_script, world_paths, write_tiny_config

    from internlm.data.build import build_image_folder

    paths = world_paths(processed_world)
    cfg = write_tiny_config(tmp_path / "cfg.py", 2, tmp_path / "run", paths["frames"], paths["poses"])
    make_checkpoint(cfg)
    convert = converter_module().convert
    convert(str(tmp_path / "run"), str(tmp_path / "hf"), check=False)
    run_script(["tools/make_untrained_checkpoint.py", "--config", cfg, "--seed", "3", "--out",
                str(tmp_path / "untrained")])
    convert(str(tmp_path / "untrained"), str(tmp_path / "hf_untrained"), check=False)
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "knn.json"
    proc = run_script(["eval_knn_conv_stem_cls.py", "--pretrained_weights", str(tmp_path / "hf"), "--data_path",
                       paths["imagefolder"], "--imgnet", "100", "--resize", "36", "--crop", "32",
                       "--batch_size_per_gpu", "8", "--num_workers", "1", "--output", str(out),
                       "--untrained_weights", str(tmp_path / "hf_untrained"), "--raw_pixels"], env_extra=env)
    res = json.loads(out.read_text())
    sets = [build_image_folder(os.path.join(paths["imagefolder"], s), 36, 32) for s in ("train", "val")]
    labels = [torch.tensor([lab for _, lab in d]) for d in sets]
    n_val = len(sets[1])
    assert (res["num_train"], res["num_val"]) == (len(sets[0]), n_val)
    assert res["class_count_check"].startswith("class-count mismatch: --imgnet 100 expects 100 classes")
    assert res["feature_dim"] == 64 and res["source_weights"] == "teacher"
    assert res["untrained_weights"] == str(tmp_path / "hf_untrained")
    assert "Top-1 %" in proc.stdout
    rows = res["rows"]
    assert set(rows) == {"model", "untrained", "raw_pixels"}
    classes = len(sets[0].classes)
    expected = {
        "model": [teacher_features(str(tmp_path / "run"), d) for d in sets],
        "untrained": [teacher_features(str(tmp_path / "untrained"), d) for d in sets],
        "raw_pixels": [torch.stack([img.flatten() for img, _ in d]) for d in sets],
    }
    assert not torch.allclose(expected["model"][1], expected["untrained"][1])  # two different networks
    for name, (train_f, val_f) in expected.items():
        direct = knn_classify(train_f, labels[0], val_f, labels[1], classes)
        assert (rows[name]["top1"], rows[name]["top5"]) == pytest.approx((direct.top1, direct.top5)), name
        p = direct.top1 / 100
        assert rows[name]["top1_se"] == pytest.approx(100 * (p * (1 - p) / n_val) ** 0.5)
    assert rows["raw_pixels"]["feature_dim"] == 3 * 32 * 32
    assert res["top1"] == rows["model"]["top1"]

    # where the labels decide the answer: classes are colours, so every encoder that looks at its input is right
    colours = solid_colour_folder(tmp_path / "colours")
    out = tmp_path / "colours.json"
    run_script(["eval_knn_conv_stem_cls.py", "--pretrained_weights", str(tmp_path / "hf"), "--data_path",
                str(colours), "--imgnet", "0", "--resize", "36", "--crop", "32", "--num_workers", "0",
                "--output", str(out), "--raw_pixels", "--nb_knn", "3"], env_extra=env)
    rows = json.loads(out.read_text())["rows"]
    assert rows["model"]["top1"] == rows["raw_pixels"]["top1"] == 100.0
