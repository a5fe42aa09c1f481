"""The page's model panel, from `Stylizer.info`: what the loaded network was trained on (the
embedded world or pairs from the real networks), for how many steps, at what size, and its run's
held-out metrics (metrics.json), so a user who tries a real photo on the demo model knows what
to expect.

Two texts: `summary` (a few lines shown under the title) and `details` (Markdown tables: the
file, its run, and every metrics.json entry, nested ones flattened to `outer.inner`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["details", "summary"]

_EXPECTATIONS = {
    "embedded world": (
        "the **embedded world**: procedurally drawn people and backgrounds, no real photos. "
        "It has never seen a real photo, so on one expect a partial, rough style (colours and "
        "outlines more than a redrawn face); a model trained on the real networks' pairs "
        "(docs/method.md) is the one for real photos."
    ),
    "real weights": (
        "pairs synthesised with the **real networks** (photo and cartoon generators, face "
        "parser), the way docs/method.md describes."
    ),
}


def summary(info: Mapping[str, Any]) -> str:
    """Markdown: what the model is and what to expect from it on a real photo."""
    trained_on = str(info.get("trained_on") or "unknown")
    what = info.get("network") or "network"
    facts = []
    if info.get("steps") is not None:
        facts.append(f"{info['steps']} training steps")
    if info.get("resolution"):
        facts.append(f"{info['resolution']} px training images")
    fact_text = f" ({', '.join(facts)})" if facts else ""
    if trained_on in _EXPECTATIONS:
        text = f"**Loaded model:** {what}{fact_text}, trained on {_EXPECTATIONS[trained_on]}"
    else:
        where = (
            f"its run folder `{info['run_dir']}` has no .hydra/config.yaml"
            if info.get("run_dir")
            else f"no run folder beside `{info.get('source')}`"
        )
        text = f"**Loaded model:** {what}{fact_text}; what it was trained on is unknown ({where})."
    score = _l1_line(info.get("metrics") or {})
    return f"{text}\n\n{score}" if score else text


def details(info: Mapping[str, Any]) -> str:
    """Markdown tables: the file and run, then the run's held-out metrics."""
    rows = [
        ("file", _code(info.get("source"))),
        ("run folder", _code(info.get("run_dir"))),
        ("experiment", info.get("experiment")),
        ("trained on", info.get("trained_on")),
        ("training steps", info.get("steps")),
        ("training resolution", _px(info.get("resolution"))),
        ("synthesis parts", _parts(info.get("components") or {})),
        ("network", info.get("network")),
    ]
    text = _table(("model", ""), [(key, value) for key, value in rows if value not in (None, "")])
    metrics = info.get("metrics")
    if metrics:
        text += "\n\n**Held-out metrics** (the run's metrics.json)\n\n"
        text += _table(("metric", "value"), list(_flatten(metrics)))
    else:
        text += "\n\nNo metrics.json beside the file (held-out metrics unknown)."
    return text


def _l1_line(metrics: Mapping[str, Any]) -> str:
    output, source = metrics.get("l1_output_target"), metrics.get("l1_input_target")
    if not isinstance(output, int | float) or not isinstance(source, int | float) or not source:
        return ""
    return (
        f"Held-out pairs of its run: L1 to the target {output:.4f} vs "
        f"{source:.4f} for the unchanged input (ratio {output / source:.2f}; lower is better)."
    )


def _flatten(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key in sorted(values):
        value = values[key]
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, _number(value)


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return "n/a" if value is None else str(value)
    return f"{value:.4g}"


def _table(header: tuple[str, str], rows: list[tuple[str, Any]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {key} | {str(value).replace('|', '/')} |" for key, value in rows]
    return "\n".join(lines)


def _code(value: Any) -> str | None:
    return f"`{value}`" if value else None


def _px(value: Any) -> str | None:
    return f"{value} px" if value else None


def _parts(components: Mapping[str, Any]) -> str | None:
    return ", ".join(f"{name}: {target}" for name, target in components.items()) or None
