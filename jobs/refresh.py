"""The nightly job: every table brought up to date, computing only what changed.

    ./spark-submit.sh refresh [retrain=true] [--conf FILE] [key=value ...]
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("refresh", sys.argv[1:])
