"""The PNGs of the evals: retrieval examples and skeleton rollouts (matplotlib, headless)."""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

# COCO's 17-joint skeleton (0-based, the joint order of egoexo_format.JOINT_NAMES: nose, eyes, ears, shoulders, elbows,
# wrists, hips, knees, ankles; left before right).
COCO_EDGES = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
              (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
RIGHT, WRONG = "#1a9850", "#d73027"


def to_image(chw: torch.Tensor, mean=None, std=None) -> np.ndarray:
    """(3, H, W) float (normalised with mean/std when given) -> (H, W, 3) in [0, 1] for imshow."""
    x = chw.detach().float().cpu()
    if mean is not None:
        x = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


@dataclass
class RetrievalExample:
    title: str  # e.g. "take 3f2a, frame 25 -> 30"
    current: np.ndarray  # (H, W, 3) the query's frame t
    truth: np.ndarray  # (H, W, 3) the true frame t+1
    retrieved: dict  # method name -> [(image (H, W, 3), is_correct)] best first


def _framed(ax, image: np.ndarray, colour: str, label: str) -> None:
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(4)
    ax.set_title(label, fontsize=8, color=colour)


def plot_retrieval_examples(path: str, examples: list[RetrievalExample], k: int = 5) -> None:
    """One row per query: current frame, true next frame, then the top-k of each method side by side
    (green frame = the true next frame, red = another frame)."""
    rows = max(len(examples), 1)
    methods = list(examples[0].retrieved) if examples else []
    cols = 2 + len(methods) * (k + 1)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, ex in enumerate(examples):
        axes[r, 0].axis("on")
        _framed(axes[r, 0], ex.current, "black", f"frame t\n{ex.title}")
        axes[r, 1].axis("on")
        _framed(axes[r, 1], ex.truth, "black", "true t+1")
        for m, method in enumerate(methods):
            first = 2 + m * (k + 1) + 1  # one empty column between methods
            for j, (image, correct) in enumerate(ex.retrieved[method][:k]):
                axes[r, first + j].axis("on")
                _framed(axes[r, first + j], image, RIGHT if correct else WRONG,
                        f"{method}\n#{j + 1} {'right' if correct else 'wrong'}" if j == 0 else
                        f"#{j + 1} {'right' if correct else 'wrong'}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@dataclass
class RolloutExample:
    title: str
    truth: np.ndarray  # (20, 17, 3) metres, camera frame (x right, y down)
    visible: np.ndarray  # (20, 17) bool
    predicted: dict  # predictor name -> (20, 17, 3): the true inputs 0..4, then its prediction 5..19


PREDICTOR_STYLES = {  # label, colour, line style of each predictor in the rollout plot (truth is black)
    "model": ("EgoAgent", "#d73027", "-"), "simlpe": ("siMLPe (pose only)", "#4575b4", "--"),
    "constant_velocity": ("constant velocity", "#fdae61", ":"), "zero_velocity": ("zero velocity", "#999999", ":"),
}


def _skeleton(ax, pose: np.ndarray, visible: np.ndarray, style: dict) -> None:
    for a, b in COCO_EDGES:
        if visible[a] and visible[b]:
            ax.plot([pose[a, 0], pose[b, 0]], [-pose[a, 1], -pose[b, 1]], **style)


def plot_skeleton_rollouts(path: str, examples: list[RolloutExample], frames=(4, 9, 14, 19)) -> None:
    """Rows = clips, columns = clip frames (4 = the last input): the truth (black) and every predictor overlaid,
    front view (x right, -y up), with a 10 cm scale bar. Each panel is ~3.5 inches for a ~2 m body (about 10 px
    per 5 cm), so errors of a few cm are visible. Joints invisible in the truth are not drawn."""
    rows = max(len(examples), 1)
    fig, axes = plt.subplots(rows, len(frames), figsize=(3.2 * len(frames), 3.6 * rows), squeeze=False)
    for r, ex in enumerate(examples):
        seen = ex.truth[ex.visible]
        lo, hi = (seen.min(0), seen.max(0)) if len(seen) else (np.full(3, -1.0), np.full(3, 1.0))
        pad = 0.08 * float(max(hi[0] - lo[0], hi[1] - lo[1], 0.2))
        for c, f in enumerate(frames):
            ax = axes[r, c]
            _skeleton(ax, ex.truth[f], ex.visible[f], dict(color="black", lw=2.2))
            if f >= 5:
                for name, pred in ex.predicted.items():
                    _, colour, ls = PREDICTOR_STYLES.get(name, (name, "#1a9850", "-."))
                    _skeleton(ax, pred[f], ex.visible[f], dict(color=colour, lw=1.4, ls=ls))
            ax.set_xlim(lo[0] - pad, hi[0] + pad)
            ax.set_ylim(-hi[1] - pad, -lo[1] + pad)
            x0, y0 = lo[0] - pad * 0.6, -hi[1] - pad * 0.6
            ax.plot([x0, x0 + 0.1], [y0, y0], color="black", lw=3)  # 10 cm
            ax.text(x0, y0 + pad * 0.25, "10 cm", fontsize=7)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"frame {f}" + (" (last input)" if f < 5 else f" (+{(f - 4) * 1000 // 30} ms)"), fontsize=9)
        axes[r, 0].set_ylabel(ex.title, fontsize=8)
    names = list(examples[0].predicted) if examples else []
    styles = [PREDICTOR_STYLES.get(n, (n, "#1a9850", "-.")) for n in names]
    handles = [plt.Line2D([], [], color="black", lw=2.2, label="truth")] + [
        plt.Line2D([], [], color=colour, ls=ls, lw=1.4, label=label) for label, colour, ls in styles]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=100)
    plt.close(fig)
