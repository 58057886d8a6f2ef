"""An exact top-k reference for the neighbours tests, written independently of the kernel
under test (lookbook.similarity.knn): the full float64 cosine matrix, no blocks, no FAISS. It
checks a result rather than producing one, so that float32 near-ties may come in either order
while everything else must be exact."""
from __future__ import annotations

import numpy as np
import pandas as pd


def similarities(vectors: np.ndarray, images=None, groups=None,
                 exclude_same_image: bool = False) -> np.ndarray:
    """Cosine of every pair in float64: identical images 1.0 (-inf when excluded), self and
    other groups -inf."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    unit = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
    s = unit @ unit.T
    if images is not None:
        images = np.asarray(images)
        s[images[:, None] == images[None, :]] = -np.inf if exclude_same_image else 1.0
    if groups is not None:
        groups = np.asarray(groups)
        s[groups[:, None] != groups[None, :]] = -np.inf
    np.fill_diagonal(s, -np.inf)
    return s


def assert_exact_top_k(got: pd.DataFrame, ids, vectors, k: int, images=None, groups=None,
                       tol: float = 1e-5, exclude_same_image: bool = False) -> None:
    """`got` (product_id, rank, neighbour_id, score) is every product's exact top k: the
    reported scores are the true similarities, nothing left out scores higher, the order is
    by score, and equal scores (identical images) go to the smaller id."""
    ids = np.asarray(ids)
    s = similarities(vectors, images, groups, exclude_same_image)
    index = {int(pid): i for i, pid in enumerate(ids)}
    expected_queries = {int(ids[i]) for i in range(len(ids)) if np.isfinite(s[i]).any()}
    assert set(got["product_id"].astype(int)) == expected_queries
    for pid, rows in got.groupby("product_id"):
        rows = rows.sort_values("rank")
        row = s[index[int(pid)]]
        n = min(k, int(np.isfinite(row).sum()))
        assert rows["rank"].tolist() == list(range(1, n + 1)), (pid, rows)
        chosen = np.array([index[int(x)] for x in rows["neighbour_id"]])
        truth = row[chosen]
        assert np.isfinite(truth).all(), f"{pid}: a neighbour that is not a candidate"
        np.testing.assert_allclose(rows["score"], truth, atol=tol, err_msg=str(pid))
        left_out = np.setdiff1d(np.flatnonzero(np.isfinite(row)), chosen)
        worst = truth.min()
        assert (row[left_out] <= worst + tol).all(), f"{pid}: a better candidate was left out"
        # Exact ties at the cut (identical images, all exactly 1.0): the smaller ids win.
        tied_out = ids[left_out][row[left_out] == worst]
        tied_in = ids[chosen][truth == worst]
        assert not len(tied_out) or not len(tied_in) or tied_out.min() > tied_in.max(), pid
        scores, neighbours = rows["score"].to_numpy(), rows["neighbour_id"].to_numpy()
        assert (np.diff(scores) <= 0).all(), f"{pid}: not ordered by score"
        same = scores[1:] == scores[:-1]
        assert (neighbours[1:][same] > neighbours[:-1][same]).all(), f"{pid}: tie not by id"
