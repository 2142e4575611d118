"""Large-image ImageFolder trees for tests and benchmarks, made from what fedhaven ships or generated: no download.

- `upscaled_mnist`: bundled MNIST digits upscaled to 224x224 (bilinear) and tinted a
  random colour each, as RGB PNGs: the 28x28 data set at hospital image size.
- `fine_stripes`: 224x224 RGB images whose label is the orientation (horizontal or
  vertical) of stripes 4 pixels wide inside a few patches. Every 8x8 block of a
  patch is half lit whatever the orientation, so the label is invisible at 28x28
  (each pixel is such a block) and plain at 56x56.

`python -m fedhaven.sim.imagesets mnist OUT --train 20000 --test 2000` writes a tree.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SIZE = 224


def _save(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)


def upscaled_mnist(root: Path, *, split: str, count: int, start: int = 0, seed: int = 0, size: int = SIZE) -> Path:
    """`count` MNIST images of `split` (from index `start`) as `root/<digit>/<n>.png`, `size` x `size` RGB."""
    from PIL import Image

    from fedhaven.shared.schema import DataConfig
    from fedhaven.shared.sources import load_data

    data = load_data(cfg=DataConfig(source="mnist"), split="train" if split == "train" else "test")
    if start + count > len(data):
        raise ValueError(f"MNIST's {split} split has {len(data)} images, asked for {start + count}")
    rng = np.random.default_rng(seed)
    for i in range(start, start + count):
        grey = Image.fromarray(data.images[i][0].numpy()).resize((size, size), Image.Resampling.BILINEAR)
        colour = rng.uniform(0.35, 1.0, 3)  # a visible tint on black
        rgb = (np.asarray(grey, dtype=np.float32)[..., None] * colour).round().astype(np.uint8)
        _save(rgb, root / str(int(data.labels[i])) / f"{i:06d}.png")
    return root


def stripes_image(rng: np.random.Generator, *, label: int, size: int = SIZE) -> np.ndarray:
    """One `size` x `size` RGB image: a noisy random background and 2-4 patches of stripes 4 pixels wide,
    horizontal (label 0) or vertical (label 1). Patches start and end on multiples of 8 pixels."""
    img = rng.integers(20, 60, (size, size, 3)).astype(np.float32)
    cells = size // 8
    for _ in range(rng.integers(2, 5)):
        h, w = rng.integers(4, 9, 2)  # 32 to 64 pixels
        r, c = rng.integers(0, cells - h), rng.integers(0, cells - w)
        ys, xs = np.mgrid[0: h * 8, 0: w * 8]
        on = ((ys if label == 0 else xs) // 4) % 2 == 0
        colour, dark = rng.uniform(120, 220, 3), rng.uniform(20, 60, 3)  # never clipped with the noise below
        patch = img[r * 8: (r + h) * 8, c * 8: (c + w) * 8]
        patch[:] = dark
        patch[on] = colour  # every 8x8 block of the patch: half colour, half dark, in either orientation
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def fine_stripes(root: Path, *, count: int, seed: int = 0, size: int = SIZE) -> Path:
    """`count` stripe images (half of each orientation) as `root/{horizontal,vertical}/<n>.png`."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        label = i % 2
        _save(stripes_image(rng, label=label, size=size), root / ("horizontal", "vertical")[label] / f"{i:06d}.png")
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedhaven.sim.imagesets", description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=("mnist", "stripes"))
    p.add_argument("out", type=Path, help="writes OUT/train and OUT/test")
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.kind == "mnist":
        upscaled_mnist(args.out / "train", split="train", count=args.train, seed=args.seed)
        upscaled_mnist(args.out / "test", split="test", count=args.test, seed=args.seed + 1)
    else:
        fine_stripes(args.out / "train", count=args.train, seed=args.seed)
        fine_stripes(args.out / "test", count=args.test, seed=args.seed + 1)
    print(args.out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
