"""Catalogue report: class balance and sample images (PNG) and an HTML page.

    ./spark-submit.sh report [--conf FILE] [key=value ...]
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("report", sys.argv[1:])
