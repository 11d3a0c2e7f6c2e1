"""Write docs/claims.md from the MLflow store: one table and one picture per preset sweep.

    python -m fvexp.tools.claims [--store sqlite:///outputs/mlflow.db] [--out docs]

For each preset (`fvexp experiment=NAME`) the latest finished sweep is read back from MLflow;
its runs' metrics become a Markdown table (runs of the same arm, e.g. one per class, averaged)
and their images a labelled strip. Each preset's claim from the article is then checked against
those numbers and reported as reproduced or not, with the numbers: nothing in the document is
typed by hand. The demo photos' own high-frequency energy and spectral slope stand beside the
tables, so "how far from natural" is read at a glance; the objective of every arm per step is
drawn in one plot per preset, also logged to the sweep's parent run.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from fvexp.optvis.data import open_image
from fvexp.optvis.images import contact_sheet
from fvexp.optvis.metrics import high_frequency_energy, smoothed, spectral_slope, steps_to_value
from fvexp.tools.arguments import add_store, one_line_errors
from fvexp.tracking.store import PARENT, find_parent, reader

COLUMNS = {"objective_untransformed": "objective", "objective_transformed": "objective, transformed",
           "high_frequency_energy": "HF energy", "spectral_slope": "spectral slope", "total_variation": "TV",
           "gram_cosine": "Gram cosine", "steps_to_90pct": "steps to 90 % (own final)",
           "steps_to_common": "steps to 90 % of the best arm's final", "interpretability": "interpretability",
           "interpretability.examples": "interp., examples", "interpretability.random": "interp., random",
           "transfer.top5": "transfer top-5", "transfer.prob": "transfer prob."}
TRANSFER = ("lite1", "lite2")  # the held-out networks averaged into transfer.top5 / transfer.prob
NATURAL = "natural photos (demo)"  # the table row of the demo photos' own statistics
SAME_OBJECTIVE = {"preconditioning"}  # presets whose arms log the same objective per step: one target for all
Table = dict[str, dict[str, float]]  # arm -> metric -> value


def claim_enemy(t: Table) -> tuple[bool, str]:
    ratio = t["naive"]["high_frequency_energy"] / t["full"]["high_frequency_energy"]
    return ratio >= 2, (f"pixel-with-nothing has {ratio:.1f}× the high-frequency energy of the full recipe "
                        f"({t['naive']['high_frequency_energy']:.3f} vs {t['full']['high_frequency_energy']:.3f}; "
                        f"natural photos {natural(t)})")


def claim_regularization(t: Table) -> tuple[bool, str]:
    base = t["naive"]["high_frequency_energy"]
    arms = [arm for arm in t if arm not in ("naive", NATURAL)]
    lower = [arm for arm in arms if t[arm]["high_frequency_energy"] < base]
    return len(lower) == len(arms), (f"{len(lower)} of {len(arms)} regularizers lower the high-frequency energy "
                                     f"below no regularization ({base:.3f}): {', '.join(lower) or 'none'}; natural "
                                     f"photos {natural(t)}")


def natural(t: Table) -> str:
    row = t[NATURAL]
    return f"{row['high_frequency_energy']:.3f} with slope {row['spectral_slope']:.2f}"


def claim_preconditioning(t: Table) -> tuple[bool, str]:
    fast, slow = t["fourier_decorrelated"]["steps_to_common"], t["pixel"]["steps_to_common"]
    said = {arm: "never" if math.isnan(steps) else f"in {steps:.0f} steps" for arm, steps in
            (("fourier_decorrelated", fast), ("pixel", slow))}
    holds = not math.isnan(fast) and (math.isnan(slow) or fast <= 0.5 * slow)
    return holds, (f"against one target for all arms (90 % of the best arm's final objective), decorrelated "
                   f"Fourier reaches it {said['fourier_decorrelated']}, pixel {said['pixel']}")


def claim_diversity(t: Table) -> tuple[bool, str]:
    without, with_ = (t[arm]["gram_cosine"] for arm in sorted((arm for arm in t if arm != NATURAL), key=float))
    return with_ < without, f"mean Gram cosine {with_:.3f} with the diversity term vs {without:.3f} without"


def claim_logits(t: Table) -> tuple[bool, str]:
    logit, prob = t["class_logit"], t["class_prob"]
    numbers = (f"held-out networks ({', '.join(TRANSFER)}) put the class in their top 5 for "
               f"{logit['transfer.top5']:.0%} of the logit objective's images and {prob['transfer.top5']:.0%} of the "
               f"probability's, with mean probability {logit['transfer.prob']:.3f} vs {prob['transfer.prob']:.3f}, "
               f"over {logit['runs']:.0f} classes")
    if "class_logsumexp" in t:
        lse = t["class_logsumexp"]
        numbers += f" (LogSumExp: {lse['transfer.top5']:.0%}, {lse['transfer.prob']:.3f})"
    return (logit["transfer.top5"], logit["transfer.prob"]) >= (prob["transfer.top5"], prob["transfer.prob"]), numbers


def claim_priors(t: Table) -> tuple[bool, str]:
    base, slope = t["no_prior"], t[NATURAL]["spectral_slope"]
    arms = [arm for arm in t if arm not in ("no_prior", NATURAL)]
    natural_ = [arm for arm in arms if t[arm]["high_frequency_energy"] < base["high_frequency_energy"]
                and abs(t[arm]["spectral_slope"] - slope) < abs(base["spectral_slope"] - slope)
                and t[arm]["objective_untransformed"] >= 0.5 * base["objective_untransformed"]]
    described = "; ".join(f"{arm} {t[arm]['high_frequency_energy']:.3f} / {t[arm]['spectral_slope']:.2f} / "
                          f"{t[arm]['objective_untransformed'] / base['objective_untransformed']:.2f}" for arm in arms)
    return len(natural_) == len(arms), (
        f"{len(natural_)} of {len(arms)} prior arms have less high-frequency energy than no prior, a spectral slope "
        f"closer to the photos' and at least half its objective (HF energy / slope / objective ÷ no prior's: "
        f"{described}; no prior {base['high_frequency_energy']:.3f} / {base['spectral_slope']:.2f}; natural photos "
        f"{natural(t)})")


PRESETS: dict[str, tuple[str, Callable[[Table], tuple[bool, str]] | None]] = {
    "enemy": ("Without regularization, optimization finds high-frequency patterns (the enemy).", claim_enemy),
    "regularization": ("Frequency penalties and transformation robustness reduce high frequencies.",
                       claim_regularization),
    "preconditioning": ("A decorrelated Fourier basis reaches a good objective in far fewer steps.",
                        claim_preconditioning),
    "diversity": ("A diversity term makes the images of a batch differ.", claim_diversity),
    "interaction": ("Neurons combine by arithmetic, interpolation and directions.", None),
    "logits": ("Class logits give better images than class probabilities.", claim_logits),
    "priors": ("Learned priors (the third family of regularization) give images natural statistics while still "
               "driving the unit.", claim_priors),
    "distill": ("The article's recipe: 2560 steps of Adam in decorrelated Fourier space with its transforms.", None),
}


def arm(run) -> str:
    """What distinguishes a run within its sweep: its ablation, else its first non-preset override."""
    if run.data.tags.get("fvexp.ablation"):
        return run.data.tags["fvexp.ablation"]
    overrides = [o for o in run.data.tags.get("overrides", "").split() if not o.startswith("experiment=")]
    return overrides[0].split("=", 1)[1] if overrides else run.info.run_name


def latest_sweep(client, preset: str) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = [r for r in client.search_runs(experiments,
                                          f"tags.`fvexp.experiment` = '{preset}' and attributes.status = 'FINISHED'",
                                          order_by=["attributes.start_time DESC"], max_results=1000)
            if r.data.tags.get("fvexp.role") != PARENT]
    if not runs:
        return []
    sweep = runs[0].data.tags.get("fvexp.sweep")
    return sorted((r for r in runs if r.data.tags.get("fvexp.sweep") == sweep), key=lambda r: r.info.start_time)


def table_of(client, runs: list, natural_row: dict[str, float],
             common_target: bool) -> tuple[Table, dict[str, list[list[float]]]]:
    """Per arm, the mean of its runs' metrics (and `runs`, their count); and each run's objective per step.

    `steps_to_common` is measured against one target for every arm: 90 % of the best arm's final
    objective (smoothed), so a fast arm that settles lower is not counted as fast. NaN: never reached.
    Only where every arm optimizes the same objective (`common_target`): penalties and transforms
    change the logged value, so a common target across them means nothing.
    """
    curves: dict[str, list[list[float]]] = {}
    grouped: dict[str, list[dict[str, float]]] = {}
    for run in runs:
        metrics = dict(run.data.metrics)
        for key in ("top5", "prob"):
            found = [metrics[f"transferability.{n}.{key}"] for n in TRANSFER if f"transferability.{n}.{key}" in metrics]
            if found:
                metrics[f"transfer.{key}"] = sum(found) / len(found)
        grouped.setdefault(arm(run), []).append(metrics)
        curves.setdefault(arm(run), []).append([m.value for m in sorted(
            client.get_metric_history(run.info.run_id, "objective"), key=lambda m: m.step)])
    finals = [smoothed(c)[-1].item() for runs_of_arm in curves.values() for c in runs_of_arm if c]
    target = 0.9 * max(finals) if finals and max(finals) > 0 else math.nan
    table: Table = {}
    for name, rows in grouped.items():
        table[name] = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0] if all(key in r for r in rows)}
        reached = [steps_to_value(c, target) for c in curves[name] if c]
        if common_target and reached and not math.isnan(target):
            table[name]["steps_to_common"] = (math.nan if None in reached else sum(reached) / len(reached))
        table[name]["runs"] = len(rows)
    table[NATURAL] = natural_row
    return table, curves


def section(client, preset: str, out: Path, natural_row: dict[str, float]) -> str:
    summary, claim = PRESETS[preset]
    runs = latest_sweep(client, preset)
    if not runs:
        return f"## {preset}\n\n{summary}\n\nNo finished sweep in the store: run `fvexp experiment={preset}`.\n"
    table, curves = table_of(client, runs, natural_row, preset in SAME_OBJECTIVE)
    steps = runs[0].data.params.get("render.steps")
    sweep = runs[0].data.tags.get("fvexp.sweep", "")
    shown = [c for c in COLUMNS if any(c in row for arm_, row in table.items() if arm_ != NATURAL)]
    lines = [f"## {preset}", "", summary, "",
             f"`fvexp experiment={preset}` — {len(runs)} runs of {steps} steps, sweep `{Path(sweep).name}`"
             + (f"; {max(r['runs'] for r in table.values() if 'runs' in r):.0f} runs per arm, averaged"
                if any(r.get("runs", 1) > 1 for r in table.values()) else "") + ".", "",
             "| arm | " + " | ".join(COLUMNS[c] for c in shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for name, metrics in table.items():
        cells = [cell(metrics.get(c), c, metrics) for c in shown]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    picture, plot = out / "claims" / f"{preset}.png", out / "claims" / f"{preset}_objective.png"
    strip(client, runs, picture)
    draw_curves(curves, plot, preset)
    parent = find_parent(client, runs[0].info.experiment_id, sweep) if sweep else None
    if parent:
        client.log_artifact(parent, str(plot))
    lines += ["", f"![{preset}](claims/{picture.name})", "", f"![objective per step](claims/{plot.name})", ""]
    if claim:
        try:
            holds, numbers = claim(table)
            lines.append(f"**Claim {'reproduces' if holds else 'does not reproduce'}:** {numbers}.")
        except (KeyError, ValueError) as missing:
            lines.append(f"**Claim not checked:** the sweep lacks an arm or a metric it needs ({missing}).")
    return "\n".join(lines) + "\n"


def cell(value: float | None, column: str, metrics: dict[str, float] | None = None) -> str:
    """One table cell; an interpretability score with its 95 % interval when the runs logged one."""
    if value is None:
        return "–"
    if column == "steps_to_common" and math.isnan(value):
        return "never"
    low, high = ((metrics or {}).get(f"{column}.{end}") for end in ("low", "high"))
    if column.startswith("interpretability") and low is not None and high is not None:
        return f"{value:.2f} [{low:.2f}, {high:.2f}]"
    return f"{value:.4g}"


def draw_curves(curves: dict[str, list[list[float]]], path: Path, preset: str) -> None:
    """The objective per step of every run, one colour per arm, in one plot."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure (fvexp.optvis.plots)

    figure = Figure(figsize=(8, 4.5), dpi=100)
    axes = figure.subplots()
    for index, (name, runs) in enumerate(curves.items()):
        for number, values in enumerate(runs):
            axes.plot(range(1, len(values) + 1), values, color=f"C{index % 10}", linewidth=1.2,
                      label=name if number == 0 else None)
    axes.set(xlabel="step", ylabel="objective", title=f"{preset}: objective per step")
    axes.legend(fontsize=8, ncol=2)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def natural_statistics() -> dict[str, float]:
    """High-frequency energy and spectral slope of the demo photos (each whole, at 224 px), averaged."""
    from fvexp.tools.demo import build

    with tempfile.TemporaryDirectory() as tmp:
        files = build(Path(tmp))
        images = [open_image(f, 224)[None] for f in files]
    stats = [(high_frequency_energy(i), spectral_slope(i)) for i in images]
    return {"high_frequency_energy": sum(h for h, _ in stats) / len(stats),
            "spectral_slope": sum(s for _, s in stats) / len(stats)}


def strip(client, runs: list, path: Path) -> None:
    """The runs' final images side by side, each labelled with its arm and its objective."""
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            local = client.download_artifacts(run.info.run_id, "image.png", tmp)
            label = f"{arm(run)}\nobjective {run.data.metrics.get('objective_untransformed', float('nan')):.3g}"
            cells.append((Image.open(local).convert("RGB"), label))
        path.parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(cells, columns=min(len(cells), 4), side=224).save(path)


@one_line_errors("fvexp.claims")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_store(parser)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    header = ["# The article's claims, measured", "",
              "Generated by `fvexp-claims` from the MLflow store; regenerate after running the presets.",
              "Metrics (see `fvexp/optvis/metrics.py`): *objective* on the final image as is and averaged over 16",
              "draws of Lucid's standard transforms; *HF energy*, the share of spectral power beyond half the Nyquist",
              "radius; *spectral slope* of log power against log frequency (natural images ≈ −2); *TV*, mean absolute",
              "neighbour difference; *Gram cosine*, mean pairwise cosine of a batch's Gram matrices; *steps to 90 %",
              "(own final)*, the first step whose smoothed objective covers 90 % of the way to its own final value;",
              "*steps to 90 % of the best arm's final*, the first step whose smoothed objective reaches 90 % of the",
              "best arm's final objective, one target for every arm of the sweep (never: not reached);",
              "*interpretability*, the machine 2-AFC score of the visualization (0.5 is chance; README,",
              "\"Interpretability and transferability\"), beside the same score with the top dataset examples",
              "(*examples*, the ceiling) and random images of the folder (*random*, the floor) as references,",
              "each with its 95 % interval (a bootstrap over queries and draws of random references; where an arm",
              "averages several runs, their bounds averaged); the protocol's validity on a panel of 24 units:",
              "[quality.md](quality.md), \"Is the interpretability score valid?\";",
              "*transfer top-5 / prob.*, the share of class visualizations that EfficientNet-Lite1 and -Lite2, held",
              "out, put in their top 5, and the probability they give the class, averaged over both networks.",
              f"The row *{NATURAL}* holds the demo photos' own statistics (`fvexp-demo`, each whole at 224 px).",
              "",
              "The presets were run with the demo folder as data, so that the interpretability score applies:",
              "`fvexp-demo outputs/demo_photos`, then `fvexp experiment=NAME data.dir=outputs/demo_photos` for each.",
              ""]
    client = reader(args.store)  # a store that does not exist is one error line, and is not created
    natural_row = natural_statistics()
    body = [section(client, preset, args.out, natural_row) for preset in PRESETS]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "claims.md").write_text("\n".join(header + body))
    print(args.out / "claims.md")


if __name__ == "__main__":
    main()
