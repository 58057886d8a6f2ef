"""Evaluate a trained classifier on the test part: metrics, confusion matrix, report.

    ./spark-submit.sh evaluate [--conf FILE] [key=value ...]
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("evaluate", sys.argv[1:])
