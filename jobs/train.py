"""Train the masterCategory classifier on the features table, fed through Petastorm.

    ./spark-submit.sh train [--conf FILE] [key=value ...]
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("train", sys.argv[1:])
