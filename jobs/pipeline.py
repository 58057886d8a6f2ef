"""Run every pipeline step in order, with a progress line per step and a summary.

    ./spark-submit.sh pipeline [--conf FILE] [key=value ...]
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("pipeline", sys.argv[1:])
