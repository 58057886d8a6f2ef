"""The nightly refresh: bring every table up to date with the catalogue folder, computing and
rewriting only what changed (see README: Nightly refresh).

    ./spark-submit.sh refresh [retrain=true] [--conf FILE] [key=value ...]
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("refresh", sys.argv[1:])
