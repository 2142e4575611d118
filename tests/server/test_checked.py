"""`fl-server run` checks a run's model and test set once per combination: any change to the settings, the files or
the installed versions means checking again; a failure is never remembered; a damaged record only means a re-check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import fedhaven.server.cli.run as run_cli
from fedhaven.server.latency.checked import KEEP, CheckedRuns, fingerprint
from fedhaven.shared.config import ConfigError, parse
from fedhaven.shared.schema import RunConfig


def _run(tmp_path: Path, **data: object) -> RunConfig:
    return parse(RunConfig, {"data": data or {"source": "digits"}, "output_dir": str(tmp_path)}, source="test")


def _idx_folder(tmp_path: Path) -> Path:
    from fedhaven.shared.sources import load_digits_data, save_idx

    root = tmp_path / "idx"
    save_idx(load_digits_data(split="test").subset(np.arange(40)), root, split="test")
    return root


def test_the_fingerprint_follows_everything_the_check_depends_on(tmp_path, monkeypatch):
    base = fingerprint(_run(tmp_path))
    assert fingerprint(_run(tmp_path)) == base
    other_model = parse(RunConfig, {"data": {"source": "digits"}, "model": {"width": 16}}, source="t")
    no_dp = parse(RunConfig, {"data": {"source": "digits"}, "dp": {"enabled": False, "allow_not_private": True}},
                  source="t")
    assert fingerprint(other_model) != base and fingerprint(no_dp) != base
    import fedhaven.server.latency.checked as checked

    real = checked.metadata.version
    monkeypatch.setattr(checked.metadata, "version", lambda n: "9.9" if n == "opacus" else real(n))
    assert fingerprint(_run(tmp_path)) != base  # another Opacus validates differently


def test_the_memory_check_is_redone_for_another_limit_or_more_sites(tmp_path):
    """The memory check reads memory_mb, SecAgg+ and how many sites a round gathers: any of them changed is
    checked again (a limit lowered after a passed check was not)."""
    base = fingerprint(_run(tmp_path), sites=3)
    lower = parse(RunConfig, {"data": {"source": "digits"}, "memory_mb": 1024}, source="t")
    assert fingerprint(lower, sites=3) != base
    assert fingerprint(_run(tmp_path), sites=30) != base


def test_a_changed_test_file_changes_the_fingerprint(tmp_path):
    root = _idx_folder(tmp_path)
    run = _run(tmp_path, source="idx", path=str(root))
    before = fingerprint(run)
    f = next(root.iterdir())
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert fingerprint(run) != before
    (root / "extra").write_text("x")
    assert fingerprint(run) != before


def test_the_record_keeps_the_newest_and_survives_damage(tmp_path):
    rec = CheckedRuns(tmp_path / "checked.json")
    assert not rec.passed("a")
    for i in range(KEEP + 5):
        rec.remember(f"k{i}")
    assert rec.passed(f"k{KEEP + 4}") and not rec.passed("k0")
    assert len(json.loads(rec.path.read_text())["passed"]) == KEEP
    for garbage in ("{not json", '["a"]', '{"passed": "a"}', '{"passed": [1, null, "z"]}', ""):
        rec.path.write_text(garbage)
        assert not rec.passed("a")  # damage means checking again, never a pass
    rec.path.write_text('{"passed": [1, null, "z"]}')
    assert rec.passed("z")  # the readable entries of a partly damaged record still count
    rec.remember("b")
    assert rec.passed("b")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_fl_server_run_checks_once_then_only_when_something_changed(tmp_path, monkeypatch):
    calls = []
    real = run_cli._model_and_data_problems
    monkeypatch.setattr(run_cli, "_model_and_data_problems",
                        lambda run, sites: calls.append(run) or real(run, sites=sites))
    root = _idx_folder(tmp_path)
    path = _write(tmp_path, f'[data]\nsource = "idx"\npath = "{root}"\n[secagg]\nenabled = false\n')
    rec = CheckedRuns(tmp_path / "checked.json")
    kw = dict(path=path, overrides=[], rounds=None, output_dir=tmp_path / "runs", checked=rec)
    run_cli.load_run_config(**kw)
    run_cli.load_run_config(**kw)
    run_cli.load_run_config(**{**kw, "overrides": ["rounds=7", "dp.target_epsilon=2"]})  # not what the check reads
    assert len(calls) == 1
    run_cli.load_run_config(**{**kw, "overrides": ["model.width=16"]})
    assert len(calls) == 2
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x00\x00\x08\x01garbage")  # the test set broke
    with pytest.raises(ConfigError, match="held-out test set does not load"):
        run_cli.load_run_config(**kw)
    with pytest.raises(ConfigError, match="held-out test set does not load"):  # a failure is never remembered
        run_cli.load_run_config(**kw)
    assert len(calls) == 4


def test_a_model_that_fails_the_check_is_refused_every_time(tmp_path):
    path = _write(tmp_path, '[data]\nsource = "digits"\n[model]\nnorm = "batch"\n[secagg]\nenabled = false\n')
    rec = CheckedRuns(tmp_path / "checked.json")
    for _ in range(2):
        with pytest.raises(ConfigError, match="model"):
            run_cli.load_run_config(path=path, overrides=[], rounds=None, output_dir=tmp_path / "runs",
                                    checked=rec)
    assert not rec.path.exists()


def test_folders_links_and_the_checking_code_are_part_of_the_fingerprint(tmp_path, monkeypatch):
    """An ImageFolder test set changes by a new (even empty) class folder or inside a linked class folder; the
    model and data code can change under an unchanged version (an editable install)."""
    import fedhaven.server.latency.checked as checked

    root = tmp_path / "test"
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "1.png").write_bytes(b"x")
    elsewhere = tmp_path / "dogs-on-another-disk"
    elsewhere.mkdir()
    (elsewhere / "1.png").write_bytes(b"y")
    (root / "dogs").symlink_to(elsewhere)
    (root / "loop").symlink_to(root)  # a link back up the tree is walked once, not forever
    run = parse(RunConfig, {"data": {"source": "imagefolder", "path": str(tmp_path), "test_path": str(root),
                                     "image_size": 8}}, source="t")
    before = fingerprint(run)
    (elsewhere / "2.png").write_bytes(b"zz")  # inside the linked folder
    after_link = fingerprint(run)
    (root / "birds").mkdir()  # an empty class folder (ImageFolder refuses it)
    after_dir = fingerprint(run)
    assert len({before, after_link, after_dir}) == 3
    real = checked._stamp
    monkeypatch.setattr(checked, "_stamp", lambda r, **kw: real(r, **kw) + ([("x.py", 1, 1)] if kw else []))
    assert fingerprint(run) != after_dir  # the model/data code changed
