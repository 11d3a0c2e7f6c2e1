"""Write docs/claims.md from the MLflow store: one table and one picture per preset sweep.

    python -m fvexp.tools.claims [--store sqlite:///outputs/mlflow.db] [--out docs]

For each preset (`fvexp experiment=NAME`) the latest finished sweep is read back from MLflow;
its runs' metrics become a Markdown table and their images a labelled strip. Each preset's claim
from the article is then checked against those numbers and reported as reproduced or not, with
the numbers: nothing in the document is typed by hand.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from fvexp.errors import FvexpError
from fvexp.optvis.images import contact_sheet
from fvexp.tracking.store import PARENT, STORE_HELP, default_store, reader

COLUMNS = ["objective_untransformed", "objective_transformed", "high_frequency_energy", "spectral_slope",
           "total_variation", "gram_cosine", "steps_to_90pct"]
HEADERS = ["objective", "objective, transformed", "HF energy", "spectral slope", "TV", "Gram cosine",
           "steps to 90 %"]
Table = dict[str, dict[str, float]]  # arm -> metric -> value


def claim_enemy(t: Table) -> tuple[bool, str]:
    ratio = t["naive"]["high_frequency_energy"] / t["full"]["high_frequency_energy"]
    return ratio >= 2, (f"pixel-with-nothing has {ratio:.1f}× the high-frequency energy of the full recipe "
                        f"({t['naive']['high_frequency_energy']:.3f} vs {t['full']['high_frequency_energy']:.3f})")


def claim_regularization(t: Table) -> tuple[bool, str]:
    base = t["naive"]["high_frequency_energy"]
    lower = [arm for arm in t if arm != "naive" and t[arm]["high_frequency_energy"] < base]
    return len(lower) == len(t) - 1, (f"{len(lower)} of {len(t) - 1} regularizers lower the high-frequency energy "
                                      f"below no regularization ({base:.3f}): {', '.join(lower) or 'none'}")


def claim_preconditioning(t: Table) -> tuple[bool, str]:
    fast, slow = t["fourier_decorrelated"]["steps_to_90pct"], t["pixel"]["steps_to_90pct"]
    return fast <= 0.5 * slow, (f"decorrelated Fourier reaches 90 % of its final objective in {fast:.0f} steps, "
                                f"pixel in {slow:.0f} ({fast / slow:.2f} of the steps)")


def claim_diversity(t: Table) -> tuple[bool, str]:
    without, with_ = (t[arm]["gram_cosine"] for arm in sorted(t, key=float))
    return with_ < without, f"mean Gram cosine {with_:.3f} with the diversity term vs {without:.3f} without"


def claim_logits(t: Table) -> tuple[bool, str]:
    logit, prob = t["class_logit"]["high_frequency_energy"], t["class_prob"]["high_frequency_energy"]
    numbers = (f"the logit objective's image has high-frequency energy {logit:.3f}, the probability's {prob:.3f} "
               "(the article finds logits give better images)")
    saturated = t["class_prob"]["objective_untransformed"] > 0.99
    if saturated:
        numbers += (f"; the probability reached {t['class_prob']['objective_untransformed']:.3f} within "
                    f"{t['class_prob']['steps_to_90pct']:.0f} steps, after which its gradient vanishes and the image "
                    "stops developing, so its spectrum says little about its quality")
    return logit <= prob, numbers


PRESETS: dict[str, tuple[str, Callable[[Table], tuple[bool, str]] | None]] = {
    "enemy": ("Without regularization, optimization finds high-frequency patterns (the enemy).", claim_enemy),
    "regularization": ("Frequency penalties and transformation robustness reduce high frequencies.",
                       claim_regularization),
    "preconditioning": ("A decorrelated Fourier basis reaches a good objective in far fewer steps.",
                        claim_preconditioning),
    "diversity": ("A diversity term makes the images of a batch differ.", claim_diversity),
    "interaction": ("Neurons combine by arithmetic, interpolation and directions.", None),
    "logits": ("Class logits give better images than class probabilities.", claim_logits),
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


def section(client, preset: str, out: Path) -> str:
    summary, claim = PRESETS[preset]
    runs = latest_sweep(client, preset)
    if not runs:
        return f"## {preset}\n\n{summary}\n\nNo finished sweep in the store: run `fvexp experiment={preset}`.\n"
    table: Table = {arm(r): r.data.metrics for r in runs}
    steps = runs[0].data.params.get("render.steps")
    sweep = Path(runs[0].data.tags.get("fvexp.sweep", "")).name
    lines = [f"## {preset}", "", summary, "",
             f"`fvexp experiment={preset}` — {len(runs)} runs of {steps} steps, sweep `{sweep}`.", "",
             "| arm | " + " | ".join(HEADERS) + " |", "|---" * (len(HEADERS) + 1) + "|"]
    for name, metrics in table.items():
        cells = [f"{metrics[c]:.4g}" if c in metrics else "–" for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    picture = out / "claims" / f"{preset}.png"
    strip(client, runs, picture)
    lines += ["", f"![{preset}](claims/{picture.name})", ""]
    if claim:
        try:
            holds, numbers = claim(table)
            lines.append(f"**Claim {'reproduces' if holds else 'does not reproduce'}:** {numbers}.")
        except (KeyError, ValueError) as missing:
            lines.append(f"**Claim not checked:** the sweep lacks an arm it needs ({missing}).")
    return "\n".join(lines) + "\n"


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=os.environ.get("MLFLOW_TRACKING_URI") or default_store(),
                        help=STORE_HELP)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    header = ["# The article's claims, measured", "",
              "Generated by `fvexp-claims` from the MLflow store; regenerate after running the presets.",
              "Metrics (see `fvexp/optvis/metrics.py`): *objective* on the final image as is and averaged over 16",
              "draws of Lucid's standard transforms; *HF energy*, the share of spectral power beyond half the Nyquist",
              "radius; *spectral slope* of log power against log frequency (natural images ≈ −2); *TV*, mean absolute",
              "neighbour difference; *Gram cosine*, mean pairwise cosine of a batch's Gram matrices; *steps to 90 %*,",
              "the first step whose smoothed objective covers 90 % of the way to its final value.", ""]
    try:
        client = reader(args.store)  # a store that does not exist is one error line, and is not created
        body = [section(client, preset, args.out) for preset in PRESETS]
    except FvexpError as error:
        raise SystemExit(f"fvexp.claims: error: {error}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "claims.md").write_text("\n".join(header + body))
    print(args.out / "claims.md")


if __name__ == "__main__":
    main()
