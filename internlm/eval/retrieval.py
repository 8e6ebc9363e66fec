"""Future-state retrieval (the protocol: eval_feature_retrieval.py --help): ranks of the true next frame among a
gallery of frames.

Each query has one correct gallery entry (``targets``) and optionally one entry removed from its gallery
(``excluded``: the query's own current frame). Similarity is the cosine of the K-dim head outputs, given here as
embeddings whose dot products equal those cosines (see ``LogitSubspace``). rank = 1 + the number of other
(non-excluded) entries at least as similar as the correct one: ties count against the query, so a collapsed
model (all similarities equal) ranks last instead of first. Top-1 = % of queries with rank 1; with one correct
entry per query, AP = 1 / rank and mAP is its mean (%). Ranks stream over query and gallery chunks: memory is
one (query chunk x gallery chunk) similarity block.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import torch


def retrieval_ranks(queries: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor, excluded: torch.Tensor,
                    queries_per_chunk: int = 1024, gallery_per_chunk: int = 8192) -> torch.Tensor:
    """queries (Q, D), gallery (G, D) (dot product = similarity), targets (Q,) in [0, G), excluded (Q,) in
    [-1, G) (-1: nothing removed) -> ranks (Q,) int64, 1 = the correct entry is the most similar."""
    Q, G = queries.shape[0], gallery.shape[0]
    if targets.shape != (Q,) or excluded.shape != (Q,):
        raise ValueError(f"targets {tuple(targets.shape)} and excluded {tuple(excluded.shape)} must be ({Q},)")
    if Q and (int(targets.min()) < 0 or int(targets.max()) >= G):
        raise ValueError(f"targets must index the gallery of {G} entries")
    if bool((targets == excluded).any()):
        raise ValueError("a query's correct entry is also its excluded entry")
    device = gallery.device
    targets, excluded = targets.to(device), excluded.to(device)
    ranks = torch.empty(Q, dtype=torch.int64, device=device)
    for q0 in range(0, Q, queries_per_chunk):
        q = queries[q0:q0 + queries_per_chunk].to(device)  # (q, D)
        tgt, exc = targets[q0:q0 + queries_per_chunk], excluded[q0:q0 + queries_per_chunk]
        target_sim = (q * gallery[tgt]).sum(dim=1)  # (q,)
        ahead = torch.zeros(q.shape[0], dtype=torch.int64, device=device)
        for g0 in range(0, G, gallery_per_chunk):
            sims = q @ gallery[g0:g0 + gallery_per_chunk].T  # (q, g)
            idx = torch.arange(g0, g0 + sims.shape[1], device=device)  # (g,)
            counted = (sims >= target_sim[:, None]) & (idx[None] != tgt[:, None]) & (idx[None] != exc[:, None])
            ahead += counted.sum(dim=1)
        ranks[q0:q0 + q.shape[0]] = ahead + 1
    return ranks


def top_retrieved(queries: torch.Tensor, gallery: torch.Tensor, excluded: torch.Tensor, k: int = 5) -> torch.Tensor:
    """The k most similar gallery entries of a few queries (for the example PNG): (Q, D), (G, D), (Q,) -> (Q, k)."""
    sims = queries.to(gallery.device) @ gallery.T  # (Q, G)
    rows = torch.nonzero(excluded >= 0).flatten()
    sims[rows, excluded[rows].to(sims.device)] = float("-inf")
    return sims.topk(min(k, gallery.shape[0] - 1 if len(rows) else gallery.shape[0]), dim=1).indices


def rank_sums(ranks: torch.Tensor) -> torch.Tensor:
    """(Q,) ranks -> (3,) float64: queries at rank 1, sum of 1 / rank, number of queries (summable over ranks)."""
    r = ranks.double().cpu()
    return torch.stack([(r == 1).sum(), (1.0 / r).sum(), torch.tensor(float(r.numel()), dtype=torch.float64)])


def summary_from_sums(sums: torch.Tensor) -> dict:
    """(3,) sums -> {"top1": %, "mAP": % (AP = 1 / rank: one correct entry per query), "num_queries"}."""
    n = float(sums[2])
    return {"top1": 100.0 * float(sums[0]) / max(n, 1.0), "mAP": 100.0 * float(sums[1]) / max(n, 1.0),
            "num_queries": int(n)}


def deduplicate(keys: Sequence[Hashable]) -> tuple[list[int], dict]:
    """Keep the first occurrence of each key: -> (positions of the kept entries, {key: gallery index})."""
    kept, index_of = [], {}
    for pos, key in enumerate(keys):
        if key not in index_of:
            index_of[key] = len(kept)
            kept.append(pos)
    return kept, index_of


class LogitSubspace:
    """Exact low-dimensional stand-in for the cosine between K-dim head outputs.

    Both DINO heads end in a bias-free linear layer, so the representation head's logits l_g = W z (W: (K, r),
    r = 256 << K = 65536) lie in the r-dim column space of W. With an orthonormal basis B (K, r) of that space,
    <l_q, l_g> = <B^T l_q, B^T l_g> for ANY query vector l_q. Hence cos(l_q, l_g) = u_q . v_g with
    u_q = B^T l_q / |l_q| (query side; note the full norm) and v_g = B^T l_g / |l_g| (gallery side). This keeps
    r floats per query instead of K (31k frames x 65536 x 4 bytes = 8 GB at full scale).
    """

    def __init__(self, last_layer_weight: torch.Tensor):  # (K, r): the representation head's last layer
        basis, _ = torch.linalg.qr(last_layer_weight.detach().double().cpu())  # (K, r), orthonormal columns
        self.basis = basis.to(device=last_layer_weight.device, dtype=torch.float32)

    def queries(self, logits: torch.Tensor) -> torch.Tensor:  # (n, K) -> (n, r)
        logits = logits.float()
        return (logits @ self.basis) / logits.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def gallery(self, logits: torch.Tensor, check: bool = True) -> torch.Tensor:  # (n, K) -> (n, r), unit norm
        logits = logits.float()
        projected = logits @ self.basis  # (n, r)
        norms = logits.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if check:  # the identity needs the gallery logits inside the column space of W
            lost = (1.0 - (projected.norm(dim=1, keepdim=True) / norms)).abs().max()
            if float(lost) > 1e-3:
                raise RuntimeError(f"gallery logits leave the column space of the representation head's last layer "
                                   f"(relative norm lost {float(lost):.2e}); the head is not a bias-free linear map")
        return projected / norms
