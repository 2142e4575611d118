"""The model a run hands over: safetensors and ONNX that predict what torch predicts on the test set, and the model
card with each site's recomputable privacy guarantee; an export that fails is said, and nothing else is lost."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fedhaven.server import export as export_mod
from fedhaven.server.export import ONNX_FILE, SAFETENSORS_FILE, export_model, onnx_agreement
from fedhaven.server.model_card import CARD_JSON, CARD_MD, write_release
from fedhaven.server.privacy_report import build_privacy_report
from fedhaven.server.records import RoundRecord, SiteReport
from fedhaven.shared.accounting import PrivacyHistory, epsilon
from fedhaven.shared.config import parse
from fedhaven.shared.data import to_model_input
from fedhaven.shared.models import build_model, split_front
from fedhaven.shared.runtime import configure_logging
from fedhaven.shared.schema import ModelConfig, RunConfig
from fedhaven.shared.sources import load_digits_data
from fedhaven.shared.text import markdown
from fedhaven.shared.weights import get_weights, set_weights


@pytest.fixture(scope="module")
def digits():
    train, test = load_digits_data(split="train"), load_digits_data(split="test")
    return (to_model_input(train.images[torch.arange(len(train))]), train.labels,
            to_model_input(test.images[torch.arange(len(test))]), test.labels, train.classes, train.spec)


def _trained(name: str, digits) -> tuple[ModelConfig, list[np.ndarray]]:
    """A model trained a little on digits (plain SGD): its predictions mean something, ties are rare."""
    x, y, _, _, _, spec = digits
    cfg = ModelConfig(name=name)
    model = build_model(cfg=cfg, spec=spec, seed=0, dp=False)
    front, head = split_front(model)
    if front is not None:  # a fixed front end: computed once, as the sites do
        with torch.no_grad():
            x = front(x)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(x[i: i + 64]), y[i: i + 64]).backward()
            opt.step()
    return cfg, get_weights(model)


@pytest.mark.parametrize("name", ["scatternet", "lenet"])
def test_onnx_predicts_what_torch_predicts_on_the_test_set(name, digits, tmp_path):
    _, _, x_test, y_test, classes, spec = digits
    cfg, weights = _trained(name, digits)
    done = {e.format: e for e in export_model(run_dir=tmp_path, model_cfg=cfg, spec=spec, classes=classes,
                                              weights=weights)}
    assert done["onnx"].ok and done["safetensors"].ok, done
    torch_model = build_model(cfg=cfg, spec=spec, dp=False).eval()
    set_weights(torch_model, weights)
    check = onnx_agreement(model=torch_model, onnx_model=tmp_path / ONNX_FILE, images=x_test)
    assert check["images"] == len(y_test) and check["predictions_differ"] == 0, check
    assert check["max_abs_logit_diff"] < 1e-3
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / ONNX_FILE), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": x_test.numpy()})[0]
    assert float((logits.argmax(1) == y_test.numpy()).mean()) > 0.8  # a trained model, not a constant one
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["fedhaven.classes"]) == list(classes)


def test_safetensors_holds_the_weights_and_what_rebuilds_the_model(digits, tmp_path):
    from safetensors import safe_open

    _, _, x_test, _, classes, spec = digits
    cfg, weights = _trained("lenet", digits)
    export_model(run_dir=tmp_path, model_cfg=cfg, spec=spec, classes=classes, weights=weights)
    with safe_open(str(tmp_path / SAFETENSORS_FILE), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    rebuilt = build_model(cfg=parse(ModelConfig, json.loads(meta["fedhaven.model"])), spec=spec, dp=False).eval()
    rebuilt.load_state_dict(tensors, strict=True)
    original = build_model(cfg=cfg, spec=spec, dp=False).eval()
    set_weights(original, weights)
    with torch.no_grad():
        assert torch.equal(rebuilt(x_test), original(x_test))
    assert json.loads(meta["fedhaven.classes"]) == list(classes) and "127.5" in meta["fedhaven.preprocessing"]


def _release(tmp_path, digits, **kw):
    _, _, _, _, classes, spec = digits
    cfg, weights = _trained("lenet", digits)
    run = parse(RunConfig, {"model": {"name": "lenet"}, "rounds": 2, "dp": {"delta": 1e-5}})
    hist = [(1.1, 0.05, 20), (1.2, 0.05, 20)]
    eps = epsilon(history=PrivacyHistory().add(noise_multiplier=1.1, sample_rate=0.05, steps=20)
                  .add(noise_multiplier=1.2, sample_rate=0.05, steps=20), delta=1e-5)
    sites = {"hospital-a": SiteReport(site="hospital-a", num_examples=700, loss=0.3, accuracy=0.9, epsilon=eps,
                                      delta=1e-5, noise_multiplier=1.2, sample_rate=0.05, steps=20, total_steps=40)}
    base = dict(attempt=1, loss=0.5, epsilon_max=eps, epsilon_mean=eps, sites_ok=1, sites_failed=0, round_time_s=1,
                fit_time_s=1, eval_time_s=0, secure_aggregation=False)
    rounds = [RoundRecord(round=1, status="ok", accuracy=0.7, **base),
              RoundRecord(round=2, status="rejected", accuracy=None, rejected="update norm 9.1 above bound 2.0",
                          **base),
              RoundRecord(round=2, status="ok", accuracy=0.85, **{**base, "attempt": 2})]
    privacy = build_privacy_report(run=run, sites=sites, rounds=rounds, max_weight=None,
                                   histories={"hospital-a": hist}).data
    exports = write_release(run_dir=tmp_path, run=run, spec=spec, classes=classes, weights=weights, rounds=rounds,
                            privacy=privacy, **kw)
    return exports, eps


def test_the_model_card_states_accuracy_privacy_per_site_and_rejections(digits, tmp_path):
    (tmp_path / "explain").mkdir()
    (tmp_path / "explain" / "explain.json").write_text(json.dumps({"accuracy": 0.85, "ece": 0.031,
                                                                   "per_class_accuracy": {"0": 0.9, "1": 0.8}}))
    (tmp_path / "explain" / "attribution-0.png").write_bytes(b"\x89PNG")
    exports, eps = _release(tmp_path, digits)
    assert all(e.ok for e in exports)
    card = json.loads((tmp_path / CARD_JSON).read_text())
    assert card["evaluation"]["final"] == {"round": 2, "accuracy": 0.85, "loss": 0.5}
    site = card["privacy"]["sites"]["hospital-a"]
    assert math.isclose(site["epsilon"], eps) and site["history_complete"] is True
    recomputed = PrivacyHistory()
    for noise, rate, steps in site["history"]:
        recomputed = recomputed.add(noise_multiplier=noise, sample_rate=rate, steps=steps)
    assert math.isclose(epsilon(history=recomputed, delta=site["delta"]), site["epsilon"])  # recomputable
    assert card["robustness"]["rounds_rejected"][0]["reason"] == "update norm 9.1 above bound 2.0"
    assert card["robustness"]["settings"]["enabled"] is True
    assert card["files"]["onnx"]["ok"] and len(card["files"]["onnx"]["sha256"]) == 64
    assert card["data"]["sites"] == {"hospital-a": {"examples": 700}} and len(card["data"]["classes"]) == 10
    assert card["explanations"]["numbers"] == {"accuracy": 0.85, "ece": 0.031}
    assert card["explanations"]["images"] == ["explain/attribution-0.png"]
    md = (tmp_path / CARD_MD).read_text()
    assert markdown("hospital-a") in md and f"{eps:.4f}" in md and "update norm 9.1 above bound 2.0" in md
    assert "85.00%" in md and "(explain/explain.json)" in md and "](explain/attribution-0.png)" in md


def test_an_export_that_fails_is_said_and_the_rest_is_written(digits, tmp_path, monkeypatch, capfd):
    def broken(**_kw):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(export_mod, "onnx_bytes", broken)
    configure_logging()  # fedhaven's own lines on stderr, as in every command
    capfd.readouterr()
    exports, _ = _release(tmp_path, digits)
    err = capfd.readouterr().err
    by = {e.format: e for e in exports}
    assert not by["onnx"].ok and "exporter crashed" in by["onnx"].detail and by["safetensors"].ok
    assert not (tmp_path / ONNX_FILE).exists() and (tmp_path / SAFETENSORS_FILE).exists()
    assert "export: model.onnx NOT written (RuntimeError: exporter crashed)" in err
    assert "onnx: **NOT WRITTEN**: RuntimeError: exporter crashed" in (tmp_path / CARD_MD).read_text()
