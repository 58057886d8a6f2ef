from PIL import Image

from lookbook.reports import catalogue as report
from lookbook.reports.html import write_html


def test_plots_and_page(bad_result, bad_catalogue, tmp_path):
    _, made = bad_catalogue
    counts = report.class_counts(bad_result.products)
    assert counts["count"].sum() == len(made["product_ids"])
    assert counts.iloc[0]["class"] == "Apparel" and counts.iloc[-1]["count"] == 1
    samples = report.sample_per_class(bad_result.products, 3)
    assert samples.groupby("master_category").size().max() <= 3
    assert set(samples["master_category"]) == set(counts["class"])
    again = report.sample_per_class(bad_result.products, 3)
    assert list(again.sort_values("product_id")["product_id"]) == \
        list(samples.sort_values("product_id")["product_id"])
    balance = report.plot_class_balance(counts, tmp_path / "b.png", "masterCategory")
    grid = report.plot_samples(samples, tmp_path / "s.png")
    for png in (balance, grid):
        assert Image.open(png).size[0] > 300
    page = write_html(tmp_path / "index.html", "t", [("Counts", counts), ("Balance", balance)])
    assert "<img src='b.png'" in page.read_text() and "Apparel" in page.read_text()
