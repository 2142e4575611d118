"""The coordinator keeps the noisy class histograms sites chose to share, reading each as an untrusted claim."""

from __future__ import annotations

import json

from fedhaven.server.site_statistics import STATISTICS_FILE, parse_histogram, record_site_statistics


def test_histograms_are_kept_per_site_and_lies_are_ignored(tmp_path):
    good = json.dumps({"benign": 101.3, "malignant": 17.9})
    results = [(10, {"site": "a", "class_histogram": good}), (10, {"site": "b"}),
               (10, {"site": "c", "class_histogram": '{"x": "NaN"}'}),
               (10, {"site": "d", "class_histogram": '{"x": 1e999}'}), (10, {"site": "e", "class_histogram": "[1]"})]
    record_site_statistics(run_dir=tmp_path, results=results, server_round=1)
    kept = json.loads((tmp_path / STATISTICS_FILE).read_text())
    assert kept == {"a": {"class_histogram": {"benign": 101.3, "malignant": 17.9}, "round": 1}}
    assert parse_histogram("x" * (2 << 20)) is None and parse_histogram('{"a": true}') is None


def test_nothing_shared_writes_nothing(tmp_path):
    record_site_statistics(run_dir=tmp_path, results=[(10, {"site": "a", "epsilon": 1.0})], server_round=1)
    assert not (tmp_path / STATISTICS_FILE).exists()
