"""Delete table files no version of the last retention_hours needs (docs/design.md#reliability).

    ./spark-submit.sh vacuum [dry_run=true] [retention_hours=168] [--conf FILE] [key=value ...]
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("vacuum", sys.argv[1:])
