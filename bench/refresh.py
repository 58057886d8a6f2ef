"""Nightly refresh benchmark: the full pipeline on the real catalogue, then 1 % of its products
changed (added, new image, new labels, deleted), then `refresh`, both through spark-submit in
the same run; time per step and bytes written per table for each, as ratios. Then the refreshed
neighbours table is checked against a full recomputation of it (equal, row for row).

    .venv/bin/python bench/refresh.py --data-dir ../shared/data/fashion [--work /tmp/refresh-bench]

The catalogue is copied into --work (the shared data is never modified). Bytes written are read
from the tables' commit logs: the Add actions of the versions each run committed.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_line, real_data_args  # bench/machine.py

REPO = Path(__file__).resolve().parents[1]
TABLES = ["products", "rejects", "features", "feature_rejects", "predictions",
          "prediction_rejects", "neighbours", "duplicates"]
STEPS = ["ingest", "featurize", "predict", "neighbours", "duplicates"]


def submit(job: str, *args: str) -> tuple[float, dict[str, float], str]:
    """Run a job as a user does; (seconds, seconds per step from its summary, output)."""
    started = time.perf_counter()
    done = subprocess.run([str(REPO / "spark-submit.sh"), job, *args], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{job} failed:\n{done.stdout[-5000:]}")
    summary = done.stdout.split(" summary\n", 1)[-1]
    steps = {m.group(1): float(m.group(2))
             for m in re.finditer(r"^\s*(\w+)\s+([0-9.]+)\s", summary, re.M)}
    return seconds, steps, done.stdout


def log_versions(table: Path) -> list[int]:
    log = table / "_delta_log"
    return sorted(int(p.stem) for p in log.glob("*.json")) if log.exists() else []


def bytes_written(table: Path, after: int) -> tuple[int, int, int]:
    """(bytes added, files added, files removed) by the commits after version `after`."""
    added = files = removed = 0
    for version in log_versions(table):
        if version <= after:
            continue
        for line in (table / "_delta_log" / f"{version:020d}.json").read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                added += action["add"]["size"]
                files += 1
            elif "remove" in action:
                removed += 1
    return added, files, removed


def change_catalogue(root: Path, fraction: float, seed: int) -> dict[str, int]:
    """Change `fraction` of the products: 40 % of the changes add products (new ids, rows of
    existing products, mirrored images), 15 % give a product a new image, 15 % new labels,
    30 % delete products; spread uniformly over the catalogue."""
    from PIL import Image, ImageOps

    rng = random.Random(seed)
    styles = root / "styles.csv"
    header, *lines = styles.read_text().splitlines()
    by_id = {}
    for i, line in enumerate(lines):
        head = line.split(",", 1)[0]
        if head.isdigit() and (root / "images" / f"{head}.jpg").exists():
            by_id[int(head)] = i
    ids = sorted(by_id)
    n = round(len(ids) * fraction)
    counts = {"new": round(n * 0.4), "image": round(n * 0.15), "labels": round(n * 0.15)}
    counts["deleted"] = n - sum(counts.values())
    chosen = rng.sample(ids, counts["image"] + counts["labels"] + counts["deleted"])
    images, labels = chosen[:counts["image"]], chosen[counts["image"]:-counts["deleted"]]
    deleted = set(chosen[-counts["deleted"]:])

    def mirrored(pid: int) -> bytes:
        out = io.BytesIO()
        ImageOps.mirror(Image.open(root / "images" / f"{pid}.jpg").convert("RGB")).save(
            out, "JPEG", quality=90)
        return out.getvalue()

    for pid in images:
        data = mirrored(pid)
        (root / "images" / f"{pid}.jpg").unlink()  # a new file, never the copied one's inode
        (root / "images" / f"{pid}.jpg").write_bytes(data)
    for pid in labels:
        fields = lines[by_id[pid]].split(",")
        fields[8] = "Formal" if fields[8] != "Formal" else "Casual"  # usage
        lines[by_id[pid]] = ",".join(fields)
    added = []
    for new_id, source in zip(range(max(ids) + 1, max(ids) + 1 + counts["new"]),
                              rng.sample(ids, counts["new"])):
        (root / "images" / f"{new_id}.jpg").write_bytes(mirrored(source))
        added.append(",".join([str(new_id), *lines[by_id[source]].split(",")[1:]]))
    for pid in deleted:
        (root / "images" / f"{pid}.jpg").unlink()
    kept = [line for i, line in enumerate(lines)
            if not (line.split(",", 1)[0].isdigit() and int(line.split(",", 1)[0]) in deleted)]
    styles.write_text("\n".join([header, *kept, *added]) + "\n")
    return counts


def main() -> None:
    print(cpu_line(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    real_data_args(parser, n=None)
    parser.add_argument("--work", default="/tmp/lookbook-refresh-bench")
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    catalogue, warehouse = work / "catalogue", work / "warehouse"
    shutil.copytree(args.data_dir, catalogue)
    common = [f"data_dir={catalogue}", f"warehouse={warehouse}"]

    print("full pipeline on the catalogue ...", flush=True)
    full_s, full_steps, _ = submit("pipeline", *common)
    full_bytes = {t: bytes_written(warehouse / t, -1) for t in TABLES}
    at = {t: (log_versions(warehouse / t) or [-1])[-1] for t in TABLES}

    counts = change_catalogue(catalogue, args.fraction, args.seed)
    print(f"changed {sum(counts.values()):,} products: {counts}", flush=True)
    refresh_s, refresh_steps, out = submit("refresh", *common)
    print("\n".join(line for line in out.splitlines() if re.match(r"^\[\d", line)), flush=True)
    refresh_bytes = {t: bytes_written(warehouse / t, at[t]) for t in TABLES}
    commits = {t: len(log_versions(warehouse / t)) - 1 - at[t] for t in TABLES}
    before_again = sum(len(log_versions(warehouse / t)) for t in TABLES)
    again_s, _, again = submit("refresh", *common)
    after_again = sum(len(log_versions(warehouse / t)) for t in TABLES)

    print(f"\nfull pipeline {full_s:.0f} s, refresh {refresh_s:.0f} s "
          f"({refresh_s / full_s:.3f} of it); a second refresh (no change) {again_s:.0f} s")
    print("| step | full run, s | refresh, s | ratio |\n| --- | ---: | ---: | ---: |")
    for step in STEPS:
        f, r = full_steps.get(step, 0.0), refresh_steps.get(step, 0.0)
        print(f"| {step} | {f:.1f} | {r:.1f} | {r / f if f else 0:.3f} |")
    f = sum(full_steps.get(s, 0.0) for s in STEPS)
    r = sum(refresh_steps.get(s, 0.0) for s in STEPS)
    print(f"| these steps | {f:.1f} | {r:.1f} | {r / f:.3f} |")
    print("\n| table | full run: MiB written | refresh: MiB written | ratio | refresh: files "
          "added / removed | commits |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for t in TABLES:
        (fb, _, _), (rb, ra, rr) = full_bytes[t], refresh_bytes[t]
        print(f"| {t} | {fb / 2**20:.2f} | {rb / 2**20:.2f} | "
              f"{rb / fb if fb else 0:.3f} | {ra} / {rr} | {commits[t]} |")
    fb = sum(v[0] for v in full_bytes.values())
    rb = sum(v[0] for v in refresh_bytes.values())
    print(f"| all | {fb / 2**20:.2f} | {rb / 2**20:.2f} | {rb / fb:.3f} | | |")
    print(f"\nno-change refresh committed {after_again - before_again} versions; "
          f"its steps: " + "; ".join(line.split(": ", 1)[-1] for line in again.splitlines()
                                     if re.match(r"^\[\d/\d\] \w+ done", line)))

    print("\nexactness: the refreshed neighbours against a full recomputation ...", flush=True)
    copy = work / "recomputed"
    shutil.copytree(warehouse, copy, ignore=shutil.ignore_patterns("neighbours", "duplicates"))
    submit("neighbours", f"data_dir={catalogue}", f"warehouse={copy}")
    check = subprocess.run([sys.executable, "-c", f"""
import pyarrow as pa
from deltalake import DeltaTable
cols = ["product_id", "rank", "neighbour_id", "score"]
a, b = (pa.table(DeltaTable(p).to_pyarrow_table(columns=cols)).to_pandas()
        .sort_values(["product_id", "rank"]).reset_index(drop=True)
        for p in ("{warehouse}/neighbours", "{copy}/neighbours"))
print(f"rows {{len(a):,}} refreshed, {{len(b):,}} recomputed; identical: {{a.equals(b)}}")
"""], text=True, capture_output=True)
    print(check.stdout.strip() or check.stderr[-2000:])


if __name__ == "__main__":
    main()
