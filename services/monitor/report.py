"""The drift report: one Markdown page for a human deciding whether to retrain."""

from __future__ import annotations

from datetime import UTC, datetime

from services.monitor import psi
from services.monitor.drift import DriftSnapshot

_ADVICE = {
    psi.Drift.STABLE: "stable",
    psi.Drift.WATCH: "**watch**",
    psi.Drift.ACT: "**act**: retrain or investigate the source",
}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def render(snapshot: DriftSnapshot, topic: str, generated_at: datetime | None = None) -> str:
    when = (generated_at or datetime.now(UTC)).isoformat(timespec="seconds")
    lines = [
        "# fraudscore drift report",
        "",
        f"Generated {when} from topic `{topic}`.",
        "",
        "| | |",
        "|---|---|",
        f"| records in window | {snapshot.records} |",
        f"| fallback share | {_pct(snapshot.fallback_share)} |",
        f"| serving model version | {snapshot.model_version or 'n/a'} |",
        f"| its model-scored records | {snapshot.model_records} |",
        f"| training reference | {_reference(snapshot)} |",
        f"| score PSI | {_num(snapshot.score_psi)} |",
        "",
        f"PSI thresholds: < {psi.WATCH} stable, {psi.WATCH} to {psi.ACT} watch, > {psi.ACT} act "
        "(see docs/operations.md, *Drift alerts*).",
        "",
    ]
    if not snapshot.evaluated:
        lines += [f"**Not evaluated:** {_why_not(snapshot)}", ""]
    if snapshot.score_quantiles:
        lines += ["## Score distribution", "", "| quantile | window | training |", "|---|---|---|"]
        for q, value in snapshot.score_quantiles.items():
            ref = snapshot.reference_score_quantiles.get(q)
            lines.append(f"| p{q * 100:g} | {value:.4f} | {_num(ref)} |")
        lines.append("")
    if snapshot.features:
        drifting = [d for d in snapshot.features if d.drift is not psi.Drift.STABLE]
        lines += [
            "## Feature drift",
            "",
            f"{len(drifting)} of {len(snapshot.features)} features beyond {psi.WATCH}.",
            "",
            "| feature | PSI | verdict |",
            "|---|---|---|",
        ]
        lines += [f"| {d.name} | {d.psi:.4f} | {_ADVICE[d.drift]} |" for d in snapshot.features]
        lines.append("")
    return "\n".join(lines)


def _reference(snapshot: DriftSnapshot) -> str:
    if snapshot.model_version is None:
        return "n/a"
    if not snapshot.reference_found:
        return "missing"
    return f"{snapshot.reference_rows} rows"


def _why_not(snapshot: DriftSnapshot) -> str:
    if snapshot.records == 0:
        return "no score records consumed."
    if snapshot.model_version is None:
        return "every record in the window came from the rule fallback."
    if not snapshot.reference_found:
        return (
            f"model version {snapshot.model_version} has no reference.json in the registry "
            "(trained before drift monitoring, or the registry folder is not mounted)."
        )
    return (
        f"{snapshot.model_records} model-scored records of {snapshot.model_version}; "
        f"at least {snapshot.min_records} are needed (MONITOR_MIN_RECORDS)."
    )
