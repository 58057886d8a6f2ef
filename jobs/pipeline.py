"""Run a named pipeline's steps in order (default `full`), a progress line per step, a summary.

    ./spark-submit.sh pipeline [name=full] [--conf FILE] [key=value ...]
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("pipeline", sys.argv[1:])
