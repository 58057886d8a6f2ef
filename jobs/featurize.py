"""Featurize every product image with a pretrained CNN backbone into the features table.

    ./spark-submit.sh featurize [--conf FILE] [key=value ...]
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("featurize", sys.argv[1:])
