"""Predict every product's class with a trained classifier into the predictions table.

    ./spark-submit.sh predict [--conf FILE] [key=value ...]
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("predict", sys.argv[1:])
