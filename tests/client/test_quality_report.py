"""`fl-client check --report`: the site's data-quality report, written in its state folder even when the data fails
the check, and kept there."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from fedhaven.client.cli import main
from fedhaven.shared.crypto import make_ca

SITE_TOML = """
name = "hospital-a"
[coordinator]
address = "localhost:9092"
ca_cert = "ca.pem"
[data]
source = "imagefolder"
path = "images"
test_path = "test"
image_size = 16
channels = 1
"""


def _site(tmp_path) -> str:
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in range(3):
        (tmp_path / "images" / f"d{c}").mkdir(parents=True)
        for i, im in enumerate(d.images[d.target == c][:20]):
            Image.fromarray((im * 15).astype(np.uint8)).save(tmp_path / "images" / f"d{c}" / f"{i:02d}.png")
    shutil.copy(tmp_path / "images" / "d1" / "03.png", tmp_path / "images" / "d1" / "03-again.png")
    (tmp_path / "images" / "d2" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "test" / "d0").mkdir(parents=True)
    shutil.copy(tmp_path / "images" / "d0" / "05.png", tmp_path / "test" / "d0" / "t.png")
    (tmp_path / "site.toml").write_text(SITE_TOML)
    (tmp_path / "ca.pem").write_bytes(make_ca().cert_pem)
    assert main(["keygen", "--out", str(tmp_path)]) == 0
    assert main(["ledger", "init", "--config", str(tmp_path / "site.toml")]) == 0
    return str(tmp_path / "site.toml")


def test_check_report_names_the_sites_problems_and_keeps_the_report_local(tmp_path, capfd):
    cfg = _site(tmp_path)
    code = main(["check", "--config", cfg, "--report"])
    out, err = capfd.readouterr()
    assert code != 0 and "broken.png" in out + err  # the check still refuses the unreadable file
    folder = tmp_path / "state" / "quality"
    assert "never sent" in out + err and str(folder) in out + err
    report = json.loads((folder / "quality.json").read_text())
    assert [u["file"] for u in report["unreadable"]] == ["d2/broken.png"]
    assert ["d1/03-again.png", "d1/03.png"] in [sorted(g) for g in report["exact_duplicates"]]
    assert report["train_test_duplicates"] == [{"train": "d0/05.png", "test": "d0/t.png", "kind": "exact"}]
    assert report["classes"] == {"d0": 20, "d1": 21, "d2": 20}
    assert "stays there" in (folder / "quality.md").read_text()
    assert (folder.stat().st_mode & 0o077) == 0 and ((folder / "quality.json").stat().st_mode & 0o077) == 0
    # a folder of the operator's choosing
    assert main(["check", "--config", cfg, "--report", str(tmp_path / "elsewhere")]) != 0
    assert (tmp_path / "elsewhere" / "quality.md").exists()


def test_a_site_whose_data_cannot_be_listed_gets_the_checks_errors_not_a_crash(tmp_path, capfd):
    cfg = _site(tmp_path)
    shutil.rmtree(tmp_path / "images")
    assert main(["check", "--config", cfg, "--report"]) != 0
    out, err = capfd.readouterr()
    assert "no report" in out + err and "does not exist" in out + err
    assert not (tmp_path / "state" / "quality" / "quality.json").exists()
