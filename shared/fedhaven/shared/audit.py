"""An empirical privacy check: the loss-threshold membership-inference attack and its AUC."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedhaven.shared.data import FeatureData, ImageData


@torch.no_grad()
def per_example_loss(*, model: nn.Module, data: ImageData | FeatureData, device: str,
                     batch_size: int = 256) -> np.ndarray:
    """Cross-entropy of every example under `model`, `batch_size` examples at a time."""
    model.to(device).eval()
    out = []
    for start in range(0, len(data), batch_size):
        x = data.inputs(slice(start, start + batch_size)).to(device)
        y = data.labels[start: start + batch_size].to(device)
        out.append(F.cross_entropy(model(x), y, reduction="none").cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def auc(*, positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of scores separating `positive` from `negative` (scikit-learn's, ties halved)."""
    from sklearn.metrics import roc_auc_score

    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("AUC needs at least one positive and one negative score")
    truth = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    return float(roc_auc_score(truth, np.r_[positive, negative]))


@dataclass(frozen=True)
class MembershipInference:
    """AUC of telling training members from held-out examples by their loss (0.5: no better than chance)."""

    auc: float
    members: int
    non_members: int


def membership_inference(*, model: nn.Module, members: ImageData | FeatureData | Sequence[ImageData | FeatureData],
                         non_members: ImageData | FeatureData, device: str = "cpu", max_examples: int = 5000,
                         seed: int = 0, batch_size: int = 256) -> MembershipInference:
    """The loss-threshold attack (Yeom et al., 2018) on balanced samples of members and non-members.

    `members` may be one dataset or several (the sites'): the sample is drawn uniformly over all of them.
    """
    parts = [members] if isinstance(members, (ImageData, FeatureData)) else list(members)
    sizes = np.array([len(p) for p in parts])
    n = int(min(sizes.sum(), len(non_members), max_examples))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(int(sizes.sum()), n, replace=False))
    owner = np.searchsorted(np.cumsum(sizes), chosen, side="right")
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    lm = np.concatenate([per_example_loss(model=model, data=p.subset(chosen[owner == i] - starts[i]), device=device,
                                          batch_size=batch_size)
                         for i, p in enumerate(parts) if np.any(owner == i)] or [np.zeros(0)])
    o = non_members.subset(rng.choice(len(non_members), n, replace=False))
    lo = per_example_loss(model=model, data=o, device=device, batch_size=batch_size)
    return MembershipInference(auc=auc(positive=-lm, negative=-lo), members=n, non_members=n)
