"""Exact top-k visual neighbours of every product (blocked cosine) into the neighbours table.

    ./spark-submit.sh neighbours [--conf FILE] [key=value ...]
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("neighbours", sys.argv[1:])
