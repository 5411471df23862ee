"""Result artifacts: metrics.json, console tables, and a report.md with plots and published references."""

from __future__ import annotations

import copy
import csv
import datetime as _datetime
import functools
import math
import re
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

from genret.eval.metrics import hits_at, paired_hit_difference
from genret.io import ARTIFACT_VERSION, atomic_path, write_json, write_text

# Published numbers under the same protocols (see shared/data/README.md, "Published reference numbers").
_PUBLISHED: dict[str, dict[str, Any]] = {
    "ml-1m": {
        "dataset": "ml-1m",
        "protocol": "leave-one-out, full ranking over all items",
        "source": "Zhai et al., 'Actions Speak Louder than Words' (HSTU), ICML 2024; SASRec row as reported there",
        "models": {
            "SASRec": {"hr@10": 0.2853, "ndcg@10": 0.1603},
            "HSTU": {"hr@10": 0.3097, "ndcg@10": 0.1720},
            "HSTU-large": {"hr@10": 0.3294, "ndcg@10": 0.1893},
        },
        "approximate": [],
    },
    "amazon-beauty": {
        "dataset": "amazon-beauty",
        "protocol": "leave-one-out (last item test, second last validation), full ranking over all items",
        "source": "Rajput et al., 'Recommender Systems with Generative Retrieval' (TIGER), NeurIPS 2023; "
        "tuned SASRec figure from shared/data/README.md",
        "models": {
            "TIGER": {"recall@5": 0.0454, "ndcg@5": 0.0321, "recall@10": 0.0648, "ndcg@10": 0.0384},
            "SASRec (tuned)": {"recall@10": 0.074},
        },
        # "~0.074": a rounded figure, compared as given.
        "approximate": ["SASRec (tuned)"],
    },
}

_PLOT_METRICS_VS_K = "metrics_vs_k.png"
_PLOT_TRAINING = "training_curves.png"


def published_reference(dataset_name: str) -> dict[str, Any] | None:
    """Published numbers for a data set, matched loosely by name.

    Args:
        dataset_name: e.g. "ml-1m", "MovieLens-1M", "movielens", "beauty", "amazon-beauty", or a
            path whose last part is such a name.

    Returns:
        A fresh dict ``{"dataset", "protocol", "source", "models": {name: {metric: value}},
        "approximate": [names]}``, or None when no reference is known.
    """
    if not dataset_name:
        return None
    last_part = re.split(r"[\\/]", str(dataset_name).rstrip("/\\"))[-1]
    key = re.sub(r"[^a-z0-9]", "", last_part.lower())
    if key in ("ml1m", "movielens", "movielens1m") or key.startswith(("ml1m", "movielens1m")):
        return copy.deepcopy(_PUBLISHED["ml-1m"])
    if "beauty" in key:
        return copy.deepcopy(_PUBLISHED["amazon-beauty"])
    return None


def _test_metrics(result: Mapping[str, Any]) -> Mapping[str, Any]:
    # Accept either a flat metric dict or a metrics.json-style dict with a "test" section.
    test = result.get("test")
    return test if isinstance(test, Mapping) else result


def _ks_in(rows: Iterable[Mapping[str, Any]], prefix: str) -> list[int]:
    ks = set()
    for metrics in rows:
        for name in metrics:
            match = re.fullmatch(rf"{prefix}@(\d+)", str(name))
            if match:
                ks.add(int(match.group(1)))
    return sorted(ks)


def _render_table(header: list[str], body: list[list[str]]) -> str:
    # A padded markdown pipe table: readable in a terminal and valid in report.md.
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(header, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in body]
    return "\n".join(lines)


def _cell(metrics: Mapping[str, Any], name: str, k: int, percent: bool = False) -> str:
    value = metrics.get(f"{name}@{k}")
    if value is None:
        return "-"
    text = f"{100 * float(value):.3f}%" if percent else f"{float(value):.4f}"
    return text + ("*" if metrics.get(f"truncated@{k}") else "")


def format_paired_hits(ranks: Any, reference_ranks: Any, ks: Iterable[int]) -> str:
    """One line of HR@K for each K with the paired difference to a reference on the same users and
    its 95% half-width, in points: "HR@10 0.2780 (+0.40 +- 0.44 pts); ..." (the compare scripts)."""
    cells = []
    for k in ks:
        diff, half = paired_hit_difference(ranks, reference_ranks, k)
        cells.append(f"HR@{k} {hits_at(ranks, k).mean():.4f} ({100 * diff:+.2f} +- {100 * half:.2f} pts)")
    return "; ".join(cells)


def format_interval(paired: Mapping[str, Any]) -> str:
    """A paired difference (`paired_hit_difference_over_seeds`' dict) in points with its 95% interval:
    "+0.33 [+0.02, +0.64]"."""
    return f"{100 * paired['diff']:+.2f} [{100 * paired['ci95'][0]:+.2f}, {100 * paired['ci95'][1]:+.2f}]"


def format_metrics_table(rows: Mapping[str, Mapping[str, Any]], ks: Iterable[int] = (10, 50, 100, 500)) -> str:
    """Console table, one row per model, HR@K and NDCG@K columns.

    Args:
        rows: model name -> metrics (flat ``{"hr@10": ...}`` or a metrics.json dict with "test").
        ks: cut-offs to show; a K that no row has is left out.

    Returns:
        The table as text (markdown pipe syntax). ``*`` marks values computed on a list shorter than K.
    """
    flat = {name: _test_metrics(metrics) for name, metrics in rows.items()}
    present = set(_ks_in(flat.values(), "hr")) | set(_ks_in(flat.values(), "ndcg"))
    shown = [k for k in ks if k in present]
    header = ["model"] + [f"{name}@{k}" for k in shown for name in ("HR", "NDCG")]
    body = [[model] + [_cell(m, name, k) for k in shown for name in ("hr", "ndcg")] for model, m in flat.items()]
    table = _render_table(header, body)
    if any(m.get(f"truncated@{k}") for m in flat.values() for k in shown):
        table += "\n* computed on a ranked list shorter than K (a lower bound)"
    return table


def format_ablation_table(rows: Mapping[str, Mapping[str, Any]], ranks: Mapping[str, Any] | None = None,
                          reference: str = "dualgr") -> str:
    """The DualGR paper's Table 2 layout: Method | HR@100 | HR@500 | HR@1000, in percent.

    Uses whichever of HR@100/500/1000 the rows hold (all HR@K when none of those), plus NDCG@10
    when present. Rows keep their order (the paper lists the full model last). With per-user test
    ranks, a last column gives each method's HR@K (the first K shown) minus the reference's on the
    same users, with its paired 95% interval: a gap whose interval holds 0 is noise.

    Args:
        rows: method name -> metrics (flat or metrics.json-style with "test").
        ranks: method name -> (m,) test target ranks (`target_ranks`), same users for every method.
        reference: the method the differences are taken against.

    Returns:
        The table as text (markdown pipe syntax).
    """
    flat = {name: _test_metrics(metrics) for name, metrics in rows.items()}
    hr_ks = _ks_in(flat.values(), "hr")
    shown = [k for k in hr_ks if k in (100, 500, 1000)] or hr_ks
    with_ndcg = 10 in _ks_in(flat.values(), "ndcg")
    header = ["Method"] + [f"HR@{k}" for k in shown] + (["NDCG@10"] if with_ndcg else [])
    paired = bool(ranks) and reference in ranks and bool(shown)
    if paired:
        header.append(f"HR@{shown[0]} - {reference} (95% CI)")
    body = []
    for method, m in flat.items():
        row = [method] + [_cell(m, "hr", k, percent=True) for k in shown]
        row += [_cell(m, "ndcg", 10, percent=True)] if with_ndcg else []
        if paired:
            if method == reference or method not in ranks:
                row.append("-")
            else:
                diff, half = paired_hit_difference(ranks[method], ranks[reference], shown[0])
                row.append(f"{100 * diff:+.2f} ± {100 * half:.2f} pts")
        body.append(row)
    return _render_table(header, body)


def format_sweep_table(sweep: Mapping[str, Any]) -> str:
    """A sensitivity sweep (`genret benchmark --sweep`), validation only: one row per value with
    HR@K / NDCG@K mean ± sd over seeds (percent) and the paired HR@K difference to the first value.

    Args:
        sweep: metrics.json's "sweep" dict: "key", "values", "seeds", "reference", "results"
            (value -> {"val": {"mean", "sd"}, "paired_val": {"hr@K": {...}} or None}, and under LOOC
            with a cold validation set "cold_val": {"mean", "sd"}, shown as more columns).

    Returns:
        The table as text (markdown pipe syntax).
    """
    results = sweep["results"]
    means = [r["val"]["mean"] for r in results.values()]
    hr_ks = _ks_in(means, "hr")
    shown = [k for k in hr_ks if k in (10, 20, 100, 500)] or hr_ks  # 20: the cold-start targets are at 20
    paired_k = shown[-1] if shown else None

    def cells(r: Mapping[str, Any], stage: str) -> list[str]:
        """One stage's HR@K / NDCG@K mean ± sd (percent) and its paired HR difference to the reference."""
        out = []
        for k in shown:
            for name in ("hr", "ndcg"):
                mean, sd = r[stage]["mean"].get(f"{name}@{k}"), r[stage]["sd"].get(f"{name}@{k}")
                out.append("-" if mean is None else f"{100 * mean:.3f}%" + ("" if sd is None else f" ± {100 * sd:.3f}"))
        if paired_k:
            paired = (r.get(f"paired_{stage}") or {}).get(f"hr@{paired_k}")
            out.append("-" if paired is None else f"{100 * paired['diff']:+.2f} ± {100 * paired['half_width']:.2f} pts")
        return out

    def stage_header(label: str) -> list[str]:
        return ([f"{label} {n}@{k}" for k in shown for n in ("HR", "NDCG")]
                + ([f"{label} HR@{paired_k} - {sweep['reference']} (95% CI)"] if paired_k else []))

    header = [sweep["key"], "seeds"] + stage_header("val")
    body = [[str(value), str(len(sweep["seeds"]))] + cells(r, "val") for value, r in results.items()]
    footer = ""
    if all("cold_val" in r for r in results.values()):  # LOOC with a cold validation set
        header += stage_header("cold val")
        for row, r in zip(body, results.values()):
            row += cells(r, "cold_val")
        content = sweep.get("content_cold_val")
        if content:  # the floor a cold-start setting has to clear, on the same users
            footer = "\ncontent-only baseline on the same cold validation users: " + ", ".join(
                f"HR@{k} {100 * content[f'hr@{k}']:.3f}%" for k in shown if f"hr@{k}" in content) + "."
    return _render_table(header, body) + f"\nvalidation only; mean ± sd over seeds {sweep['seeds']}." + footer


@functools.cache
def code_version() -> str:
    """The commit of the checkout genret runs from, with "-dirty" when tracked files differ from it;
    "unknown" for an installed wheel. Cached: a long command calls it when it starts, so the commit
    recorded at the end is the code that ran, not whatever was committed meanwhile."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = head.stdout.strip()
    if head.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}", commit):
        return "unknown"
    return commit + "-dirty" if status.returncode == 0 and status.stdout.strip() else commit


# What decides whether a run repeats bit for bit besides genret's own code and the seed.
_PACKAGES = ("torch", "pytorch-lightning", "numpy", "scikit-learn", "triton", "faiss-cpu")


def package_versions() -> dict[str, str]:
    """Python's and the numerical packages' versions ("absent" where not installed)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def write_metrics(
    path: str | Path,
    *,
    model: str,
    dataset: str,
    metrics_val: Mapping[str, Any],
    metrics_test: Mapping[str, Any],
    train_seconds: float,
    device: Any,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write metrics.json atomically.

    Args:
        path: target file (its folder is created).
        model: model name, e.g. "dualgr".
        dataset: data set name, e.g. "ml-1m".
        metrics_val: validation metrics (from ``ranking_metrics``).
        metrics_test: test metrics.
        train_seconds: wall-clock training time.
        device: where it ran (e.g. "cuda:0 (NVIDIA H100)", or a torch.device).
        extra: more top-level keys, e.g. ``{"baselines": {"popularity": {...}}}``; may not replace
            the standard keys.

    Returns:
        The dict written: model, dataset, commit (see `code_version`), device,
        train_seconds, val, test, genret_version, packages (the versions a rerun needs to match: the
        same seed reproduces to the bit only with the same ones), artifact_version, created (UTC ISO
        8601), + extra.
    """
    from genret import __version__

    record: dict[str, Any] = {
        "model": str(model),
        "dataset": str(dataset),
        "commit": code_version(),
        "device": str(device),
        "train_seconds": float(train_seconds),
        "val": dict(metrics_val),
        "test": dict(metrics_test),
        "genret_version": __version__,
        "packages": package_versions(),
        "artifact_version": ARTIFACT_VERSION,
        "created": _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if extra:
        clash = sorted(set(extra) & set(record))
        if clash:
            raise ValueError(f"extra may not replace the standard metrics.json keys {clash}; rename them")
        record.update(extra)
    write_json(path, record)
    return record


def _read_lightning_csv(path: Path) -> dict[str, list[tuple[float, float, float]]]:
    """Column -> [(step, epoch, value)] for each row where the column has a value."""
    if not path.is_file():
        raise FileNotFoundError(f"training log {path} does not exist (expected a Lightning CSVLogger metrics.csv)")
    series: dict[str, list[tuple[float, float, float]]] = {}
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return series
        for line_number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{line_number}: expected {len(header)} columns, found {len(row)}")
            values: dict[str, float] = {}
            for name, cell in zip(header, row):
                if cell.strip() == "":
                    continue
                try:
                    values[name] = float(cell)
                except ValueError:
                    raise ValueError(f"{path}:{line_number}: column {name!r} holds {cell!r}, not a number") from None
            step = values.get("step", float(line_number - 2))
            epoch = values.get("epoch", math.nan)
            for name, value in values.items():
                if name not in ("step", "epoch"):
                    series.setdefault(name, []).append((step, epoch, value))
    return series


def _plot_metrics_vs_k(figure_class: Any, models: Mapping[str, Mapping[str, Any]], path: Path) -> bool:
    figure = figure_class(figsize=(10, 4))
    axes = figure.subplots(1, 2)
    drew = False
    for ax, name, title in ((axes[0], "hr", "HR@K"), (axes[1], "ndcg", "NDCG@K")):
        for model, metrics in models.items():
            ks = _ks_in([metrics], name)
            if ks:
                ax.plot(ks, [float(metrics[f"{name}@{k}"]) for k in ks], marker="o", label=model)
                drew = True
        ax.set_xscale("log")
        # Label the measured Ks themselves rather than powers of ten.
        all_ks = _ks_in(models.values(), name)
        ax.set_xticks(all_ks, [str(k) for k in all_ks])
        ax.minorticks_off()
        ax.set_xlabel("K")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if drew:
        figure.tight_layout()
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=110)
    return drew


def _plot_training(figure_class: Any, series: Mapping[str, list[tuple[float, float, float]]], path: Path) -> list[str]:
    # Losses (train and val) against step, validation metrics against epoch, the rest against step.
    # Series share a panel only when they share a scale: retrieval metrics (fractions) beside NLLs in
    # nats, or an NLL beside a count of targets, would be a flat line at the bottom.
    losses = [c for c in series if "loss" in c.lower()]
    validation = [c for c in series if c.lower().startswith("val") and c not in losses]
    retrieval = [c for c in validation if any(m in c.lower() for m in ("hr@", "ndcg@", "recall@"))]
    validation = [c for c in validation if c not in retrieval]
    train_nll = [c for c in series if c.lower().startswith("train/nll")]
    grouped = set(losses + validation + retrieval + train_nll)
    others = [(c, [c], False) for c in series if c not in grouped]
    panels = [
        (title, columns, by_epoch)
        for title, columns, by_epoch in (
            ("loss", losses, False),
            ("validation metrics", validation, True),
            ("validation retrieval", retrieval, True),
            ("training NLL by level", train_nll, False),
            *others,
        )
        if columns
    ]
    if not panels:
        return []
    n_cols = min(len(panels), 4)
    n_rows = math.ceil(len(panels) / n_cols)
    figure = figure_class(figsize=(5 * n_cols, 4 * n_rows))
    axes = figure.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (title, columns, by_epoch) in zip(axes, panels):
        # Fall back to steps when the log has no epoch column.
        use_epoch = by_epoch and not any(math.isnan(epoch) for c in columns for _, epoch, _ in series[c])
        for column in columns:
            points = series[column]
            xs = [epoch if use_epoch else step for step, epoch, _ in points]
            ax.plot(xs, [value for _, _, value in points], marker="o" if len(points) < 30 else None, label=column)
        ax.set_xlabel("epoch" if use_epoch else "step")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return [title for title, _, _ in panels]


def _reference_section(reference: Mapping[str, Any], model: str, ours: Mapping[str, Any]) -> list[str]:
    lines = [
        f"## Published reference ({reference.get('dataset', '?')})",
        "",
        f"Protocol: {reference.get('protocol', 'unknown')}. Source: {reference.get('source', 'unknown')}.",
        "",
    ]
    body = []
    approximate = set(reference.get("approximate", []))
    for ref_model, numbers in reference.get("models", {}).items():
        for metric, published in numbers.items():
            value = ours.get(metric)
            if value is None:
                status, ours_text = "n/a (not measured)", "-"
            else:
                status = "met" if float(value) >= float(published) else "not met"
                ours_text = f"{float(value):.4f}"
            label = ref_model + (" (approx.)" if ref_model in approximate else "")
            body.append([label, metric, f"{float(published):.4f}", ours_text, status])
    lines.append(_render_table(["published model", "metric", "published", model, "status"], body))
    met = sum(row[-1] == "met" for row in body)
    lines += ["", f"{model} meets {met} of {len(body)} published numbers (met = ours >= published)."]
    return lines


def format_cold_start(metrics: Mapping[str, Any], baselines: Mapping[str, Mapping[str, Any]]) -> str:
    """The leave-one-out-cold table of a metrics.json: Recall@K / NDCG@K of the model and of each
    baseline with such blocks on the cold users, the warm users and (if any) the validation cold
    users, then the model's paired HR@K difference to the content baseline ("vs_content")."""
    blocks = [b for b in ("cold", "warm", "cold_val") if isinstance(metrics.get(b), Mapping)]
    ks = [k for k in _ks_in([metrics[b] for b in blocks], "recall") if k in (10, 20, 100)] or \
        _ks_in([metrics[b] for b in blocks], "recall")[:3]
    rows = {str(metrics.get("model", "model")): metrics}
    rows.update({name: r for name, r in baselines.items() if any(isinstance(r.get(b), Mapping) for b in blocks)})
    nk = 20 if 20 in ks else (ks[-1] if ks else None)  # one NDCG column per block
    header = ["model", *(f"{b.replace('_', ' ')} Recall@{k}" for b in blocks for k in ks),
              *((f"{b.replace('_', ' ')} NDCG@{nk}" for b in blocks) if nk else ())]

    def cell(r, b, name):
        return f"{r[b][name]:.4f}" if isinstance(r.get(b), Mapping) and name in r[b] else "-"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in rows.items():
        cells = [cell(r, b, f"recall@{k}") for b in blocks for k in ks]
        cells += [cell(r, b, f"ndcg@{nk}") for b in blocks] if nk else []
        lines.append("| " + " | ".join([name, *cells]) + " |")
    users = ", ".join(f"{b.replace('_', ' ')} {metrics[b]['n_users']}" for b in blocks if "n_users" in metrics[b])
    if users:
        lines += ["", f"Users: {users}."]
    for name, paired in (metrics.get("vs_content") or {}).items():
        parts = [f"HR@{k.split('@')[1]} {format_interval(v)}" for k, v in paired.items() if int(k.split("@")[1]) in ks]
        lines += ["", f"{name.replace('_', ' ')} users, model minus content baseline (points, paired, 95%): "
                  + "; ".join(parts) + "."]
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    metrics: Mapping[str, Any],
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
    train_log_csv: str | Path | None = None,
    reference: Mapping[str, Any] | None = None,
    sections: Iterable[tuple[str, str]] = (),
) -> Path:
    """Write out_dir/report.md with plots: metrics vs K, training curves, tables, published numbers.

    Args:
        out_dir: folder for report.md, metrics_vs_k.png and training_curves.png (created).
        metrics: the dict from ``write_metrics`` (or a flat test-metric dict).
        baselines: baseline name -> metrics (flat or with "test"); default ``metrics["baselines"]``.
        train_log_csv: a Lightning CSVLogger metrics.csv to plot (any columns it has). A path that
            does not exist is reported in report.md instead of raising.
        reference: published numbers as from ``published_reference``; default looked up from
            ``metrics["dataset"]``; pass ``{}`` for none.
        sections: more (title, markdown body) sections after the validation table, e.g. the
            ablations over seeds (genret.eval.ablations.format_ablation_summary).

    Returns:
        Path of report.md. Every file is written atomically.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = str(metrics.get("model", "model"))
    dataset = metrics.get("dataset")
    if baselines is None:
        baselines = metrics.get("baselines") or {}
    if reference is None:
        reference = published_reference(dataset) if dataset else None
    ours = _test_metrics(metrics)
    # Leave-one-out-cold: "test" is the warm users' test; baselines give their "warm" block for it.
    looc = isinstance(metrics.get("looc"), Mapping)
    models: dict[str, Mapping[str, Any]] = {model: ours}
    for name, result in baselines.items():
        block = result.get("warm") if looc and "test" not in result and isinstance(result.get("warm"), Mapping) \
            else _test_metrics(result)
        models[name if name not in models else f"{name} (baseline)"] = block
    # A missing log (e.g. Lightning wrote version_1 on a rerun) is noted in the report rather than
    # failing at the end of a long run; a malformed one raises.
    log_missing = train_log_csv is not None and not Path(train_log_csv).is_file()
    series = _read_lightning_csv(Path(train_log_csv)) if train_log_csv is not None and not log_missing else None

    lines = [f"# {model} on {dataset or 'unknown data set'}", ""]
    for key in ("commit", "device", "train_seconds", "genret_version", "created"):
        if key in metrics:
            lines.append(f"- {key}: {metrics[key]}")
    stop = metrics.get("training")
    if isinstance(stop, Mapping) and "stopped_by" in stop:
        from genret.training.run import cut_short

        epochs = stop.get("epochs")
        lines.append(f"- training: stopped by {stop['stopped_by']} after {epochs} epoch{'' if epochs == 1 else 's'}"
                     + (" while validation was still improving (likely under-trained)" if cut_short(stop) else ""))
    if "n_users" in ours:
        lines.append(f"- test users: {ours['n_users']}")
    all_ks = sorted(set(_ks_in(models.values(), "hr")) | set(_ks_in(models.values(), "ndcg")))
    lines += ["", "## Test metrics" + (" (warm users)" if looc else ""), "", format_metrics_table(models, ks=all_ks), ""]
    if looc:
        lines += ["## Cold start (leave-one-out-cold)", "", format_cold_start(metrics, baselines), ""]
    if isinstance(metrics.get("val"), Mapping):
        lines += ["## Validation metrics", "", format_metrics_table({model: metrics["val"]}, ks=all_ks), ""]
    overall = (metrics.get("sid_report") or {}).get("overall")
    if overall:
        lines += ["## Semantic IDs", "",
                  f"- unique-path fraction: {overall['unique_path_fraction']:.4f} (items whose SID no other item has)",
                  f"- distinct SIDs: {overall['n_sids']} for {metrics['sid_report'].get('n_items', '?')} items; "
                  f"largest collision: {overall['largest_collision']} item(s) on one SID", ""]
    for title, body in sections:
        lines += [f"## {title}", "", body, ""]

    try:
        from matplotlib.figure import Figure  # Figure draws with Agg directly; no pyplot global state.
    except ImportError:
        Figure = None
    lines += ["## Plots", ""]
    if Figure is None:
        lines += ["Plots skipped: matplotlib is not installed (`pip install matplotlib`).", ""]
    else:
        if _plot_metrics_vs_k(Figure, models, out_dir / _PLOT_METRICS_VS_K):
            lines += [f"![HR@K and NDCG@K]({_PLOT_METRICS_VS_K})", ""]
        if log_missing:
            lines += [f"Training log {train_log_csv} does not exist, so no training curves.", ""]
        elif series is None:
            lines += ["No training log given, so no training curves.", ""]
        elif _plot_training(Figure, series, out_dir / _PLOT_TRAINING):
            lines += [f"![training curves]({_PLOT_TRAINING})", ""]
        else:
            lines += [f"Training log {train_log_csv} has no rows to plot.", ""]

    if looc:  # the published numbers rank every user's last item; this test holds the warm users only
        lines += ["## Published reference", "", "Not compared: published numbers are leave-one-out over all users; "
                  "this run's test is the leave-one-out-cold split's warm users.", ""]
    elif reference:
        lines += _reference_section(reference, model, ours) + [""]
    else:
        lines += ["## Published reference", "", f"No published numbers on file for {dataset or 'this data set'}.", ""]

    report_path = out_dir / "report.md"
    write_text(report_path, "\n".join(lines))
    return report_path
