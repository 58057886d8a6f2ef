"""A JDBC/ODBC endpoint (Spark's Thrift server) serving every table until stopped.

    ./spark-submit.sh sql_server [port=10000] [host=0.0.0.0]   then: beeline -u jdbc:hive2://...
"""
import sys

from lookbook.cli import run_job

if __name__ == "__main__":
    run_job("sql_server", sys.argv[1:])
