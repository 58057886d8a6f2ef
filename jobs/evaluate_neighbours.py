"""Precision/recall/mAP of the neighbours against catalogue attributes, and galleries.

    ./spark-submit.sh evaluate_neighbours [--conf FILE] [key=value ...]
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("evaluate_neighbours", sys.argv[1:])
