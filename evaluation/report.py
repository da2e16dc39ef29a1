"""``report.md`` (markdown tables in the layout of the paper's Tables 2-5 and 7-15) and
``matryoshka.png`` (metric vs truncation dim), both built from the ``results.json`` dict alone, so
``jina-clip eval report results.json`` can redraw them.

Averages follow the paper: a benchmark's score is the mean over its datasets, where a dataset with
several languages or subsets (a Crossmodal-3600 language, an STS17 pair) first averages those. The paper's
Crossmodal-3600 averages are over the 26 languages of its Table 8 (`paper_figures.PAPER_XM3600_LANGUAGES`):
the report's average is over those, and every other language evaluated is an extra row marked as not in
the paper's tables, with an extra "all languages" average.

Beside every measured row stands the paper's published figure for it (`paper_figures`, Tables 2-5 and
7-13; the `paper_model` of results.json picks the column, "jina-clip-v2" by default, None for none), and
the header says which query instruction the queries got (the model config's, as recorded by the run).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from statistics import fmean

from .paper_figures import PAPER_XM3600_LANGUAGES, paper_figure

T2I = "text-to-image retrieval"
I2T = "image-to-text retrieval"
RETRIEVAL = "retrieval"
STS = "sts"
DOCUMENT = "document retrieval"

#: The paper's headline metric of each result type.
MAIN_METRIC = {T2I: "recall@5", I2T: "recall@5", RETRIEVAL: "ndcg@10", STS: "cosine_spearman", DOCUMENT: "ndcg@5"}
FAMILY_TITLE = {
    T2I: "Text-Image Retrieval - Recall@5 [%]",
    I2T: "Image-Text Retrieval - Recall@5 [%]",
    RETRIEVAL: "Text-Text Retrieval - nDCG@10 [%]",
    STS: "Semantic Textual Similarity - Spearman Correlation [%]",
    DOCUMENT: "Visual Document Retrieval - nDCG@5 [%]",
}
XM3600 = "Crossmodal-3600"
# Benchmarks whose averages the paper takes over a fixed list of languages (the rows of its table).
PAPER_LANGUAGES = {XM3600: PAPER_XM3600_LANGUAGES}
_NOT_IN_PAPER = "not in the paper's tables"
_METRIC_LABEL = {
    "cosine_spearman": "Spearman",
    "cosine_pearson": "Pearson",
}


def _label(metric: str) -> str:
    if metric in _METRIC_LABEL:
        return _METRIC_LABEL[metric]
    name, _, k = metric.partition("@")
    pretty = {"recall": "R", "ndcg": "nDCG", "mrr": "MRR", "map": "MAP"}.get(name, name)
    return f"{pretty}@{k}" if k else pretty


def _fmt(value: float | None, bold: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.2f}"
    return f"**{text}**" if bold else text


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Indexing the results
# --------------------------------------------------------------------------------------------


class _Index:
    """results.json entries indexed by (benchmark, type, dim) -> {(task, language): metrics}."""

    def __init__(self, data: dict):
        self.results = list(data.get("results") or [])
        self.by_key: dict[tuple[str, str, int | None], dict[tuple[str, str], dict]] = defaultdict(dict)
        self.benchmarks: list[str] = []
        self.dims: list[int] = sorted({r["truncate_dim"] for r in self.results if r.get("truncate_dim")}, reverse=True)
        for result in self.results:
            bench = result.get("benchmark") or result["task"]
            if bench not in self.benchmarks:
                self.benchmarks.append(bench)
            row = (result["task"], str(result["dataset"].get("language") or ""))
            self.by_key[(bench, result["type"], result.get("truncate_dim"))][row] = result["metrics"]
        embedding_dim = data.get("embedding_dim")
        self.full_dim = embedding_dim if embedding_dim in self.dims else (self.dims[0] if self.dims else None)
        self.paper_model = data.get("paper_model", "jina-clip-v2")

    def in_paper_average(self, bench: str, language: str) -> bool:
        languages = PAPER_LANGUAGES.get(bench)
        return languages is None or language in languages

    def paper(self, bench: str, kind: str, row: str | None, dim: int | None = None) -> float | None:
        """The paper's figure for a row: of the main tables (`dim` None), or of the Matryoshka tables at `dim`.
        Row None: the benchmark's average of the summary tables (2-5); "average": the detail table's own
        average row where it has one."""
        if not self.paper_model:
            return None
        found = paper_figure(bench, kind, row, model=self.paper_model, dim=dim)
        if found is None and row == "average":
            found = paper_figure(bench, kind, None, model=self.paper_model, dim=dim)
        return None if found is None else found[0]

    def paper_row(self, bench: str, key: tuple[str, str]) -> str:
        """What names a measured row in the paper's tables: the language of a per-language benchmark, else the task."""
        task, language = key
        return language if bench in (XM3600, "Multilingual MS COCO") else task

    def types(self, bench: str) -> list[str]:
        seen = []
        for b, kind, _ in self.by_key:
            if b == bench and kind not in seen:
                seen.append(kind)
        return seen

    def rows(self, bench: str, kind: str, dim: int | None) -> dict[tuple[str, str], dict]:
        return self.by_key.get((bench, kind, dim), {})

    def row_labels(self, bench: str, kind: str) -> list[tuple[tuple[str, str], str]]:
        keys: list[tuple[str, str]] = []
        for dim in self.dims or [None]:
            for key in self.rows(bench, kind, dim):
                if key not in keys:
                    keys.append(key)
        names = {task for task, _ in keys}
        per_task = defaultdict(int)
        for task, _ in keys:
            per_task[task] += 1
        labels = []
        for task, lang in keys:
            if len(names) == 1 and len(keys) > 1:
                label = lang or task  # one dataset, many languages (Crossmodal-3600)
                if not self.in_paper_average(bench, lang):
                    label = f"{label} ({_NOT_IN_PAPER})"
            elif per_task[task] > 1:
                label = f"{task} ({lang})"
            else:
                label = task
            labels.append(((task, lang), label))
        return labels

    def average(self, bench: str, kind: str, dim: int | None, metric: str, *, paper_only: bool = True) -> float | None:
        """The benchmark's mean (of its datasets' means over languages / subsets); `paper_only`: over the
        languages the paper averages (Crossmodal-3600's 26), as its tables do."""
        per_task: dict[str, list[float]] = defaultdict(list)
        for (task, lang), metrics in self.rows(bench, kind, dim).items():
            if metric in metrics and (not paper_only or self.in_paper_average(bench, lang)):
                per_task[task].append(float(metrics[metric]))
        if not per_task:
            return None
        return fmean(fmean(values) for values in per_task.values())

    def extra_languages(self, bench: str, kind: str) -> list[str]:
        """Languages evaluated that the paper's average of `bench` leaves out."""
        return [lang for (_, lang), _ in self.row_labels(bench, kind) if not self.in_paper_average(bench, lang)]

    def average_label(self, bench: str, kind: str) -> str:
        languages = PAPER_LANGUAGES.get(bench)
        if languages is None:
            return "average"
        present = [lang for (_, lang), _ in self.row_labels(bench, kind) if lang in languages]
        if len(present) == len(languages):
            return f"average (the paper's {len(languages)} languages)"
        return f"average ({len(present)} of the paper's {len(languages)} languages)"

    def metrics(self, bench: str, kind: str) -> list[str]:
        names: list[str] = []
        for dim in self.dims or [None]:
            for metrics in self.rows(bench, kind, dim).values():
                for name in metrics:
                    if name not in names:
                        names.append(name)
        return names


def _sorted_metrics(names: Iterable[str]) -> list[str]:
    def key(name: str):
        base, _, k = name.partition("@")
        order = {"ndcg": 0, "recall": 1, "mrr": 2, "map": 3, "cosine_spearman": 4, "cosine_pearson": 5}.get(base, 9)
        return (order, int(k) if k.isdigit() else 0, name)

    return sorted(names, key=key)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _crossmodal_summary(index: _Index, dim: int) -> str | None:
    rows = []
    ks: list[str] = []
    for bench in index.benchmarks:
        if T2I in index.types(bench) or I2T in index.types(bench):
            for kind in (T2I, I2T):
                for name in _sorted_metrics(index.metrics(bench, kind)):
                    if name not in ks:
                        ks.append(name)
    ks = _sorted_metrics(ks)
    if not ks:
        return None
    paper = bool(index.paper_model)
    for bench in index.benchmarks:
        if not ({T2I, I2T} & set(index.types(bench))):
            continue
        labels = index.row_labels(bench, T2I) or index.row_labels(bench, I2T)
        names = {task for (task, _), _ in labels}
        unit = "languages" if len(names) == 1 else "datasets"
        label = bench if len(labels) == 1 else f"{bench} (avg of {len(labels)} {unit})"
        if bench in PAPER_LANGUAGES:
            label = f"{bench} ({index.average_label(bench, T2I).removeprefix('average (')}"
        row = [label] + [_fmt(index.average(bench, kind, dim, k)) for kind in (T2I, I2T) for k in ks]
        if paper:
            row += [_fmt(index.paper(bench, kind, None)) for kind in (T2I, I2T)]
        rows.append(row)
        extra = index.extra_languages(bench, T2I)
        if extra:
            row = [f"{bench} (all {len(labels)} languages; {len(extra)} {_NOT_IN_PAPER})"]
            row += [_fmt(index.average(bench, kind, dim, k, paper_only=False)) for kind in (T2I, I2T) for k in ks]
            rows.append(row + (["-", "-"] if paper else []))
    header = ["Benchmark"] + [f"T-I {_label(k)}" for k in ks] + [f"I-T {_label(k)}" for k in ks]
    if paper:
        header += ["paper T-I R@5", "paper I-T R@5"]
    return _table(header, rows)


def _text_summary(index: _Index, dim: int, model: str) -> str | None:
    columns = []
    for kind in (RETRIEVAL, STS):
        for bench in index.benchmarks:
            if kind in index.types(bench):
                columns.append((bench, kind))
    if not columns:
        return None
    header = ["Model"] + [f"{bench} {_label(MAIN_METRIC[kind])}" for bench, kind in columns]
    rows = [[model] + [_fmt(index.average(bench, kind, dim, MAIN_METRIC[kind])) for bench, kind in columns]]
    return _table(header, rows + _paper_summary_row(index, columns, dim))


def _paper_summary_row(index: _Index, columns: list[tuple[str, str]], dim: int) -> list[list[str]]:
    if not index.paper_model:
        return []
    return [[f"paper: {index.paper_model}"] + [_fmt(index.paper(bench, kind, None)) for bench, kind in columns]]


def _document_summary(index: _Index, dim: int, model: str) -> str | None:
    benches = [b for b in index.benchmarks if DOCUMENT in index.types(b)]
    if not benches:
        return None
    header = ["Model"] + [f"{b} average {_label(MAIN_METRIC[DOCUMENT])}" for b in benches]
    rows = [[model] + [_fmt(index.average(b, DOCUMENT, dim, MAIN_METRIC[DOCUMENT])) for b in benches]]
    return _table(header, rows + _paper_summary_row(index, [(b, DOCUMENT) for b in benches], dim))


def _crossmodal_detail(index: _Index, bench: str, dim: int) -> str:
    ks = _sorted_metrics(set(index.metrics(bench, T2I)) | set(index.metrics(bench, I2T)))
    labels = index.row_labels(bench, T2I) or index.row_labels(bench, I2T)
    paper = bool(index.paper_model)
    rows = []
    if len(labels) > 1:
        row = [f"**{index.average_label(bench, T2I)}**"] + [_fmt(index.average(bench, kind, dim, k)) for kind in (T2I, I2T) for k in ks]
        rows.append(row + ([_fmt(index.paper(bench, kind, "average")) for kind in (T2I, I2T)] if paper else []))
        if index.extra_languages(bench, T2I):
            row = [f"average, all {len(labels)} languages"]
            row += [_fmt(index.average(bench, kind, dim, k, paper_only=False)) for kind in (T2I, I2T) for k in ks]
            rows.append(row + (["-", "-"] if paper else []))
    for key, label in labels:
        cells = []
        for kind in (T2I, I2T):
            metrics = index.rows(bench, kind, dim).get(key, {})
            cells += [_fmt(metrics.get(k)) for k in ks]
        if paper:
            cells += [_fmt(index.paper(bench, kind, index.paper_row(bench, key))) for kind in (T2I, I2T)]
        rows.append([label] + cells)
    first = "Language" if len({task for (task, _), _ in labels}) == 1 and len(labels) > 1 else "Dataset"
    header = [first] + [f"T-I {_label(k)}" for k in ks] + [f"I-T {_label(k)}" for k in ks]
    if paper:
        header += ["paper T-I R@5", "paper I-T R@5"]
    return _table(header, rows)


def _single_type_detail(index: _Index, bench: str, kind: str, dim: int) -> str:
    names = _sorted_metrics(index.metrics(bench, kind))
    main = MAIN_METRIC[kind]
    if main in names:  # the paper's metric first
        names = [main] + [n for n in names if n != main]
    labels = index.row_labels(bench, kind)
    paper = bool(index.paper_model)
    rows = []
    if len(labels) > 1:
        row = ["**Average**"] + [_fmt(index.average(bench, kind, dim, n)) for n in names]
        rows.append(row + ([_fmt(index.paper(bench, kind, "average"))] if paper else []))
    for key, label in labels:
        metrics = index.rows(bench, kind, dim).get(key, {})
        row = [label] + [_fmt(metrics.get(n)) for n in names]
        rows.append(row + ([_fmt(index.paper(bench, kind, index.paper_row(bench, key)))] if paper else []))
    header = ["Task"] + [_label(n) for n in names] + ([f"paper {_label(main)}"] if paper else [])
    return _table(header, rows)


def _sweep_row(values: list[float | None]) -> list[str]:
    present = [v for v in values if v is not None]
    best = max(present) if present else None
    return [_fmt(v, bold=(v is not None and best is not None and v == best and len(present) > 1)) for v in values]


def _sweep_summary(index: _Index) -> str:
    blocks = []
    header = ["Dataset - Dimension"] + [str(d) for d in index.dims]
    for kind in (T2I, I2T, RETRIEVAL, STS, DOCUMENT):
        benches = [b for b in index.benchmarks if kind in index.types(b)]
        if not benches:
            continue
        rows = []
        for b in benches:
            rows.append([f"Avg {b}"] + _sweep_row([index.average(b, kind, d, MAIN_METRIC[kind]) for d in index.dims]))
            published = [index.paper(b, kind, None, d) for d in index.dims]
            if any(v is not None for v in published):
                rows.append([f"paper: {index.paper_model}"] + [_fmt(v) for v in published])
        blocks.append(f"**{FAMILY_TITLE[kind]}**\n\n" + _table(header, rows))
    return "\n\n".join(blocks)


def _sweep_detail(index: _Index, bench: str, kind: str) -> str:
    metric = MAIN_METRIC[kind]
    labels = index.row_labels(bench, kind)
    rows = []
    average = f"**{index.average_label(bench, kind)}**"
    if len(labels) > 1:
        rows.append([average] + _sweep_row([index.average(bench, kind, d, metric) for d in index.dims]))
        if index.extra_languages(bench, kind):
            values = [index.average(bench, kind, d, metric, paper_only=False) for d in index.dims]
            rows.append([f"average, all {len(labels)} languages"] + _sweep_row(values))
    for key, label in labels:
        rows.append([label] + _sweep_row([index.rows(bench, kind, d).get(key, {}).get(metric) for d in index.dims]))
    header = ["Task - Dimension"] + [str(d) for d in index.dims]
    text = f"**{FAMILY_TITLE[kind]}**\n\n" + _table(header, rows)
    published = [[index.paper(bench, kind, "average" if key is None else index.paper_row(bench, key), d) for d in index.dims]
                 for key in ([None] if len(labels) > 1 else []) + [key for key, _ in labels]]  # fmt: skip
    if any(v is not None for row in published for v in row):
        names = ([average] if len(labels) > 1 else []) + [label for _, label in labels]
        rows = [[name] + [_fmt(v) for v in row] for name, row in zip(names, published)]
        text += f"\n\nThe paper's figures ({index.paper_model}):\n\n" + _table(header, rows)
    return text


def build_report(data: dict) -> str:
    """The markdown report of a ``results.json`` dict."""
    index = _Index(data)
    model = str(data.get("model") or "model")
    out = [f"# Evaluation: `{model}`", ""]
    dims = ", ".join(str(d) for d in index.dims) or "-"
    out.append(f"Suite `{data.get('suite', '?')}`; truncation dims: {dims}; all numbers in percent.")
    out.append("")
    out.append(_instruction_line(data.get("query_instruction")))
    out.append("")
    if index.paper_model:
        out.append(
            f"`paper` columns and rows: the published figures of `{index.paper_model}` (arXiv 2412.08802, Tables 2-5 "
            "and 7-13: the main tables beside the full-width results, the Matryoshka tables at 1024..64). The paper does "
            "not list its multilingual MTEB tasks: those averages are over this suite's choice."
        )
        out.append("")
    if not index.results:
        out.append("No results.")
    dim = index.full_dim
    if index.results:
        sections = [
            (f"## Cross-modal retrieval (Table 2 layout, dim {dim})", _crossmodal_summary(index, dim)),
            (f"## Text retrieval and STS (Table 3 layout, dim {dim})", _text_summary(index, dim, model)),
            (f"## Visual document retrieval (Table 4 layout, dim {dim})", _document_summary(index, dim, model)),
        ]
        for title, body in sections:
            if body:
                out += [title, "", body, ""]
        out += [f"## Per-benchmark results (Tables 7-11 layout, dim {dim})", ""]
        for bench in index.benchmarks:
            kinds = index.types(bench)
            out += [f"### {bench}", ""]
            if T2I in kinds or I2T in kinds:
                out += [_crossmodal_detail(index, bench, dim), ""]
            for kind in (RETRIEVAL, STS, DOCUMENT):
                if kind in kinds:
                    out += [_single_type_detail(index, bench, kind, dim), ""]
        if len(index.dims) > 1:
            out += ["## Matryoshka truncation (Table 5 layout)", "", _sweep_summary(index), ""]
            out += ["## Matryoshka truncation per benchmark (Tables 12-15 layout)", ""]
            for bench in index.benchmarks:
                out += [f"### {bench}", ""]
                for kind in index.types(bench):
                    out += [_sweep_detail(index, bench, kind), ""]
    skipped = data.get("skipped") or []
    errors = data.get("errors") or []
    if skipped or errors:
        out += ["## Not evaluated", ""]
        out += [f"- skipped `{item['task']}`: {item['reason']}" for item in skipped]
        out += [f"- failed `{item['task']}`: {item['error']}" for item in errors]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _instruction_line(instruction: str | None) -> str:
    if instruction is None:
        return "Query instruction: not recorded (a model without `config.task_instructions`)."
    if not instruction:
        return ("Query instruction: none. The model's config records that it was trained without one, so queries "
                "(MTEB, ViDoRe) were embedded as they are.")
    return f"Query instruction (the model config's, as trained): `{instruction}` before every MTEB and ViDoRe query."


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------


def plot_sweep(data: dict, path: str | Path) -> Path | None:
    """Main metric vs truncation dim (log2 axis), one panel per result type, one line per benchmark
    average (the rows of Table 5). Returns the path, or ``None`` when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    index = _Index(data)
    kinds = [k for k in (T2I, I2T, RETRIEVAL, STS, DOCUMENT) if any(k in index.types(b) for b in index.benchmarks)]
    if not kinds or not index.dims:
        return None
    dims = sorted(index.dims)
    ncols = min(3, len(kinds))
    nrows = math.ceil(len(kinds) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(kinds) :]:
        ax.set_visible(False)
    for ax, kind in zip(axes.flat, kinds):
        for bench in index.benchmarks:
            if kind not in index.types(bench):
                continue
            values = [index.average(bench, kind, d, MAIN_METRIC[kind]) for d in dims]
            points = [(d, v) for d, v in zip(dims, values) if v is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=bench)
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims)
        ax.set_xticklabels([str(d) for d in dims], rotation=45 if len(dims) > 5 else 0)
        ax.minorticks_off()
        ax.set_xlabel("truncate_dim")
        ax.set_ylabel(f"{_label(MAIN_METRIC[kind])} [%]")
        ax.set_title(FAMILY_TITLE[kind].split(" - ")[0], fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Matryoshka sweep: {data.get('model', 'model')}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["MAIN_METRIC", "build_report", "plot_sweep"]
