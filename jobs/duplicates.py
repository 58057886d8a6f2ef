"""Near-duplicate pairs (similarity above a threshold) with identical-bytes pairs marked.

    ./spark-submit.sh duplicates [--conf FILE] [key=value ...]
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("duplicates", sys.argv[1:])
