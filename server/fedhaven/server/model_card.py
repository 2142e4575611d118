"""The model card of a finished run (MODEL_CARD.md for people, model_card.json for machines): data, model,
accuracy, each site's privacy guarantee with the numbers to recompute it, robustness and what was rejected."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fedhaven.server.export import ONNX_FILE, PREPROCESSING, Exported, export_model
from fedhaven.server.privacy_report import RECOMPUTE_ROW, format_epsilon
from fedhaven.server.records import RoundRecord, finite_or_none
from fedhaven.shared.config import to_dict
from fedhaven.shared.files import write_atomic
from fedhaven.shared.models import InputSpec, build_model, split_front
from fedhaven.shared.schema import RunConfig
from fedhaven.shared.text import markdown

log = logging.getLogger("fedhaven.server")

CARD_MD, CARD_JSON = "MODEL_CARD.md", "model_card.json"
EXPLAIN = Path("explain") / "explain.json"


def _front_text(run: RunConfig, spec: InputSpec) -> tuple[int, str | None]:
    """(trained parameters, what the fixed front end is, or None)."""
    model = build_model(cfg=run.model, spec=spec, dp=False)
    front, head = split_front(model)
    trainable = sum(p.numel() for p in head.parameters())
    if front is None:
        return trainable, None
    from fedhaven.shared.scattering import front_plan

    m = run.model
    work, J = front_plan(spec.image_size, J=m.scattering_j, size=m.front_size)
    resized = f"images averaged down to {work} x {work}, then " if work != spec.image_size else ""
    return trainable, (f"{resized}a fixed Morlet scattering transform (J = {J} scales, L = {m.scattering_l} "
                                  f"orientations) and per-example normalisation: no parameters, never trained, the "
                                  f"same for every site; in {ONNX_FILE} it is written as real matrix products "
                                  f"(DFT matrices) that compute the same numbers as torch's FFT")


def explanations(run_dir: Path) -> dict[str, Any] | None:
    """What RUN_DIR/explain/explain.json holds, summarised: its path, its numbers at the top level, per-class
    accuracy when present, and the images beside it. None when there is none; a file that cannot be read says so."""
    path = run_dir / EXPLAIN
    if not path.exists():
        return None
    out: dict[str, Any] = {"file": str(EXPLAIN), "images": sorted(str(p.relative_to(run_dir))
                                                                   for p in path.parent.rglob("*.png"))}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {**out, "error": f"unreadable: {exc}"}
    if not isinstance(data, dict):
        return {**out, "error": "not a JSON object"}
    out["numbers"] = {k: v for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    for key in ("per_class_accuracy", "per_class"):
        if isinstance(data.get(key), dict):
            out["per_class_accuracy"] = data[key]
            break
    out["sections"] = sorted(k for k, v in data.items() if isinstance(v, dict | list))
    return out


def build_model_card(*, run_dir: Path, run: RunConfig, spec: InputSpec, classes: Sequence[str],
                     rounds: Sequence[RoundRecord], privacy: dict[str, Any],
                     exports: Sequence[Exported]) -> dict[str, Any]:
    """The card's content (model_card.json): every number in it comes from the run's own records."""
    trainable, front = _front_text(run, spec)
    ok = [r for r in rounds if r.status == "ok"]
    last = ok[-1] if ok else None
    accs = [r for r in ok if r.accuracy is not None and math.isfinite(r.accuracy)]
    best = max(accs, key=lambda r: r.accuracy or 0.0) if accs else None
    sites = privacy.get("sites", {})
    return {
        "format": "fedhaven model card v1",
        "run_dir": str(run_dir),
        "data": {"source": run.data.source, "path": run.data.path, "test_path": run.data.test_path,
                 "classes": list(classes), "input": asdict(spec),
                 "sites": {n: {"examples": s.get("num_examples")} for n, s in sites.items()},
                 "training_examples": sum(s.get("num_examples") or 0 for s in sites.values()),
                 "note": "each site's data stayed on its premises; the counts are what each site reported"},
        "model": {"name": run.model.name, "config": to_dict(run.model), "trainable_parameters": trainable,
                  "fixed_front_end": front, "output": "logits, one per class, in the order of "
                  "data.classes", "preprocessing": PREPROCESSING,
                  "training": {"rounds_planned": run.rounds, "rounds_completed": privacy.get("rounds_completed"),
                               "strategy": run.strategy.name, "local": to_dict(run.train), "seed": run.seed}},
        "evaluation": {"set": "the coordinator's held-out test set (never seen by a site)",
                       "final": {"round": last.round, "accuracy": finite_or_none(last.accuracy),
                                 "loss": finite_or_none(last.loss)} if last else None,
                       "best": {"round": best.round, "accuracy": finite_or_none(best.accuracy)} if best else None,
                       "rounds": [{"round": r.round, "status": r.status, "accuracy": finite_or_none(r.accuracy),
                                   "loss": finite_or_none(r.loss), "epsilon_max": finite_or_none(r.epsilon_max)}
                                  for r in rounds]},
        "privacy": {"private": privacy.get("private"), "epsilon_max": privacy.get("epsilon_max"),
                    "local_dp": privacy.get("local_dp"), "central_dp": privacy.get("central_dp"),
                    "secure_aggregation": {k: v for k, v in privacy.get("secure_aggregation", {}).items()
                                           if k != "clear_text"},
                    "sites": {n: {k: s.get(k) for k in ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps",
                                                         "bounded", "history", "history_complete")}
                              for n, s in sites.items()},
                    "recompute": privacy.get("recompute"), "report": "privacy.json, privacy.md"},
        "robustness": {"settings": to_dict(run.robust), "rounds_rejected": privacy.get("rounds_rejected", []),
                       "attempts_without_aggregate": privacy.get("attempts_without_aggregate", []),
                       "site_failures": privacy.get("site_failures", [])},
        "files": {e.format: asdict(e) for e in exports},
        "explanations": explanations(run_dir),
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def card_markdown(card: dict[str, Any]) -> str:
    """MODEL_CARD.md from the card's content."""
    d, m, ev, p, rb = card["data"], card["model"], card["evaluation"], card["privacy"], card["robustness"]
    spec = d["input"]
    # the settings the model uses (ModelConfig holds every model's)
    shown = ("activation", "norm") if m["name"] != "scatternet" else (
        "head", "width", "activation", "scattering_j", "scattering_l", "front_size", "feature_groups")
    lines = ["# Model card", "", f"Run: `{card['run_dir']}`", "", "## Model", "",
             f"`{m['name']}` ({', '.join(f'{k} {v}' for k, v in m['config'].items() if k in shown)}): "
             f"{m['trainable_parameters']:,} trained parameters. Input: {spec['channels']} x {spec['image_size']} x "
             f"{spec['image_size']} images, {m['preprocessing']}. Output: {m['output']}."]
    if m["fixed_front_end"]:
        lines += ["", f"Front end: {m['fixed_front_end']}."]
    t = m["training"]
    per_site = ", ".join(f"{markdown(n)} {s['examples']}" for n, s in d["sites"].items())
    lines += ["", f"Trained federated ({t['strategy']}) for {t['rounds_completed']} of {t['rounds_planned']} planned "
              f"round(s), seed {t['seed']}.", "", "## Data", "",
              f"Source: {d['source']}" + (f" (`{markdown(str(d['path']))}`)" if d["path"] else "")
              + f"; {len(d['classes'])} classes: {', '.join(markdown(c) for c in d['classes'])}.",
              f"{d['training_examples']} training examples over {len(d['sites'])} site(s) "
              f"({per_site}); {d['note']}.",
              "", "## Accuracy", "", f"On {ev['set']}:", ""]
    if ev["final"]:
        lines.append(f"final (round {ev['final']['round']}): **{_pct(ev['final']['accuracy'])}**"
                     + (f", best {_pct(ev['best']['accuracy'])} (round {ev['best']['round']})" if ev["best"] else ""))
    else:
        lines.append("no round was evaluated.")
    lines += ["", "| round | status | accuracy | loss | max epsilon |", "|---|---|---|---|---|"]
    for r in ev["rounds"]:
        loss = "-" if r["loss"] is None else f"{r['loss']:.4f}"
        lines.append(f"| {r['round']} | {r['status']} | {_pct(r['accuracy'])} | {loss} | "
                     f"{format_epsilon(r['epsilon_max']) if r['status'] != 'initial' else '0'} |")
    dp = p["local_dp"] or {}
    lines += ["", "## Privacy guarantee, per site", ""]
    if p["private"]:
        lines.append(f"Record-level differential privacy at each site (DP-SGD, {dp.get('accountant')} accountant, "
                     f"clipping norm {dp.get('max_grad_norm')}); largest epsilon **{format_epsilon(p['epsilon_max'])}"
                     f"** at delta {dp.get('delta')}.")
    else:
        lines.append("**NOT PRIVATE**: epsilon is infinite; no record-level guarantee holds for this model.")
    lines += ["", "| site | epsilon | delta | noise multiplier | sample rate | steps |", "|---|---|---|---|---|---|"]
    for name, s in p["sites"].items():
        eps = format_epsilon(s["epsilon"]) + (" (bound)" if s.get("bounded") else "")
        cells = [("{:g}", s["delta"]), ("{:.6g}", s["noise_multiplier"]), ("{:.6g}", s["sample_rate"]),
                 ("{}", s["steps"])]
        lines.append(f"| {markdown(name)} | {eps} | " + " | ".join("?" if v is None else f.format(v) for f, v in cells)
                     + " |")
    rec = p.get("recompute") or {}
    lines += ["", "Recompute a site's epsilon from its (noise, sample rate, steps) rows in model_card.json or "
              "privacy.json:", "", f"    {RECOMPUTE_ROW}", "", f"or at the site, from its own ledger: "
              f"`{rec.get('from_ledger', '')}`.", ""]
    c = p.get("central_dp") or {}
    if c.get("enabled"):
        lines.append(f"Central (client-level) DP on the aggregate: epsilon {format_epsilon(c.get('epsilon'))} at "
                     f"delta {c.get('delta')}, noise multiplier {c.get('noise_multiplier')}.")
    sa = p["secure_aggregation"]
    lines += [f"Secure aggregation: {'SecAgg+ (the coordinator saw only sums)' if sa.get('enabled') else 'OFF'}. "
              f"Full report: {p['report']}.", "", "## Robustness", ""]
    st = rb["settings"]
    lines.append(("[robust] guard ON: " + ", ".join(f"{k} {v}" for k, v in st.items() if k != "enabled"))
                 if st.get("enabled") else "[robust] guard OFF: no update was checked or bounded.")
    lines += ["", f"Rounds rejected: {len(rb['rounds_rejected'])}.", ""]
    lines += [f"- round {r['round']}: {markdown(str(r['reason']))}" for r in rb["rounds_rejected"]]
    lines += ["", f"Attempts without an aggregate: {len(rb['attempts_without_aggregate'])}; site failures and "
              f"refusals: {len(rb['site_failures'])}.", ""]
    lines += [f"- round {r['round']}: {markdown(str(r['reason']))}" for r in rb["site_failures"][:20]]
    lines += ["", "## Files", ""]
    for fmt, e in card["files"].items():
        lines.append(f"- `{e['file']}` ({fmt}, sha256 `{e['sha256']}`): {e['detail']}" if e["ok"]
                     else f"- {fmt}: **NOT WRITTEN**: {markdown(e['detail'])}")
    ex = card["explanations"]
    lines += ["", "## Explanations", ""]
    if ex is None:
        lines.append("None were made for this run (`explain/explain.json` is absent).")
    elif "error" in ex:
        lines.append(f"[{ex['file']}]({ex['file']}): {markdown(ex['error'])}")
    else:
        lines.append(f"[{ex['file']}]({ex['file']})" + (": " + ", ".join(f"{markdown(k)} {v:.4g}" for k, v in
                                                                      ex["numbers"].items()) if ex["numbers"] else ""))
        if ex.get("per_class_accuracy"):
            lines.append("")
            lines.append("Per-class accuracy: " + ", ".join(
                f"{markdown(str(k))} {_pct(v) if isinstance(v, float) else v}"
                for k, v in ex["per_class_accuracy"].items()))
        lines += ["", *[f"![{Path(i).stem}]({i})" for i in ex["images"]]]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).rstrip("\n") + "\n"


def write_model_card(*, run_dir: Path, card: dict[str, Any]) -> tuple[Path, Path]:
    j, md = run_dir / CARD_JSON, run_dir / CARD_MD
    write_atomic(j, json.dumps(card, indent=2, default=str).encode())
    write_atomic(md, card_markdown(card).encode())
    return j, md


def write_release(*, run_dir: Path, run: RunConfig, spec: InputSpec, classes: Sequence[str],
                  weights: Sequence[np.ndarray], rounds: Sequence[RoundRecord],
                  privacy: dict[str, Any]) -> list[Exported]:
    """What a finished run hands over beside model.pt: model.safetensors, model.onnx and the model card. Never raises:
    whatever cannot be written is one error line (and, for a model file, a line in the card)."""
    exports = export_model(run_dir=run_dir, model_cfg=run.model, spec=spec, classes=classes, weights=weights,
                           seed=run.seed)
    try:
        write_model_card(run_dir=run_dir, card=build_model_card(run_dir=run_dir, run=run, spec=spec, classes=classes,
                                                                rounds=rounds, privacy=privacy, exports=exports))
    except Exception as exc:  # noqa: BLE001 - the card is reported missing, never fatal to a trained run
        log.error("model card NOT written (%s: %s); the model and privacy report are unaffected",
                  type(exc).__name__, exc)
    return exports
