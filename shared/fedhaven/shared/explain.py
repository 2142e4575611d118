"""Explanations of a trained model on the coordinator's own held-out test data: what it attends to, where it errs,
how far its confidence can be trusted. Plain torch and Captum; no site data and no privacy cost.

`explain_model` streams the test set once in batches (memory bounded by the batch
size) for the confusion matrix, per-class accuracy and a reliability diagram with
its expected calibration error (ECE), keeping only the indices of a capped number
of examples per class (the most confident right and wrong predictions), then
computes Captum's integrated gradients for those few examples, one at a time
(as many path steps per pass as the process's memory limit leaves room for),
and writes RUN_DIR/explain/: PNG figures and explain.json summarising them all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedhaven.shared.data import FeatureData, ImageData
from fedhaven.shared.files import write_atomic

EXPLAIN_DIR = "explain"
EXPLAIN_JSON = "explain.json"
#: Right and wrong examples explained per class, and in all (the most confident of each are kept).
PER_CLASS, MAX_EXAMPLES = 1, 24
#: Integrated-gradients steps (Riemann sum along the path from the baseline) and reliability-diagram bins.
IG_STEPS, CALIBRATION_BINS = 24, 10
PRIVACY_NOTE = ("Computed by the coordinator on its own held-out test set after training: no site's data is read "
                "and no site spends privacy budget on it.")


def attribution_step_bytes(model: nn.Module, *, image_shape: tuple[int, ...]) -> int:
    """An upper estimate of one integrated-gradients path step's memory on one image, in bytes: the gradient flows
    back to the image, so a fixed front end's working memory counts twice (forward and backward) beside its head's
    training memory."""
    from fedhaven.shared.memory import front_image_bytes, train_example_bytes
    from fedhaven.shared.models import split_front

    front, head = split_front(model)
    if front is None:
        return train_example_bytes(model, row_shape=image_shape, ghost=True)
    with torch.no_grad():
        row = tuple(front.eval()(torch.zeros(1, *image_shape)).shape[1:])
    return 2 * front_image_bytes(front, image_shape=image_shape) + train_example_bytes(head, row_shape=row, ghost=True)


def attribution_pass(model: nn.Module, *, image_shape: tuple[int, ...], memory_mb: int | None,
                     steps: int = IG_STEPS) -> int:
    """Path steps per forward/backward pass: all `steps` without a limit, else as many as `memory_mb` leaves room
    for (at least one). On a 224x224 RGB image the default model's step takes about 26 MB (BENCHMARKS.md)."""
    if memory_mb is None:
        return steps
    from fedhaven.shared.memory import MemoryBudget

    return MemoryBudget(memory_mb).rows(per_row_bytes=attribution_step_bytes(model, image_shape=image_shape),
                                        cap=steps)


def attributions(*, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, steps: int = IG_STEPS,
                 device: str = "cpu", steps_per_pass: int | None = None) -> torch.Tensor:
    """Captum's integrated gradients of each target logit with respect to the input, one example at a time; the
    absolute attribution summed over channels, (N, H, W). `steps_per_pass` (default: all) bounds the memory: Captum
    runs the path's steps that many at a time, with the same result.

    Two baselines, a black (-1) and a white (+1) image, averaged: from one baseline alone, pixels that already
    look like it (a dark mark against a black baseline) get almost no attribution however much the model uses them.
    """
    from captum.attr import IntegratedGradients

    model = model.to(device).eval()
    ig = IntegratedGradients(model)
    out = []
    for x, t in zip(inputs, targets, strict=True):
        total = torch.zeros(x.shape[1:])
        for level in (-1.0, 1.0):
            x1 = x[None].to(device).requires_grad_(True)
            a = ig.attribute(x1, baselines=torch.full_like(x1, level), target=int(t), n_steps=steps,
                             internal_batch_size=max(1, min(steps, steps_per_pass or steps)))
            total += a.detach().abs().sum(1)[0].cpu() / 2
        out.append(total)
    return torch.stack(out) if out else torch.zeros((0, *inputs.shape[2:]))


@dataclass
class _Tally:
    """What one pass over the test set keeps: counts, calibration sums, and a few example indices per class."""

    k: int
    confusion: np.ndarray
    bin_count: np.ndarray
    bin_conf: np.ndarray
    bin_correct: np.ndarray
    picks: dict[tuple[int, bool], list[tuple[float, int, int]]]  # (class, correct) -> [(confidence, index, pred)]

    @classmethod
    def new(cls, k: int) -> _Tally:
        z = np.zeros(CALIBRATION_BINS)
        return cls(k, np.zeros((k, k), dtype=np.int64), z.copy(), z.copy(), z.copy(), {})

    def add(self, start: int, probs: torch.Tensor, labels: torch.Tensor, per_class: int) -> None:
        conf, pred = probs.max(1)
        y, p, c = labels.numpy(), pred.numpy(), conf.numpy().astype(np.float64)
        np.add.at(self.confusion, (y, p), 1)
        b = np.minimum((c * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
        np.add.at(self.bin_count, b, 1)
        np.add.at(self.bin_conf, b, c)
        np.add.at(self.bin_correct, b, (y == p).astype(np.float64))
        for i in range(len(y)):
            key = (int(y[i]), bool(y[i] == p[i]))
            kept = self.picks.setdefault(key, [])
            if len(kept) < per_class or c[i] > kept[-1][0]:
                kept.append((float(c[i]), start + i, int(p[i])))
                kept.sort(key=lambda e: -e[0])
                del kept[per_class:]

    def calibration(self) -> tuple[float, list[dict[str, float | int | None]]]:
        n = max(1.0, float(self.bin_count.sum()))
        bins, ece = [], 0.0
        for i in range(CALIBRATION_BINS):
            m = self.bin_count[i]
            conf = self.bin_conf[i] / m if m else None
            acc = self.bin_correct[i] / m if m else None
            if acc is not None and conf is not None:
                ece += m / n * abs(float(acc) - float(conf))
            bins.append({"low": i / CALIBRATION_BINS, "high": (i + 1) / CALIBRATION_BINS, "count": int(m),
                         "confidence": conf, "accuracy": acc})
        return ece, bins


def explain_model(*, model: nn.Module, data: ImageData, out_dir: Path, device: str = "cpu", batch_size: int = 256,
                  predict: tuple[nn.Module, ImageData | FeatureData] | None = None, per_class: int = PER_CLASS,
                  max_examples: int = MAX_EXAMPLES, steps: int = IG_STEPS,
                  memory_mb: int | None = None) -> dict[str, Any]:
    """Write `out_dir` (RUN_DIR/explain) for `model` on the test images `data`; return explain.json's content.

    `predict`: a cheaper (module, inputs) pair giving the same logits in the same order (a fixed front end's
    cached features and the head); attributions always run the whole model on the images. `memory_mb`: the
    process's limit, which sizes the attributions' passes (`attribution_pass`).
    """
    k = len(data.classes)
    if len(data) == 0:
        raise ValueError("cannot explain a model on an empty test set")
    head, inputs = predict if predict is not None else (model, data)
    head.to(device).eval()
    tally = _Tally.new(k)
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = inputs.inputs(slice(start, start + batch_size)).to(device)
            probs = torch.softmax(head(x).float(), 1).cpu()
            tally.add(start, probs, data.labels[start: start + len(x)], per_class)
    picks = sorted(((cls, ok, conf, idx, pred) for (cls, ok), kept in tally.picks.items()
                    for conf, idx, pred in kept), key=lambda e: (e[0], not e[1], -e[2]))[:max_examples]
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    examples: list[dict[str, Any]] = []
    if picks:
        idx = torch.tensor([p[3] for p in picks])
        images = data.images[idx]
        per_pass = attribution_pass(model, image_shape=tuple(data.images.row_shape), memory_mb=memory_mb,
                                    steps=steps)
        maps = attributions(model=model, inputs=data.inputs(idx), targets=torch.tensor([p[4] for p in picks]),
                            steps=steps, device=device, steps_per_pass=per_pass)
        for cls in sorted({p[0] for p in picks}):
            rows = [i for i, p in enumerate(picks) if p[0] == cls]
            name = f"attributions-class-{cls}.png"
            _plot_attributions(out_dir / name, images[rows], maps[rows], [picks[i] for i in rows], data.classes)
            files[f"attributions_{data.classes[cls]}"] = name
        examples = [{"test_index": int(p[3]), "label": data.classes[p[0]], "predicted": data.classes[p[4]],
                     "correct": p[1], "confidence": p[2], "file": f"attributions-class-{p[0]}.png"} for p in picks]
    ece, bins = tally.calibration()
    cm = tally.confusion
    total = int(cm.sum())
    per_class_acc = {data.classes[i]: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None) for i in range(k)}
    _plot_confusion(out_dir / "confusion.png", cm, data.classes)
    _plot_reliability(out_dir / "reliability.png", bins, ece)
    files.update({"confusion_matrix": "confusion.png", "reliability": "reliability.png"})
    summary = {"format": 1, "privacy": PRIVACY_NOTE, "test_examples": total, "classes": list(data.classes),
               "accuracy": float(np.trace(cm) / total), "per_class_accuracy": per_class_acc,
               "confusion_matrix": cm.tolist(), "confusion_matrix_axes": "rows: true class, columns: predicted",
               "calibration": {"ece": ece, "bins": bins, "method": f"{CALIBRATION_BINS} equal-width confidence bins"},
               "attribution": {"method": "integrated gradients (Captum)", "steps": steps,
                               "baseline": "a black and a white image, averaged", "target": "the predicted class",
                               "examples": examples,
                               "chosen": f"the {per_class} most confident right and wrong predictions per class, "
                                         f"at most {max_examples}"},
               "files": files}
    write_atomic(out_dir / EXPLAIN_JSON, json.dumps(summary, indent=2).encode())
    return summary


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)


def _plot_attributions(path: Path, images: torch.Tensor, maps: torch.Tensor, picks: list[tuple[int, bool, float, int,
                       int]], classes: tuple[str, ...]) -> None:
    plt = _pyplot()
    n = len(picks)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), squeeze=False)
    for j, (_, ok, conf, idx, pred) in enumerate(picks):
        img = images[j].permute(1, 2, 0).numpy()
        axes[0][j].imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None)
        axes[0][j].set_title(f"{'right' if ok else 'WRONG'}: {classes[pred]}\np={conf:.2f} (#{idx})", fontsize=8)
        axes[1][j].imshow(maps[j].numpy(), cmap="inferno")
        for ax in (axes[0][j], axes[1][j]):
            ax.axis("off")
    fig.suptitle(f"class {classes[picks[0][0]]}: integrated gradients of the predicted class", fontsize=9)
    _save(fig, path)


def _plot_confusion(path: Path, cm: np.ndarray, classes: tuple[str, ...]) -> None:
    plt = _pyplot()
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * k, 1.0 + 0.5 * k))
    ax.imshow(cm, cmap="Blues")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(k), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(k), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    _save(fig, path)


def _plot_reliability(path: Path, bins: list[dict[str, float | int | None]], ece: float) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    mids = [(float(b["low"] or 0) + float(b["high"] or 0)) / 2 for b in bins]
    accs = [float(b["accuracy"] or 0.0) for b in bins]
    ax.bar(mids, accs, width=1 / len(bins), edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize=7)
    _save(fig, path)

