"""Comparing feature models: the grid of combinations, shopper-photo queries, and the table
read back from the MLflow runs (`pipelines.compare_steps` runs the `compare` job).

    grid.py      backbones x sizes x precisions (x random init) -> combinations
    photos.py    catalogue images altered as a shopper's photo would be; rank of the own product
    measures.py  neighbours P@5 in memory; the shopper-photo queries of one feature model
    table.py     the MLflow runs -> one row per combination: CSV, Markdown, PNG, index.html
"""
