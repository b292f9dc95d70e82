"""Small PNG charts for Dagster metadata: the UI renders a markdown image from a data URL."""

from __future__ import annotations

import base64
import io

import dagster as dg

from ingestion.devices.freshness import FRESH_MINUTES, ProviderFreshness


def markdown_image(figure, alt: str) -> dg.MetadataValue:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")


def freshness_chart(summary: list[ProviderFreshness]) -> dg.MetadataValue:
    """Active connections per time-since-last-sync bucket, one bar group per provider."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a Dagster run
    from matplotlib.figure import Figure

    labels = list(summary[0].counts) if summary else []
    figure = Figure(figsize=(7.5, 3.2))
    axes = figure.subplots()
    width = 0.8 / max(len(summary), 1)
    for index, provider in enumerate(summary):
        positions = [n + index * width for n in range(len(labels))]
        axes.bar(positions, list(provider.counts.values()), width, label=provider.provider)
    axes.set_xticks([n + width * (len(summary) - 1) / 2 for n in range(len(labels))])
    axes.set_xticklabels(labels, fontsize=8)
    # between the 30-60 min group and the 1-6 h group
    axes.axvline(2.9 - width / 2, color="grey", linestyle="--")
    axes.set_ylabel("active connections")
    axes.set_title(
        f"Time since last successful sync (left of the line: within {FRESH_MINUTES} min)",
        fontsize=10,
    )
    if summary:
        axes.legend(fontsize=8)
    return markdown_image(figure, "device data freshness")
