"""One SQL query over the catalogue: every table is a view by its name, `name@v3` version 3.

    ./spark-submit.sh sql "SELECT ..." [out=result.csv]  |  ./spark-submit.sh sql file=q.sql
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("sql", sys.argv[1:])
