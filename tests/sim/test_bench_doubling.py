"""The one-site doubling measure: page-cache residency as the kernel counts it, and its place in "Large images"."""

from __future__ import annotations

import os
import shutil

import pytest

from fedhaven.sim.bench import doubling, large_images


def test_resident_bytes_follow_the_page_cache(tmp_path):
    if shutil.which("fincore") is None:
        pytest.skip("util-linux fincore is not installed")
    files = [tmp_path / f"f{i}" for i in range(3)]
    for f in files:
        f.write_bytes(os.urandom(64 << 10))
        f.read_bytes()
    doubling.push_out_of_cache(files)
    if doubling.resident_bytes(files) > 0:
        pytest.skip(f"{tmp_path}'s file system keeps file pages in memory (tmpfs?)")
    files[1].read_bytes()
    assert doubling.resident_bytes(files) == 64 << 10
    assert doubling.resident_bytes([tmp_path / "gone"]) == 0


def _site(images: int, peak: float) -> dict[str, float]:
    return {"images": images, "hwm_mib": peak - 10, "images_cached_mib": 0.0, "cache_cached_mib": 10.0,
            "peak_mib": peak}


@pytest.mark.parametrize(("double_peak", "met"), [(1050.0, True), (1200.0, False)])
def test_the_section_reports_the_one_site_measure(double_peak, met):
    res = {"sites": 10, "per_site": 2000, "test": 2000,
           "doubling_site": {"images": 300, "rounds": 2, "single": _site(300, 1000.0),
                             "double": _site(600, double_peak), "peak_ratio": double_peak / 1000.0,
                             "rss_ratio": (double_peak - 10) / 990.0}}
    rows = [r for r in large_images.targets(res) if r[0].startswith("one site")]
    assert rows == [(rows[0][0], f"{double_peak / 1000:.3f}x", met)]
    text = "\n".join(large_images.section(res))
    assert "300 images" in text and "600 images" in text and f"{double_peak / 1000:.3f}x" in text


def test_training_per_image_divides_the_rounds_summed_training_by_every_sites_images():
    """A round's `site_train_time_s` is summed over its sites: per image it is divided by all their images."""
    run = {"sites": 10, "accuracy": 0.9, "epsilon_max": 3.0, "rounds": 40, "first_round_s": 20.0,
           "steady_round_s": 6.0, "steady_site_train_s": 8.0, "largest_process_mib": 1700.0,
           "peak_rss_total_mib": 4700.0}
    text = "\n".join(large_images.section({"sites": 10, "per_site": 2000, "test": 2000, "default_224": run}))
    assert "| 0.400 ms |" in text  # 8 s over 10 sites x 2,000 images, not over one site's 2,000 (4 ms)


def test_peak_memory_counts_the_cache_folders_pages(tmp_path):
    from fedhaven.sim.bench.machine import PeakMemory

    if shutil.which("fincore") is None:
        pytest.skip("util-linux fincore is not installed")
    f = tmp_path / "cache" / "x.rows"
    f.parent.mkdir()
    f.write_bytes(os.urandom(1 << 20))
    f.read_bytes()
    mem = PeakMemory(cache_dir=f.parent, cache_every=0.0)
    mem.sample()
    assert mem.peak_cached_mib == pytest.approx(doubling.resident_bytes([f]) / 2**20)
    assert mem.peak_rss_plus_cached_mib >= mem.peak_rss_total_mib + mem.peak_cached_mib - 1e-6
