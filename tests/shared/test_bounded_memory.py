"""A site's whole data path in bounded memory: decode, front end, DP training and evaluation stay under the site's
memory setting for 1,000 and for 4,000 images, and 4,000 peak less than holding the extra images' features would add
(each run in a fresh process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SITE = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np, torch
    from PIL import Image
    torch.set_num_threads(1)
    root, cache, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / f"class{c}").mkdir(parents=True)
    for i in range(n):  # learnable: the class sets which quadrant is bright
        img = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
        r, q = divmod(i % 4, 2)
        img[16 * r: 16 * r + 16, 16 * q: 16 * q + 16] += 150
        Image.fromarray(img).save(root / f"class{i % 4}" / f"{i}.png")
    from fedhaven.client.site import SiteTrainer
    from fedhaven.client.types import PrivacyState, Site, SiteInfo
    from fedhaven.shared.memory import peak_rss_mb
    from fedhaven.shared.models import build_model
    from fedhaven.shared.schema import DPConfig, ModelConfig, RunConfig, TrainConfig
    from fedhaven.shared.sources import load_imagefolder
    from fedhaven.shared.task import task_for_round
    from fedhaven.shared.training import evaluate
    from fedhaven.shared.weights import get_weights, set_weights
    from fedhaven.server.evaluation import CentralEvaluator
    data = load_imagefolder(root, image_size=32, channels=3, cache_dir=cache)
    run = RunConfig(rounds=2, model=ModelConfig(), train=TrainConfig(batch_size="auto", lr=1.0),
                    dp=DPConfig(target_epsilon=8.0), memory_mb=1200)
    trainer = SiteTrainer(site=Site(info=SiteInfo(name="s", cache_dir=cache, memory_mb=1200), data=data))
    weights, privacy = get_weights(build_model(cfg=run.model, spec=data.spec, seed=0)), PrivacyState()
    for r in (1, 2):
        out = trainer.fit(task=task_for_round(run=run, server_round=r, input_spec=data.spec, classes=data.classes),
                          weights=weights, privacy=privacy)
        weights, privacy = out.weights, out.privacy
    loss, acc = CentralEvaluator(run=run, data=data, device="cpu", cache_dir=cache)(weights)
    print(peak_rss_mb(), acc)
""")


def _peak(tmp_path, n: int) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", SITE, str(tmp_path / f"data{n}"), str(tmp_path / f"cache{n}"),
                          str(n)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    peak, acc = map(float, out.stdout.split())
    return peak, acc


@pytest.mark.slow
def test_four_times_the_images_do_not_raise_peak_memory(tmp_path):
    small, acc_small = _peak(tmp_path, 1000)
    big, acc_big = _peak(tmp_path, 4000)
    # Both stay under the site's memory setting (memory_mb = 1200). The physical batch is sized from the memory the
    # process has left under that setting (`MemoryBudget`), so a larger site's larger expected batch may use more
    # of it: measured 0-124 MB more at 4,000 images on a loaded machine. Held in memory as floats, 3,000 more
    # images' features alone would add 3000 x 243 x 8 x 8 x 4 bytes = 187 MB, and their decoded images 37 MB more.
    assert max(small, big) < 1200, f"peak {small:.0f} MB with 1,000 images, {big:.0f} MB with 4,000: over memory_mb"
    assert big - small < 187, f"peak {small:.0f} MB with 1,000 images, {big:.0f} MB with 4,000"
    assert min(acc_small, acc_big) > 0.5  # it did learn (4 classes)
