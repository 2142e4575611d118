"""BENCHMARKS.md and the plots, written from the raw results JSON; says plainly which targets are met."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedhaven.shared.schema import DPConfig
from fedhaven.sim.bench import deploy_report, large_images, robustness

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _f(x: object, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _ok(flag: bool | None) -> str:
    return "not measured" if flag is None else ("**met**" if flag else "**not met**")


def _section_error(res: dict[str, Any], name: str) -> str | None:
    sec = res.get(name)
    if sec is None:
        return "not run in this mode"
    if isinstance(sec, dict) and "error" in sec:
        return f"failed: {sec['error']}"
    return None


def _bound_runs(res: dict[str, Any]) -> dict[str, list[float]]:
    """The default run's accuracies with [robust] on (the accuracy section's new IID epsilon-3 row: the shipped
    defaults) and off (`robust_bound`, the same experiment with robust.enabled=false)."""
    acc = res.get("accuracy") if not _section_error(res, "accuracy") else None
    row = accuracy_row(acc, recipe="new", partition="iid", eps=3.0)
    off = res.get("robust_bound") or {}
    return {"on": list(row["accuracies"]) if row else [], "off": list(off.get("accuracies", []))}


def targets(res: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    default = DPConfig().grad_sample_mode
    dp = res.get("dp") if not _section_error(res, "dp") else None
    ratio = next((r.get("ratio_to_plain") for r in dp["rows"] if r["mode"] == default), None) if dp else None
    rows.append(("DP epoch / plain epoch <= 1.5x (default engine)", _f(ratio, "{:.2f}x"),
                 _ok(None if ratio is None else ratio <= 1.5)))
    rows.append(("default engine is the fastest correct one", f"default {default}, fastest "
                 f"{dp['fastest_correct'] if dp else 'n/a'}",
                 _ok(None if not dp else dp["fastest_correct"] == default)))
    sa = res.get("secagg") if not _section_error(res, "secagg") else None
    r10 = next((r.get("ratio_to_plain") for r in sa if r["sites"] == 10 and r["secagg"]), None) if sa else None
    rows.append(("SecAgg+ round / plain round <= 1.5x at 10 sites", _f(r10, "{:.2f}x"),
                 _ok(None if r10 is None else r10 <= 1.5)))
    bl = res.get("baseline") if not _section_error(res, "baseline") else None
    wr = bl.get("wall_ratio") if bl else None
    rows.append(("fedhaven (DP + SecAgg+) no slower than plain Flower + Opacus", _f(wr, "{:.2f}x wall time"),
                 _ok(None if wr is None else wr <= 1.0)))
    acc = res.get("accuracy") if not _section_error(res, "accuracy") else None
    for part, eps, want in (("iid", 3.0, 0.98), ("iid", 1.0, 0.96), ("dirichlet:0.3", 3.0, 0.97)):
        row = accuracy_row(acc, recipe="new", partition=part, eps=eps)
        got = row["accuracy_mean"] if row else None
        label = "IID" if part == "iid" else "Dirichlet(0.3)"
        rows.append((f"MNIST 10 sites {label}: >= {want:.0%} at epsilon {eps:g} (mean of 3 runs)",
                     _f(got, "{:.2%}") + (f" (n={row['runs']})" if row else ""),
                     _ok(None if row is None or got is None or row["runs"] < 3 else got >= want)))
    aucs = [r["membership_auc_max"] for r in acc or [] if r.get("membership_auc_max") is not None]
    rows.append(("membership-inference AUC near 0.5 (every run <= 0.55)", _f(max(aucs) if aucs else None, "{:.3f} max"),
                 _ok(None if not aucs else max(aucs) <= 0.55)))
    sc = res.get("scale") if not _section_error(res, "scale") else None
    big = next((r for r in sc or [] if r["sites"] == 1000), None)
    rows.append(("1,000 simulated sites fit in 24 GiB", _f(big["peak_memory_mib"] / 1024 if big else None,
                                                           "{:.1f} GiB peak"),
                 _ok(None if not big else big["peak_memory_mib"] < 24 * 1024)))
    rows += deploy_report.target_rows(res.get("deployment") if not _section_error(res, "deployment") else None)
    rob = res.get("robustness") if not _section_error(res, "robustness") else None
    measured, met = robustness.target_met(rob) if rob else ("n/a", None)
    rows.append((f"one attacker (scale:1000, signflip) among 10 MNIST sites, defended: within "
                 f"{robustness.TARGET_POINTS:g} points of clean, SecAgg+ on and off", measured, _ok(met)))
    measured, met = robustness.bound_cost(**_bound_runs(res))
    rows.append((f"honest `make sim` with the default bound ([robust] on) within {robustness.BOUND_POINTS:g} "
                 "points of it without", measured, _ok(met)))
    return rows


def accuracy_row(rows: list[dict[str, Any]] | None, *, recipe: str, partition: str,
                 eps: float) -> dict[str, Any] | None:
    """The accuracy row of `recipe` for (`partition`, `eps`), if it was measured (rows of the 3-run format only)."""
    return next((r for r in rows or [] if r.get("recipe") == recipe and r["partition"] == partition
                 and float(r["target_epsilon"]) == eps and "accuracy_mean" in r), None)


def _acc_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "not run"
    return (f"{100 * row['accuracy_mean']:.2f}% ± {100 * row['accuracy_sd']:.2f} "
            f"({100 * row['accuracy_min']:.2f}-{100 * row['accuracy_max']:.2f}, n={row['runs']})")


@contextmanager
def _figure(path: Path, *, xlabel: str, ylabel: str, title: str, legend: bool = True) -> Iterator[Axes]:
    """Yield axes; label, lay out, save to `path` and close the figure afterwards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    try:
        yield ax
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        if legend:
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def _plots(res: dict[str, Any], data_dir: Path) -> list[str]:
    out = []
    if not _section_error(res, "dp"):
        rows = [r for r in res["dp"]["rows"] if "median_epoch_s" in r]
        with _figure(data_dir / "dp_cost.png", xlabel="engine", ylabel="seconds per local epoch",
                     title="DP-SGD engines vs plain torch (1 core)", legend=False) as ax:
            ax.bar([r["mode"] for r in rows], [r["median_epoch_s"] for r in rows], color="C0")
        out.append("dp_cost.png")
    if not _section_error(res, "secagg"):
        with _figure(data_dir / "secagg.png", xlabel="sites", ylabel="steady-state round time (s)",
                     title="Secure aggregation cost") as ax:
            for flag, label in ((False, "plain FedAvg"), (True, "SecAgg+")):
                rows = [r for r in res["secagg"] if r["secagg"] == flag]
                ax.plot([r["sites"] for r in rows], [r["steady_round_s"] for r in rows], "o-", label=label)
        out.append("secagg.png")
    if not _section_error(res, "accuracy"):
        with _figure(data_dir / "accuracy.png", xlabel="epsilon per site (delta 1e-5)", ylabel="test accuracy (%)",
                     title="MNIST, 10 sites (mean and spread of 3 runs)") as ax:
            for rec in ("new", "old"):
                for part in sorted({r["partition"] for r in res["accuracy"] if r.get("recipe") == rec}):
                    rows = sorted((r for r in res["accuracy"] if r.get("recipe") == rec and r["partition"] == part
                                   and "accuracy_mean" in r), key=lambda r: r["target_epsilon"])
                    ax.errorbar([r["target_epsilon"] for r in rows], [100 * r["accuracy_mean"] for r in rows],
                                yerr=[100 * r["accuracy_sd"] for r in rows], fmt="o-" if rec == "new" else "s:",
                                capsize=3, label=f"{rec}, {part}")
            ax.plot([1.2, 3, 7], [94.8, 96.8, 97.1], "k^--", label="published, centralised")
        out.append("accuracy.png")
    if not _section_error(res, "baseline"):
        with _figure(data_dir / "baseline.png", xlabel="seconds since the first round started",
                     ylabel="test accuracy (%)", title="Same task, side by side") as ax:
            for key, label in (("fedhaven", "fedhaven (DP + SecAgg+)"), ("flower_baseline", "Flower + Opacus")):
                r = res["baseline"][key]
                t = [sum(r["round_s"][: i + 1]) for i in range(len(r["round_s"]))]
                ax.plot(t, [100 * a for a in r["accuracy_per_round"]], "o-", label=label)
        out.append("baseline.png")
    return out


def _earlier_sections(res: dict[str, Any]) -> list[str]:
    """Sections kept from an earlier `--only` invocation, named with when and at which commit they ran."""
    runs = res.get("section_runs", {})
    older = {k: v for k, v in runs.items() if (v["date"], v["commit"]) != (res["date"], res["machine"].get("commit"))}
    if not older:
        return []
    said = "; ".join(f"{k} on {v['date']} at commit `{v['commit']}`" for k, v in older.items())
    return [f"Sections kept from an earlier invocation (`--only` reran the others): {said}. Ratios inside each "
            "section were still measured side by side.", ""]


def write_report(*, results: dict[str, Any], out: Path, data_dir: Path) -> Path:
    res = results
    m = res["machine"]
    plots = _plots(res, data_dir)
    rel = data_dir.relative_to(out) if data_dir.is_relative_to(out) else data_dir
    L = ["# fedhaven benchmarks", "",
         f"Generated by `{res['command']}` ({res['mode']} mode) on {res['date']}, commit `{m.get('commit')}`. "
         "Figures are medians measured side by side in this one run on a shared machine; compare ratios, not "
         "absolute seconds. Raw numbers: "
         f"[`{rel}/results-{res['mode']}.json`]({rel}/results-{res['mode']}.json).", "",
         *_earlier_sections(res),
         f"**Machine:** {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, CUDA: {m['cuda']}; Python "
         f"{m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".", "",
         "## Targets", "", "| target | measured | |", "|---|---|---|"]
    L += [f"| {a} | {b} | {c} |" for a, b, c in targets(res)]
    if not _section_error(res, "large_images"):
        L += [f"| {a} | {b} | {_ok(c)} |" for a, b, c in large_images.targets(res["large_images"])]

    L += ["", "## 1. DP-SGD cost per local epoch", ""]
    err = _section_error(res, "dp")
    if err:
        L.append(err)
    else:
        d = res["dp"]
        L += [f"LeNet on {d['examples']} MNIST images (one site), expected batch {d['batch_size']}, one core, "
              f"{d['epochs']} epochs each after a warm-up, each engine in its own process.", "",
              "| engine | s / epoch | vs plain | peak RSS (MiB) | max weight diff vs hooks after one step |",
              "|---|---|---|---|---|"]
        for r in d["rows"]:
            if "median_epoch_s" not in r:
                L.append(f"| {r['mode']} | failed: {r.get('error')} | | | |")
                continue
            L.append(f"| {r['mode']} | {r['median_epoch_s']:.2f} | {_f(r.get('ratio_to_plain'), '{:.2f}x')} | "
                     f"{r['peak_rss_mib']:.0f} | {_f(r['max_abs_diff_vs_hooks'], '{:.1e}')} |")
        L += ["", f"Fastest correct engine: **{d['fastest_correct']}** (fedhaven's default: "
              f"{DPConfig().grad_sample_mode})."]

    L += ["", "## 2. Secure aggregation cost", ""]
    err = _section_error(res, "secagg")
    if err:
        L.append(err)
    else:
        L += ["Simulated MNIST federation (sites share the 60,000 images), steady-state round = median of rounds "
              "after the first.", "", "| sites | SecAgg+ | round (s) | fit (s) | eval (s) | sum of site training (s) "
              "| SecAgg+ / plain |", "|---|---|---|---|---|---|---|"]
        for r in res["secagg"]:
            L.append(f"| {r['sites']} | {'yes' if r['secagg'] else 'no'} | {_f(r['steady_round_s'])} | "
                     f"{_f(r['steady_fit_s'])} | {_f(r['steady_eval_s'])} | {_f(r['steady_site_train_s'])} | "
                     f"{_f(r.get('ratio_to_plain'), '{:.2f}x')} |")
    err = _section_error(res, "masking")
    L += ["", "Client-side masking (Flower's SecAgg+ arithmetic: quantise, private mask, 4 pairwise masks, modulus):",
          ""]
    if err:
        L.append(err)
    else:
        L += ["| parameters | seconds |", "|---|---|"]
        L += [f"| {r['parameters']:,} | {r['median_s']:.3f} |" for r in res["masking"]]

    L += ["", "## 3. Framework overhead", ""]
    if _section_error(res, "secagg"):
        L.append(_section_error(res, "secagg") or "")
    else:
        cores = m["cores"] or 1
        L += ["Share of a steady-state round not spent in the sites' local training (spread over the cores) or "
              "the coordinator's evaluation:", "", "| sites | SecAgg+ | round (s) | training / cores (s) | eval (s) | "
              "overhead (s) | overhead share |", "|---|---|---|---|---|---|---|"]
        for r in res["secagg"]:
            if r["steady_round_s"] is None:
                continue
            train = (r["steady_site_train_s"] or 0) / cores
            over = r["steady_round_s"] - train - (r["steady_eval_s"] or 0)
            L.append(f"| {r['sites']} | {'yes' if r['secagg'] else 'no'} | {r['steady_round_s']:.2f} | {train:.2f} | "
                     f"{_f(r['steady_eval_s'])} | {over:.2f} | {over / r['steady_round_s']:.0%} |")
        L += ["", "Where it goes: the first round also starts Ray and its workers (see `first_round_s` in the "
              "JSON); each SecAgg+ round adds three message round trips through Flower's simulation engine "
              "(setup, share keys, unmask) to the one that trains; weights are serialised once per message. "
              "Fixed on our side: every simulated site's data and model are loaded once per worker process and "
              "kept (not per round or message), and the SecAgg+ key-exchange stages import no torch."]

    L += ["", "## 4. Side by side with a plain Flower app", ""]
    err = _section_error(res, "baseline")
    if err:
        L.append(err)
    else:
        b = res["baseline"]
        ours, theirs = b["fedhaven"], b["flower_baseline"]
        L += [f"Same 10-site IID MNIST split, LeNet, noise multiplier {b['noise_multiplier']:.3f}, clipping 1.0, "
              f"expected batch 512, {b['rounds']} rounds, one core per site. The baseline is the message-API "
              "FedAvg with Opacus' `PrivacyEngine` on a DataLoader, as in Flower's documentation, without "
              "SecAgg+.", "", "| | wall (s) | steady round (s) | final accuracy | peak memory (MiB) |",
              "|---|---|---|---|---|",
              f"| fedhaven (DP + SecAgg+) | {ours['wall_s']:.1f} | {_f(ours['steady_round_s'])} | "
              f"{_f(ours['accuracy'], '{:.2%}')} | {ours['peak_memory_mib']:.0f} |",
              f"| Flower + Opacus | {theirs['wall_s']:.1f} | {_f(theirs['steady_round_s'])} | "
              f"{_f(theirs['accuracy'], '{:.2%}')} | {theirs['peak_memory_mib']:.0f} |", "",
              f"Ratio fedhaven / baseline: wall {b['wall_ratio']:.2f}x, steady round "
              f"{_f(b['steady_round_ratio'], '{:.2f}x')}."]

    L += ["", "## 5. Accuracy against privacy", ""]
    err = _section_error(res, "accuracy")
    if err:
        L.append(err + " (`make bench` runs it: 36 simulations; `python -m fedhaven.sim.bench.accuracy` row by row).")
    else:
        from fedhaven.sim.bench.accuracy import RECIPE_NAMES

        rows = res["accuracy"]
        L += ["MNIST, 10 sites, DP + SecAgg+, every site's epsilon at most the target (delta 1e-5). Each cell is the "
              "mean ± standard deviation (min-max, n runs) of full `fl-sim` runs; the DP noise differs in every run. "
              f"**new**: {RECIPE_NAMES['new']} (the bundled `mnist` experiment: scattering front end, pointwise head, "
              "hyperparameters from `fedhaven.shared.recipe`); **old**: " + RECIPE_NAMES["old"] + ". Published "
              "centralised DP-SGD, small CNN: 98.9% without DP, 97.1% at eps ~7, 96.8% at eps ~3, 94.6-95.0% at "
              "eps ~1.2.", "",
              "| partition | target epsilon | new recipe | old recipe | max site epsilon (new / old) | "
              "membership-inference AUC, mean (new / old) |", "|---|---|---|---|---|---|"]
        keys = sorted({(r["partition"], float(r["target_epsilon"])) for r in rows if "accuracy_mean" in r},
                      key=lambda k: (k[0] != "iid", k[0], k[1]))
        for part, eps in keys:
            new_r = accuracy_row(rows, recipe="new", partition=part, eps=eps)
            old_r = accuracy_row(rows, recipe="old", partition=part, eps=eps)
            L.append(f"| {part} | {eps:g} | {_acc_cell(new_r)} | {_acc_cell(old_r)} | "
                     f"{_f(new_r and new_r['epsilon_max'], '{:.3f}')} / {_f(old_r and old_r['epsilon_max'], '{:.3f}')}"
                     f" | {_f(new_r and new_r['membership_auc_mean'], '{:.3f}')} / "
                     f"{_f(old_r and old_r['membership_auc_mean'], '{:.3f}')} |")
        cmds = sorted({" ".join(r["overrides"]) for r in rows if "overrides" in r})
        L += ["", "Each row ran `fl-sim run mnist` with these overrides (mean of the runs): "
              + "; ".join(f"`{c}`" for c in cmds) + "."]

    L += ["", "## 6. Scale", ""]
    err = _section_error(res, "scale")
    if err:
        L.append(err)
    else:
        L += ["MNIST split across N simulated sites, 10% sampled per round, SecAgg+ (5 shares) and DP on; peak "
              "memory is the proportional set size of the whole process tree (driver, Ray, workers).", "",
              "| sites | sampled / round | steady round (s) | first round (s) | peak memory (GiB) |",
              "|---|---|---|---|---|"]
        L += [f"| {r['sites']} | {r['sampled_per_round']} | {_f(r['steady_round_s'])} | {_f(r['first_round_s'])} | "
              f"{r['peak_memory_mib'] / 1024:.2f} |" for r in res["scale"]]
        per_site = ", ".join(f"{r['steady_round_s'] / r['sampled_per_round']:.2f} s at {r['sites']} sites"
                             for r in res["scale"])
        L += ["", f"Round time grows with the sites sampled per round (per sampled site: {per_site}): each sampled "
              "site is four SecAgg+ messages through Ray, and a site new to a worker builds its trainer there. "
              "Memory barely grows: Ray keeps one worker per core, sites share one loaded dataset per worker, and "
              "the per-site trainers a worker keeps are small (the model and a slice of that dataset)."]

    L += ["", "## 7. Deployed: fedhaven against Flower on loopback", ""]
    err = _section_error(res, "deployment")
    L += [err] if err else deploy_report.section(res["deployment"])
    L += ["", "Raw events (every timestamp the breakdown comes from): "
          f"[`{rel}/results-deploy.json`]({rel}/results-deploy.json)."] if not err else []

    L += ["", "## 8. Robustness against a bad site", ""]
    err = _section_error(res, "robustness")
    L += [err + " (`make bench` runs it: 44 five-round simulations)."] if err else robustness.section(res["robustness"])
    measured, met = robustness.bound_cost(**_bound_runs(res))
    L += ["", "The honest default run (`make sim`: 40 rounds, epsilon 3) with the default bound (`[robust]` on, "
          "as shipped: the accuracy section's new IID epsilon-3 row) and without it (`robust.enabled=false`, "
          f"seeds 0-2): {measured}; target: a drop of at most {robustness.BOUND_POINTS:g} points, "
          + ("**met**." if met else "**not met**." if met is False else "not measured.")]

    L += ["", "## 9. Large images", ""]
    err = _section_error(res, "large_images")
    L += [err + " (`make bench` runs it)."] if err else large_images.section(res["large_images"])

    if plots:
        L += ["", "## Plots", ""] + [f"![{p}]({rel}/{p})" for p in plots]
    gpu = out / "simulations" / "benchmarks" / "gpu.json"
    if gpu.exists():
        L += ["", "## GPU figures", "", f"See [`{rel}/gpu.json`]({rel}/gpu.json)."]
    else:
        L += ["", "## GPU figures", "", "None yet: no GPU was lent to the sessions that ran these benchmarks."]
    path = out / "BENCHMARKS.md"
    path.write_text("\n".join(L) + "\n")
    return path
