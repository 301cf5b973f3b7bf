"""Renders a ForecastTable as a compilable LaTeX document (booktabs), GitHub Markdown or CSV.

All three show the same numbers with DECIMALS decimals (relative differences with one decimal and a sign).
Missing cells read "--" in LaTeX and Markdown and are empty in CSV.
"""
from __future__ import annotations

import csv
import html
import io

from benchmarks.errors import SettingError
from benchmarks.models.registry import model_label
from results.output import csv_safe
from results.table import DECIMALS, FIRST, METRICS, SECOND, Cell, ForecastTable, Reference

FORMATS = ("latex", "markdown", "csv")
MISSING = "--"
FIRST_COUNT = "1st Count"
# Wider tables than this many number columns are scaled to the text width in LaTeX.
LATEX_SCALE_ABOVE = 10
LATEX_REFERENCE_LABELS_PER_PAGE = 5
LATEX_LABEL_ONE_LINE = 24  # characters: about the width of 'MSE & MAE' with their std at 9 pt


def number_text(cell: Cell, show_std: bool, plus_minus: str = "±") -> str | None:
    """The cell as displayed, without marks; None when the cell is missing."""
    if cell.mean is None:
        return None
    text = f"{cell.mean:.{DECIMALS}f}"
    if show_std and cell.std is not None:
        text += f"{plus_minus}{cell.std:.{DECIMALS}f}"
    return text


def paper_text(reference: Reference) -> str | None:
    return None if reference.paper is None else f"{reference.paper:.{DECIMALS}f}"


def difference_text(reference: Reference) -> str | None:
    return None if reference.difference is None else f"{reference.difference:+.1f}%"


def column_names(table: ForecastTable) -> list[str]:
    """Flat column names: ours per model column, then per referenced column the paper's numbers and the difference."""
    names = [f"{label} {metric.upper()}" for label in table.labels for metric in METRICS]
    for label in table.reference_labels:
        names += [f"{label} paper {metric.upper()}" for metric in METRICS]
        names += [f"{label} vs paper {metric.upper()} %" for metric in METRICS]
    return names


def _row_values(table: ForecastTable, row, show_std: bool, plus_minus: str = "±") -> list[tuple[str | None, str]]:
    """(text or None, mark) for every number column of one row, in column_names order."""
    values = [
        (number_text(row.cells[(label, metric)], show_std, plus_minus), row.cells[(label, metric)].mark)
        for label in table.labels for metric in METRICS
    ]
    for label in table.reference_labels:
        values += [(paper_text(row.references[(label, metric)]), "") for metric in METRICS]
        values += [(difference_text(row.references[(label, metric)]), "") for metric in METRICS]
    return values


def _first_counts(table: ForecastTable) -> list[str]:
    counts = [str(table.first_count[(label, metric)]) for label in table.labels for metric in METRICS]
    return counts + [""] * (4 * len(table.reference_labels))


def render_csv(table: ForecastTable, show_std: bool = False) -> str:
    """One line per row (dataset, horizon, numbers as displayed) and a final 1st Count line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([csv_safe(name) for name in ["dataset", "horizon", *column_names(table)]])
    for row in table.rows:
        writer.writerow([csv_safe(row.dataset), row.horizon,
                         *(text or "" for text, _ in _row_values(table, row, show_std))])
    writer.writerow([FIRST_COUNT, "", *_first_counts(table)])
    return out.getvalue()


def _markdown_cell(text: str | None, mark: str) -> str:
    if text is None:
        return MISSING
    if mark == FIRST:
        return f"**{text}**"
    if mark == SECOND:
        return f"<u>{text}</u>"
    return text


def markdown_text(text: str) -> str:
    """Text from runs (dataset names, model labels) safe in a Markdown table: HTML escaped, pipes escaped."""
    return html.escape(text).replace("|", "\\|")


def render_markdown(table: ForecastTable, show_std: bool = False) -> str:
    """A GitHub Markdown table: best **bold**, second <u>underlined</u>, missing cells "--".

    With a reference: one table per metric, each row of ours followed by a `paper` row with the published number
    and our relative difference, so four or five models stay well under 160 characters wide.
    """
    if table.reference_labels:
        return _render_markdown_reference(table, show_std)
    header = ["Dataset", "Horizon", *column_names(table)]
    lines = [
        f"Long-term forecasting, suite `{markdown_text(table.suite)}`: test MSE/MAE (lower is better); best "
        "**bold**, second <u>underlined</u>.",
        "",
        "| " + " | ".join(markdown_text(name) for name in header) + " |",
        "|" + "---|" * 2 + "---:|" * (len(header) - 2),
    ]
    for row in table.rows:
        cells = [_markdown_cell(text, mark) for text, mark in _row_values(table, row, show_std)]
        lines.append("| " + " | ".join([markdown_text(row.dataset), str(row.horizon), *cells]) + " |")
    lines.append("| " + " | ".join([FIRST_COUNT, "", *_first_counts(table)]) + " |")
    return "\n".join(lines) + "\n"


def reference_text(reference: Reference) -> str | None:
    """The published number and our difference to it, e.g. `0.165 (+4.2%)`; None when the paper has none."""
    paper = paper_text(reference)
    if paper is None:
        return None
    difference = difference_text(reference)
    return paper if difference is None else f"{paper} ({difference})"


def _render_markdown_reference(table: ForecastTable, show_std: bool) -> str:
    lines = [
        f"Long-term forecasting, suite `{markdown_text(table.suite)}`: test MSE and MAE (lower is better); best "
        "**bold**,",
        "second <u>underlined</u>. Under each row: the MixMamba paper's published number and (ours - paper) / paper.",
    ]
    for metric in METRICS:
        lines += ["", f"**{metric.upper()}**", "",
                  "| " + " | ".join(["Dataset", "Horizon", *(markdown_text(label) for label in table.labels)]) + " |",
                  "|---|---|" + "---:|" * len(table.labels)]
        for row in table.rows:
            cells = [_markdown_cell(number_text(row.cells[(label, metric)], show_std),
                                    row.cells[(label, metric)].mark) for label in table.labels]
            lines.append("| " + " | ".join([markdown_text(row.dataset), str(row.horizon), *cells]) + " |")
            papers = [reference_text(row.references[(label, metric)]) if label in table.reference_labels else None
                      for label in table.labels]
            lines.append("| | paper | " + " | ".join(f"<sub>{text}</sub>" if text else "" for text in papers)
                         + " |")
        counts = [str(table.first_count[(label, metric)]) for label in table.labels]
        lines.append("| " + " | ".join([FIRST_COUNT, "", *counts]) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Text with LaTeX's special characters escaped (dataset names such as exchange_rate)."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def _latex_cell(text: str | None, mark: str) -> str:
    if text is None:
        return MISSING
    text = text.replace("%", r"\%")
    if mark == FIRST:
        return rf"\textbf{{{text}}}"
    if mark == SECOND:
        return rf"\underline{{{text}}}"
    return text


def render_latex(table: ForecastTable, show_std: bool = False) -> str:
    """A complete pdflatex document holding the table (booktabs; datasets as multirow groups).

    With a reference: an A4/letter landscape page, ours in 9 pt and under each row the published number with our
    relative difference in 8 pt; never scaled down: more than five models go over several pages, one table each.
    """
    if table.reference_labels:
        return _render_latex_reference(table, show_std)
    n_ours = 2 * len(table.labels)
    n_numbers = n_ours + 4 * len(table.reference_labels)
    lines = [
        r"\documentclass{article}",
        r"\usepackage[margin=1.5cm]{geometry}",
        r"\usepackage{booktabs}",
        r"\usepackage{graphicx}",
        r"% multirow ships with texlive-latex-extra; without it each dataset name stands in its group's first row.",
        r"\IfFileExists{multirow.sty}{\usepackage{multirow}}{\newcommand{\multirow}[3]{##3}}",
        r"\begin{document}",
        r"\begin{table}[ht]",
        r"\centering",
        _latex_caption(table, show_std, ""),
    ]
    if n_numbers > LATEX_SCALE_ABOVE:
        lines.append(r"\resizebox{\textwidth}{!}{%")
    lines.append(r"\begin{tabular}{ll" + "c" * n_numbers + "}")
    lines.append(r"\toprule")
    if table.reference_labels:
        lines.append(
            rf"& & \multicolumn{{{n_ours}}}{{c}}{{Ours}} & "
            rf"\multicolumn{{{n_numbers - n_ours}}}{{c}}{{Published (MixMamba paper) and ours vs published}} \\"
        )
        lines.append(rf"\cmidrule(lr){{3-{2 + n_ours}}} \cmidrule(lr){{{3 + n_ours}-{2 + n_numbers}}}")
    groups = [latex_escape(label) for label in table.labels]
    for label in table.reference_labels:
        paper_name = model_label(table.models[label])
        groups += [latex_escape(paper_name) + " (paper)", latex_escape(label) + r" vs paper (\%)"]
    headers = [rf"\multicolumn{{2}}{{c}}{{{group}}}" for group in groups]
    lines.append(r"\multicolumn{2}{c}{Models} & " + " & ".join(headers) + r" \\")
    lines.append(" ".join(rf"\cmidrule(lr){{{3 + 2 * i}-{4 + 2 * i}}}" for i in range(len(groups))))
    lines.append(r"\multicolumn{2}{c}{Metric} & " + " & ".join(["MSE & MAE"] * len(groups)) + r" \\")
    for dataset in dict.fromkeys(row.dataset for row in table.rows):
        group = [row for row in table.rows if row.dataset == dataset]
        lines.append(r"\midrule")
        for index, row in enumerate(group):
            name = rf"\multirow{{{len(group)}}}{{*}}{{{latex_escape(dataset)}}}" if index == 0 else ""
            cells = [_latex_cell(text, mark) for text, mark in _row_values(table, row, show_std, r"$\pm$")]
            lines.append(" & ".join([name, str(row.horizon), *cells]) + r" \\")
    lines.append(r"\midrule")
    lines.append(rf"\multicolumn{{2}}{{c}}{{{FIRST_COUNT}}} & " + " & ".join(_first_counts(table)) + r" \\")
    lines.append(r"\bottomrule")
    lines.append(r"\end{tabular}" + ("}" if n_numbers > LATEX_SCALE_ABOVE else ""))
    lines += [r"\end{table}", r"\end{document}"]
    return "\n".join(lines) + "\n"


def _latex_caption(table: ForecastTable, show_std: bool, more: str) -> str:
    return (r"\caption{Long-term forecasting, suite \texttt{" + latex_escape(table.suite) + "}: test MSE and MAE"
            + (r" (mean $\pm$ sample std over seeds)" if show_std else " (mean over seeds)")
            + r". Lower is better; best in \textbf{bold}, second \underline{underlined}." + more + "}")


def _latex_stacked_label(label: str) -> str:
    """A label wider than its two numbers ('MixMamba (searched, lookback 96-512)') over lines: the name, then the
    qualifier split at its commas, so that it does not widen its column."""
    name, _, qualifier = label.partition(" (")
    if not qualifier or len(label) <= LATEX_LABEL_ONE_LINE:
        return latex_escape(label)
    parts = ("(" + qualifier).split(", ")
    lines = [name, *(part + ("," if index < len(parts) - 1 else "") for index, part in enumerate(parts))]
    return r"\begin{tabular}[b]{@{}c@{}}" + r" \\ ".join(latex_escape(line) for line in lines) + r"\end{tabular}"


def _render_latex_reference(table: ForecastTable, show_std: bool) -> str:
    # Five models (ten numbers and the published one under each) fill the landscape text width at 9 pt; more are
    # split over as few equal parts as keep each part at five or fewer, one page each, rather than shrunk.
    parts_count = -(-len(table.labels) // LATEX_REFERENCE_LABELS_PER_PAGE)
    size = -(-len(table.labels) // parts_count)
    parts = [table.labels[start:start + size] for start in range(0, len(table.labels), size)]
    lines = [
        r"\documentclass{article}",
        # 24.9 cm of text on A4 landscape (29.7 cm); 23.1 cm on letter (27.9 cm).
        r"\usepackage[a4paper,landscape,hmargin=2.4cm,vmargin=1.5cm]{geometry}",
        r"\usepackage{booktabs}",
        r"% multirow ships with texlive-latex-extra; without it each dataset name stands in its group's first row.",
        r"\IfFileExists{multirow.sty}{\usepackage{multirow}}{\newcommand{\multirow}[3]{##3}}",
        r"\pagestyle{empty}",
        r"\begin{document}",
    ]
    for number, labels in enumerate(parts, start=1):
        if number > 1:
            lines.append(r"\clearpage")
        part = f" Part {number} of {len(parts)}; bold and underline rank all {len(table.labels)} columns." \
            if len(parts) > 1 else ""
        lines += [
            r"\begin{table}[ht]",
            r"\centering",
            r"\small",
            r"\setlength{\tabcolsep}{4pt}",
            _latex_caption(table, show_std, r" Under each row, in smaller type: the MixMamba paper's published number "
                           r"and (ours $-$ paper) / paper." + part),
            *_latex_reference_tabular(table, labels, show_std),
            r"\end{table}",
        ]
    lines.append(r"\end{document}")
    return "\n".join(lines) + "\n"


def _latex_reference_tabular(table: ForecastTable, labels: list[str], show_std: bool) -> list[str]:
    lines = [
        r"\begin{tabular}{ll" + "r" * 2 * len(labels) + "}",
        r"\toprule",
        r"\multicolumn{2}{c}{Models} & "
        + " & ".join(rf"\multicolumn{{2}}{{c}}{{{_latex_stacked_label(label)}}}" for label in labels) + r" \\",
        " ".join(rf"\cmidrule(lr){{{3 + 2 * i}-{4 + 2 * i}}}" for i in range(len(labels))),
        r"\multicolumn{2}{c}{Metric} & " + " & ".join(["MSE & MAE"] * len(labels)) + r" \\",
    ]
    for dataset in dict.fromkeys(row.dataset for row in table.rows):
        group = [row for row in table.rows if row.dataset == dataset]
        lines.append(r"\midrule")
        for index, row in enumerate(group):
            name = rf"\multirow{{{2 * len(group)}}}{{*}}{{{latex_escape(dataset)}}}" if index == 0 else ""
            cells = [_latex_cell(number_text(row.cells[(label, metric)], show_std, r"$\pm$"),
                                 row.cells[(label, metric)].mark)
                     for label in labels for metric in METRICS]
            lines.append(" & ".join([name, str(row.horizon), *cells]) + r" \\")
            papers = [reference_text(row.references[(label, metric)]) if label in table.reference_labels else None
                      for label in labels for metric in METRICS]
            smaller = [r"\footnotesize " + text.replace("%", r"\%") if text else "" for text in papers]
            lines.append(" & ".join(["", r"\footnotesize paper", *smaller]) + r" \\[2pt]")
    lines.append(r"\midrule")
    lines.append(rf"\multicolumn{{2}}{{c}}{{{FIRST_COUNT}}} & "
                 + " & ".join(str(table.first_count[(label, metric)]) for label in labels for metric in METRICS)
                 + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return lines


def render(table: ForecastTable, format: str, show_std: bool = False) -> str:
    """The table in one of FORMATS."""
    renderers = {"latex": render_latex, "markdown": render_markdown, "csv": render_csv}
    if format not in renderers:
        raise SettingError(f"unknown table format '{format}'; {{setting}} must be one of: {', '.join(FORMATS)}",
                           setting="format")
    return renderers[format](table, show_std)
