"""Make augmented copies of the small classes' train products into the augmented table.

    ./spark-submit.sh augment [--conf FILE] augment.enabled=true [key=value ...]
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("augment", sys.argv[1:])
