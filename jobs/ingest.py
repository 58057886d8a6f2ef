"""Ingest a catalogue folder (styles.csv + images/) into the products and rejects tables.

    ./spark-submit.sh ingest [--conf FILE] [key=value ...]
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("ingest", sys.argv[1:])
