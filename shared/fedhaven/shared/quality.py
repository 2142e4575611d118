"""A site's data-quality report, written at the site and never sent: counts, duplicates, odd files, label doubts.

`site_quality` scans a site's training images once (`quality_scan`), and its
test images when it holds some, then reports: images per class; exact
duplicates (the same decoded pixels) and near duplicates (perceptual hashes
within `NEAR_BITS` bits); images found in both its training and test data;
unreadable files; odd ones (pixel size far from the site's usual, another
colour mode, unusual aspect, nearly blank); and candidate label errors
(`quality_labels`). The report is markdown for people and JSON for scripts.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedhaven.shared.files import write_atomic
from fedhaven.shared.quality_labels import LabelCheck, find_label_issues
from fedhaven.shared.quality_scan import Scan, Source, scan

#: Hamming distance (of 64 bits) within which two perceptual hashes make a candidate pair; a candidate is a near
#: duplicate when the thumbnails agree too: correlation at least NEAR_CORRELATION and a mean difference of at most
#: NEAR_GREY_LEVELS. pHash alone is too coarse for small, sparse images: on MNIST thousands of different "1"s match.
NEAR_BITS = 4
NEAR_CORRELATION, NEAR_GREY_LEVELS = 0.99, 8.0
#: Entries listed per finding in the JSON report (counts are always whole); the markdown shows fewer.
LIST_CAP, MD_CAP = 10_000, 25
REPORT_JSON, REPORT_MD = "quality.json", "quality.md"
STAYS = ("This report was computed at the site from the site's own data and stays there: fedhaven never sends it. "
         "What a coordinator may learn is only what the site's policy opts into (a noisy class histogram).")


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        counted: np.ndarray = np.bitwise_count(x)
        return counted
    bits: np.ndarray = np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)  # numpy < 2.0
    return bits


def near_pairs(hashes: np.ndarray, *, bits: int = NEAR_BITS) -> set[tuple[int, int]]:
    """Pairs (i < j) of 64-bit hashes within `bits` Hamming distance, without comparing all pairs: the hash is cut
    into bits + 1 blocks, and two hashes that close agree exactly on at least one of them (multi-index hashing)."""
    out: set[tuple[int, int]] = set()
    edges = np.linspace(0, 64, bits + 2).astype(np.uint64)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        key = (hashes >> lo) & np.uint64((1 << int(hi - lo)) - 1)
        order = np.argsort(key, kind="stable")
        k = key[order]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        for s, e in zip(starts, np.r_[starts[1:], len(k)], strict=True):
            members = order[s:e]
            for a in range(0, len(members), 512):  # a big bucket is compared a block of rows at a time
                rows = members[a: a + 512]
                d = _popcount(hashes[rows][:, None] ^ hashes[members][None, :])
                for i, j in zip(*np.nonzero(d <= bits), strict=True):
                    x, y = int(rows[i]), int(members[j])
                    if x < y:
                        out.add((x, y))
    return out


def _groups(pairs: set[tuple[int, int]]) -> list[list[int]]:
    """Connected groups of the images the pairs join (union-find over those images only)."""
    parent = {i: i for pair in pairs for i in pair}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    found: dict[int, list[int]] = {}
    for a, b in pairs:
        for i in (a, b):
            found.setdefault(root(i), []).append(i)
    return sorted((sorted(set(g)) for g in found.values()), key=lambda g: (-len(g), g[0]))


def exact_groups(s: Scan) -> list[list[int]]:
    """Images with the same decoded pixels, grouped (each group two or more)."""
    d = s.digest_array()
    if not len(d):
        return []
    _, inverse = np.unique(d, axis=0, return_inverse=True)
    order = np.argsort(inverse.reshape(-1), kind="stable")
    k = inverse.reshape(-1)[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    groups = [[int(i) for i in order[s:e]] for s, e in zip(starts, np.r_[starts[1:], len(k)], strict=True) if e - s > 1]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def same_picture(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two thumbnails (float rows) show the same picture: near-identical pattern and grey levels."""
    x, y = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((x @ x) * (y @ y)))
    return norm > 0 and float(x @ y) / norm >= NEAR_CORRELATION and float(np.abs(a - b).mean()) <= NEAR_GREY_LEVELS


def near_groups(s: Scan) -> list[list[int]]:
    """Images that look the same (perceptual hashes within NEAR_BITS, confirmed on the thumbnails) but are not all
    exact copies of each other; blank images are left to their own finding."""
    keep = np.flatnonzero(np.frombuffer(s.blank, dtype=np.uint8) == 0) if len(s) else np.zeros(0, dtype=np.int64)
    pairs = {(int(keep[a]), int(keep[b])) for a, b in near_pairs(s.phash_array()[keep])}
    pairs = {(a, b) for a, b in pairs if same_picture(s.read_thumbs(a, a + 1)[0], s.read_thumbs(b, b + 1)[0])}
    digest = s.digest_array()
    return [g for g in _groups(pairs) if len({digest[i].tobytes() for i in g}) > 1]


def cross_duplicates(train: Scan, test: Scan) -> list[tuple[int, int, str]]:
    """(train index, test index, "exact" or "near") for every test image that is also in the training data."""
    n = len(train)
    both = np.concatenate([train.phash_array(), test.phash_array()])
    digests = np.concatenate([train.digest_array(), test.digest_array()])
    blank = np.concatenate([np.frombuffer(train.blank, dtype=np.uint8), np.frombuffer(test.blank, dtype=np.uint8)])
    out = []
    for a, b in sorted(near_pairs(both)):
        if a < n <= b and not (blank[a] and blank[b]):
            if digests[a].tobytes() == digests[b].tobytes():
                out.append((a, b - n, "exact"))
            elif same_picture(train.read_thumbs(a, a + 1)[0], test.read_thumbs(b - n, b - n + 1)[0]):
                out.append((a, b - n, "near"))
    return out


def odd_images(s: Scan) -> list[tuple[int, list[str]]]:
    """Images unlike the site's usual: far smaller or larger, another colour mode, unusual aspect, nearly blank."""
    if not len(s):
        return []
    w = np.frombuffer(s.width, dtype=np.uint32).astype(np.float64)
    h = np.frombuffer(s.height, dtype=np.uint32).astype(np.float64)
    side = np.minimum(w, h)
    usual_side = float(np.median(side))
    aspect = w / h
    usual_aspect = float(np.median(aspect))
    modes = np.frombuffer(s.mode, dtype=np.uint8)
    usual_mode = int(np.bincount(modes).argmax())
    out = []
    for i in range(len(s)):
        why = []
        if side[i] < usual_side / 2 or side[i] > usual_side * 4:
            why.append(f"size {int(w[i])}x{int(h[i])}, the site's usual shorter side is {usual_side:g} px")
        if modes[i] != usual_mode:
            why.append(f"colour mode {s.modes[modes[i]]}, most images are {s.modes[usual_mode]}")
        if abs(np.log(aspect[i] / usual_aspect)) > np.log(1.5):
            why.append(f"aspect {aspect[i]:.2f} (usual {usual_aspect:.2f}): resizing to a square distorts it")
        if s.blank[i]:
            why.append("nearly blank (almost one grey level)")
        if s.file_bytes[i] == 0:
            why.append("empty file")
        if why:
            out.append((i, why))
    return out


@dataclass(frozen=True)
class QualityReport:
    """The report as plain data (`as_dict`), and its markdown (`markdown`)."""

    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return self.data

    def write(self, folder: Path) -> tuple[Path, Path]:
        """quality.json and quality.md in `folder` (0600: only the site's account reads them)."""
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(folder / REPORT_JSON, json.dumps(self.data, indent=2).encode())
        write_atomic(folder / REPORT_MD, self.markdown().encode())
        return folder / REPORT_JSON, folder / REPORT_MD

    def findings(self) -> dict[str, int]:
        """How many of each problem (what `fl-client check --report` prints)."""
        return {k: int(self.data["counts"][k]) for k in self.data["counts"]}

    def markdown(self) -> str:
        d = self.data
        lines = [f"# Data quality: {d['site']}", "", STAYS, "", f"Source: {d['source']}. {d['images']} images "
                 f"readable, {len(d['unreadable'])} unreadable.", "", "## Images per class", "",
                 "| class | images |", "|---|---|", *[f"| {k} | {v} |" for k, v in d["classes"].items()], ""]

        def section(title: str, rows: list[str], total: int) -> None:
            lines.extend([f"## {title} ({total})", ""])
            lines.extend(f"- {r}" for r in rows[:MD_CAP])
            if total > min(len(rows), MD_CAP):
                lines.append(f"- ... {total - min(len(rows), MD_CAP)} more in {REPORT_JSON}")
            lines.append("" if total else "None found.\n")

        c = d["counts"]
        section("Unreadable files", [f"`{u['file']}`: {u['error']}" for u in d["unreadable"]], c["unreadable"])
        section("Exact duplicates", [", ".join(f"`{f}`" for f in g) for g in d["exact_duplicates"]],
                c["exact_duplicate_groups"])
        section("Near duplicates", [", ".join(f"`{f}`" for f in g) for g in d["near_duplicates"]],
                c["near_duplicate_groups"])
        section("In both training and test data", [f"`{x['train']}` = test `{x['test']}` ({x['kind']})"
                                                    for x in d["train_test_duplicates"]], c["train_test_duplicates"])
        section("Odd images", [f"`{o['file']}`: {'; '.join(o['problems'])}" for o in d["odd"]], c["odd"])
        lab = d["label_issues"]
        lines.extend(["## Candidate label errors", "", lab["method"] if lab["checked"] else f"Not checked: "
                      f"{lab['method']}", ""])
        if lab["checked"]:
            lines.append(f"Cross-validated accuracy of the checking model: {lab['cv_accuracy']:.3f}. Candidates are "
                         f"for a person to review, not proof.\n")
        section("Candidates", [f"`{x['file']}`: labelled {x['given']}, looks like {x['suggested']} "
                               f"(p={x['confidence']:.2f})" for x in lab["candidates"]], c["label_issues"])
        return "\n".join(lines)


def site_quality(*, site: str, source: Source, channels: int, what: str, test: Source | None = None,
                 scratch: Path | None = None) -> QualityReport:
    """Scan `source` (and `test`, when the site holds test data) and build the report. `scratch`: a folder for the
    thumbnails file (default: a private temporary folder, removed after)."""
    with tempfile.TemporaryDirectory(prefix="fedhaven-quality-", dir=scratch) as tmp:
        train = _scan_to(Path(tmp) / "train.u8", source, channels)
        tested = _scan_to(Path(tmp) / "test.u8", test, channels) if test is not None else None
        labels = find_label_issues(train)
        return QualityReport(_assemble(site=site, what=what, train=train, test=tested, labels=labels))


def _scan_to(path: Path, source: Source, channels: int) -> Scan:
    with path.open("wb") as fh:
        return scan(source, channels=channels, thumbs=fh, thumbs_path=path)


def _assemble(*, site: str, what: str, train: Scan, test: Scan | None, labels: LabelCheck) -> dict[str, Any]:
    exact, near, odd = exact_groups(train), near_groups(train), odd_images(train)
    cross = cross_duplicates(train, test) if test is not None else []
    counts = np.bincount(np.frombuffer(train.labels, dtype=np.int64), minlength=len(train.classes)) if len(train) \
        else np.zeros(len(train.classes), dtype=np.int64)
    unreadable = list(train.unreadable) + ([(f"test: {n}", e) for n, e in test.unreadable] if test else [])
    return {
        "format": 1, "site": site, "source": what, "stays_at_site": STAYS,
        "images": len(train), "test_images": len(test) if test is not None else None,
        "classes": {name: int(counts[i]) for i, name in enumerate(train.classes)},
        "counts": {"unreadable": len(unreadable), "exact_duplicate_groups": len(exact),
                   "exact_duplicate_images": sum(len(g) - 1 for g in exact), "near_duplicate_groups": len(near),
                   "train_test_duplicates": len(cross), "odd": len(odd),
                   "blank": int(np.frombuffer(train.blank, dtype=np.uint8).sum()) if len(train) else 0,
                   "label_issues": len(labels.issues)},
        "unreadable": [{"file": n, "error": e} for n, e in unreadable[:LIST_CAP]],
        "exact_duplicates": [[train.name(i) for i in g] for g in exact[:LIST_CAP]],
        "near_duplicates": [[train.name(i) for i in g] for g in near[:LIST_CAP]],
        "train_test_duplicates": [{"train": train.name(a), "test": test.name(b), "kind": k}
                                  for a, b, k in cross[:LIST_CAP]] if test is not None else [],
        "odd": [{"file": train.name(i), "problems": why} for i, why in odd[:LIST_CAP]],
        "label_issues": {"checked": labels.checked, "method": labels.note, "cv_accuracy": labels.cv_accuracy,
                         "candidates": [{"file": train.name(x.index), "given": train.classes[x.given],
                                         "suggested": train.classes[x.suggested], "confidence": x.confidence,
                                         "given_probability": x.given_probability}
                                        for x in labels.issues[:LIST_CAP]]},
    }
