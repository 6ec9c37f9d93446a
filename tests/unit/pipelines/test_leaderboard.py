"""The leaderboard table and its three renderings, from plain data."""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipelines.leaderboard import CategoryResult, build_table, render_markdown, write_report
from pipelines.paper_results import PAPER_MEAN_IMAGE_AUROC, PAPER_MEAN_PIXEL_AUROC, paper_categories, paper_figures
from pipelines.report import CategoryReport, texture_source_note
from pipelines.sweep_plots import MIN_TRIALS_FOR_IMPORTANCES, TrialRecord, build_study, importances_withheld, plot_study


def _bottle() -> CategoryResult:
    return CategoryResult(
        category="bottle",
        val={"val_image_auroc": 0.99, "val_pixel_auroc": 0.97, "val_pixel_aupro": 0.9},
        test={"test_image_auroc": 0.95, "test_pixel_auroc": 0.98, "test_pixel_aupro": 0.85},
        params={"optim.lr": 0.012345, "synthesis.perlin_threshold": 0.4},
        trials_run=8,
        trials_pruned=3,
        trials_failed=1,
        cpu_hours=1.5,
        gpu_hours=0.25,
        best_trial="t3",
        model="memseg-mvtec-bottle/2",
        compare_with_paper=True,
    )


def test_paper_table_matches_the_headline_means() -> None:
    cats = paper_categories()
    assert len(cats) == 15
    img = sum(paper_figures(c).image_auroc for c in cats) / 15  # type: ignore[union-attr]
    pix = sum(paper_figures(c).pixel_auroc for c in cats) / 15  # type: ignore[union-attr]
    assert img == pytest.approx(PAPER_MEAN_IMAGE_AUROC, abs=0.005)
    assert pix == pytest.approx(PAPER_MEAN_PIXEL_AUROC, abs=0.02)
    assert paper_figures("my_widget") is None


def test_build_table_percentages_and_paper_difference() -> None:
    table = build_table([_bottle()])
    row = table.iloc[0]
    assert row["test_image_auroc"] == pytest.approx(95.0)
    assert row["paper_image_auroc"] == 100.0
    assert row["diff_image_auroc"] == pytest.approx(-5.0)
    assert row["diff_pixel_auroc"] == pytest.approx(98.0 - 99.3)
    assert row["trials_pruned"] == 3
    assert row["hyperparameters"] == "optim.lr=0.01235, synthesis.perlin_threshold=0.4"
    assert len(table) == 1  # no mean row for a single category


def test_mean_row_and_missing_values() -> None:
    custom = CategoryResult(category="my_widget", val={"val_image_auroc": 0.5}, trials_run=2, cpu_hours=0.5)
    table = build_table([_bottle(), custom])
    assert list(table["category"]) == ["bottle", "my_widget", "mean"]
    assert math.isnan(table.iloc[1]["paper_image_auroc"]) and math.isnan(table.iloc[1]["test_image_auroc"])
    mean = table.iloc[2]
    assert mean["val_image_auroc"] == pytest.approx((99.0 + 50.0) / 2)
    assert mean["test_image_auroc"] == pytest.approx(95.0)  # NaN skipped
    assert mean["trials_run"] == 10 and mean["cpu_hours"] == pytest.approx(2.0)


def test_markdown_has_one_line_per_row() -> None:
    md = render_markdown(build_table([_bottle()]), title="Sweep s1", notes=["sweep s1"])
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table_lines) == 3  # header, rule, bottle
    assert "| bottle | 99.00 | 97.00 | 90.00 | 95.00 | 98.00 | 85.00 | 100.00 | -5.00 |" in md
    assert "UNVERIFIED" in md


def test_write_report_writes_csv_md_html_with_heatmaps(tmp_path: Path) -> None:
    png = tmp_path / "overlay.png"
    cv2.imwrite(str(png), np.full((8, 8, 3), 200, np.uint8))
    result = CategoryResult(**{**_bottle().__dict__, "heatmaps": [png]})
    files = write_report([result], tmp_path / "out", title="t")
    back = pd.read_csv(files.csv)
    assert back.loc[0, "category"] == "bottle"
    assert back.loc[0, "test_pixel_auroc"] == pytest.approx(98.0)
    page = files.html.read_text()
    assert page.count("data:image/png;base64,") == 1
    assert 'class="neg"' in page  # -5.00 is red
    assert files.markdown.read_text().startswith("# t")


def test_val_test_rho_columns_and_the_reason_listed_under_the_table(tmp_path: Path) -> None:
    defined = CategoryResult(**{**_bottle().__dict__, "val_test_rho": 0.43, "val_test_rho_aupro": -0.2,
                                "val_test_trials": 6})
    short = CategoryResult(category="carpet", val_test_trials=2,
                           val_test_reason="fewer than 3 trials with a validation figure: 2")
    table = build_table([defined, short])
    assert table.iloc[0]["val_test_rho"] == pytest.approx(0.43)  # a correlation, not a percentage
    assert table.iloc[0]["val_test_trials"] == 6 and math.isnan(table.iloc[1]["val_test_rho"])
    assert table.iloc[2]["val_test_rho"] == ""  # no mean of correlations over categories
    files = write_report([defined, short], tmp_path, title="t")
    md = files.markdown.read_text()
    assert "| 8 | 3 | 1 | 0.43 | -0.20 | 6 |" in md and "| carpet |" in md and "| - | - | 2 |" in md
    assert "how well validation ranking predicts test ranking across this category's trials" in md
    assert "- ρ undefined for carpet: fewer than 3 trials with a validation figure: 2" in md
    assert "ρ undefined because" not in md  # the reason is listed, not a column
    assert "ρ undefined for carpet: fewer than 3 trials" in files.html.read_text()
    back = pd.read_csv(files.csv)
    assert back.loc[1, "val_test_reason"] == "fewer than 3 trials with a validation figure: 2"
    assert back.loc[0, "val_test_rho_aupro"] == pytest.approx(-0.2)


def test_report_notes_the_texture_source_of_each_category() -> None:
    sources = {"bottle": "procedural", "carpet": "dtd", "grid": "", "tile": "procedural"}
    note = texture_source_note(
        [CategoryReport(CategoryResult(c), "run", "val_pixel_auroc", texture_source=s) for c, s in sources.items()]
    )
    assert note.startswith("texture source of the training anomalies (data.texture_source;")
    assert note.endswith(": dtd (carpet); not recorded (grid); procedural (bottle, tile)")


def test_without_comparable_rows_there_are_no_paper_columns_and_one_sentence_says_why(tmp_path: Path) -> None:
    reason = "the data is generated, not MVTec AD, and the backbone is not pretrained (model.backbone_weights=none)"
    rows = [CategoryResult(**{**_bottle().__dict__, "compare_with_paper": False, "paper_exclusion": reason}),
            CategoryResult(category="carpet", paper_exclusion=reason)]
    files = write_report(rows, tmp_path, title="t", notes=["dataset: generated"])
    header = pd.read_csv(files.csv).columns
    assert not [c for c in header if c.startswith(("paper_", "diff_"))], list(header)
    for text in (files.markdown.read_text(), html.unescape(files.html.read_text())):
        assert "paper I-AUROC" not in text and "Δ" not in text and "UNVERIFIED" not in text
        assert f"The paper's MVTec AD figures and the deltas to them are left out: {reason}." in text
    md = files.markdown.read_text()
    assert md.index("dataset: generated") < md.index("| category |")  # stated above the table


def test_paper_figures_come_with_their_caveat_and_the_docs_citation(tmp_path: Path) -> None:
    other = CategoryResult(category="carpet", paper_exclusion="the data is custom, not MVTec AD")
    files = write_report([_bottle(), other], tmp_path, title="t")
    table = pd.read_csv(files.csv).set_index("category")
    assert table.loc["bottle", "paper_image_auroc"] == 100.0 and math.isnan(table.loc["carpet", "paper_image_auroc"])
    md = files.markdown.read_text()
    assert "only their means, 99.56 image / 98.84 pixel AUROC, are confirmed by the paper's abstract" in md
    assert 'see docs/report.md, "The paper\'s figures"' in md and "UNVERIFIED" in md
    assert "No paper figures for carpet: the data is custom, not MVTec AD." in md
    assert "memseg-spec" not in md and "memseg-spec" not in files.html.read_text()
    doc = Path(__file__).resolve().parents[3] / "docs" / "report.md"
    assert "## The paper's figures" in doc.read_text()


def test_the_chosen_configuration_lists_every_swept_field_with_the_default_where_it_differs(tmp_path: Path) -> None:
    params = {"optim.lr": 0.054, "optim.optimizer": "sgd", "model.memory_size": 8}
    result = CategoryResult(category="grid", params=params, defaults={"optim.lr": 0.04}, best_trial="t7")
    files = write_report([result], tmp_path, title="t")
    md = files.markdown.read_text()
    assert "### grid: trial t7" in md
    assert "| optim.lr | 0.054 | 0.04 |" in md
    assert "| optim.optimizer | sgd | (same) |" in md and "| model.memory_size | 8 | (same) |" in md
    assert "<td>optim.lr</td><td>0.054</td><td>0.04</td>" in files.html.read_text()
    assert pd.read_csv(files.csv).loc[0, "hyperparameters"] == (
        "model.memory_size=8, optim.lr=0.054 (default 0.04), optim.optimizer=sgd")


def _plotted(tmp_path: Path, finished: int) -> CategoryResult:
    """The bottle row with the Optuna plots of ``finished`` recorded trials (two swept params)."""
    trials = [
        TrialRecord(i, {"optim.lr": str(0.001 * (1 + i)), "model.memory_size": str(10 + i % 3)}, 0.5 + 0.01 * i)
        for i in range(finished)
    ]
    plots = plot_study(build_study(trials), tmp_path / "out" / "plots" / "bottle", metric="val_pixel_auroc")
    return CategoryResult(**{**_bottle().__dict__, "plots": plots})


def _figures(page: str) -> dict[str, str]:
    """Each embedded figure's caption -> its image's source."""
    found = re.findall(r'<figure class="plot"><img src="([^"]+)" alt="[^"]*"><figcaption>([^<]+)</figcaption>', page)
    return {html.unescape(caption): src for src, caption in found}


def test_with_few_trials_the_page_has_the_sentence_and_no_importance_plot(tmp_path: Path) -> None:
    files = write_report([_plotted(tmp_path, 2)], tmp_path / "out", title="t")
    page = files.html.read_text()
    figures = _figures(page)
    assert set(figures) == {"optimisation history, 2 finished trials", "parallel coordinates, 2 finished trials"}
    assert all(src.startswith("data:image/png;base64,") for src in figures.values())
    assert not any("importances" in caption for caption in figures)
    assert html.escape(f"parameter importances, 2 finished trials: {importances_withheld(2)}") in page
    assert importances_withheld(2) in files.markdown.read_text()


def test_from_the_minimum_trials_on_the_page_embeds_the_importance_plot(tmp_path: Path) -> None:
    n = MIN_TRIALS_FOR_IMPORTANCES
    files = write_report([_plotted(tmp_path, n)], tmp_path / "out", title="t")
    page = files.html.read_text()
    figures = _figures(page)
    assert set(figures) == {f"{kind}, {n} finished trials" for kind in
                            ("optimisation history", "parameter importances", "parallel coordinates")}
    png = (tmp_path / "out" / "plots" / "bottle" / "param_importances.png").read_bytes()
    assert figures[f"parameter importances, {n} finished trials"] == (
        "data:image/png;base64," + base64.b64encode(png).decode("ascii"))
    assert "not drawn" not in page
    assert "[plots/bottle/param_importances.png](plots/bottle/param_importances.png)" in files.markdown.read_text()
