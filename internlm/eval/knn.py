"""Weighted k-nearest-neighbour classification (DINO's kNN protocol; eval_knn_conv_stem_cls.py --help).

Features are L2-normalised, so the dot product is the cosine similarity. For every test image the k most
similar training images vote for their class with weight exp(sim / T); a class's score is the sum of the weights
of its voters; Top-1 / Top-5 are the percentages of test images whose class is among the 1 / 5 best scores
(classes that got no vote are not among them).
The test set is processed in chunks of queries, so neither a large set exhausts memory nor a tiny one (fewer
images than chunks) breaks the loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger("internlm.eval.knn")


@dataclass
class KNNResult:
    top1: float  # % of test images whose best-scored class is right
    top5: float  # % whose class is among the best min(5, C) classes
    k: int  # neighbours used (k clamped to the training-set size)
    top_n: int  # min(5, num_classes): the "top-5" actually measured
    num_train: int
    num_test: int


def knn_class_scores(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                     num_classes: int, k: int, temperature: float) -> torch.Tensor:
    """Class scores of one chunk of test images.

    train_features (N, D) and test_features (M, D) L2-normalised, train_labels (N,) int in [0, C)
    -> (M, C): sum over the k nearest training images of exp(sim / T), per class.
    """
    k = min(k, train_features.shape[0])
    sims = test_features @ train_features.T  # (M, N)
    top_sims, top_idx = sims.topk(k, dim=1)  # (M, k)
    neighbour_labels = train_labels[top_idx]  # (M, k)
    weights = (top_sims / temperature).exp()  # (M, k)
    scores = torch.zeros(test_features.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return scores.scatter_add_(1, neighbour_labels, weights)  # (M, C)


def knn_classify(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, k: int = 20, temperature: float = 0.07,
                 queries_per_chunk: int = 1024) -> KNNResult:
    """Top-1 / Top-5 (%) of the weighted kNN vote; features are L2-normalised here (idempotent)."""
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError(f"kNN needs training and test images; got {train_features.shape[0]} training and "
                         f"{test_features.shape[0]} test features")
    num_train = train_features.shape[0]
    if k > num_train:
        logger.info("k=%d is larger than the training set (%d images): using k=%d", k, num_train, num_train)
        k = num_train
    top_n = min(5, num_classes)
    if top_n < 5:
        logger.info("only %d classes: 'top-5' is measured as top-%d", num_classes, top_n)
    train_features = torch.nn.functional.normalize(train_features.float(), dim=1)
    test_features = torch.nn.functional.normalize(test_features.float(), dim=1)
    train_labels = train_labels.to(train_features.device)
    test_labels = test_labels.to(test_features.device)
    correct1 = correct5 = 0
    for lo in range(0, test_features.shape[0], queries_per_chunk):
        scores = knn_class_scores(train_features, train_labels, test_features[lo:lo + queries_per_chunk],
                                  num_classes, k, temperature)  # (m, C)
        best_scores, best = scores.topk(top_n, dim=1)  # (m, top_n)
        # a class no neighbour voted for is not a prediction (when fewer than 5 classes got votes, topk would
        # otherwise fill the top-5 with arbitrary zero-score classes)
        hits = (best == test_labels[lo:lo + queries_per_chunk, None]) & (best_scores > 0)  # (m, top_n)
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
    m = test_features.shape[0]
    return KNNResult(100.0 * correct1 / m, 100.0 * correct5 / m, k, top_n, num_train, m)
