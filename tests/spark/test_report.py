import random

import pandas as pd
from PIL import Image

from lookbook.io.synthetic import draw_product, jpeg_bytes
from lookbook.reports import catalogue as report
from lookbook.reports.classifier import plot_confusion, plot_misclassified
from lookbook.reports.gallery import plot_gallery
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


# Real names of the kind a catalogue holds: a pair of `$` is mathtext to matplotlib, and
# "$5_$" or "$^$" is not valid mathtext.
DOLLAR_NAMES = ["Cotton $5 Tee $special$", "Tee $5_$ off", "Socks $^$ pack"]


def test_names_with_dollars_are_drawn_as_written(tmp_path):
    image = jpeg_bytes(draw_product("Apparel", "Tshirts", (200, 30, 30), random.Random(0)))
    counts = pd.DataFrame({"class": DOLLAR_NAMES, "count": [5, 3, 1]})
    samples = pd.DataFrame({"product_id": [1, 2, 3], "master_category": DOLLAR_NAMES,
                            "display_name": DOLLAR_NAMES, "image": [image] * 3})
    rows = [{"title": f"query\n{name}", "image": image,
             "neighbours": [(i, name, 0.5, image) for i, name in enumerate(DOLLAR_NAMES)]}
            for name in DOLLAR_NAMES]
    examples = pd.DataFrame({"product_id": [1, 2], "image": [image] * 2,
                             "true": DOLLAR_NAMES[:2], "predicted": DOLLAR_NAMES[1:],
                             "probability": [0.9, 0.8]})
    pngs = [report.plot_class_balance(counts, tmp_path / "b.png", "$5_$ classes"),
            report.plot_samples(samples, tmp_path / "s.png"),
            plot_gallery(rows, tmp_path / "g.png"),
            plot_confusion([[1, 2, 0], [0, 3, 1], [0, 0, 4]], DOLLAR_NAMES, tmp_path / "c.png"),
            plot_misclassified(examples, tmp_path / "m.png")]
    for png in pngs:
        assert Image.open(png).size[0] > 300

