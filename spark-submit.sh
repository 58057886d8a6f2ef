#!/usr/bin/env bash
# One way to run any lookbook job, locally or on a cluster:
#   ./spark-submit.sh JOB [--conf FILE] [key=value ...]
# Builds the package for --py-files, derives spark-submit options (master, Spark conf) from the
# same config the job will load, and runs jobs/JOB.py with Spark's own spark-submit.
# Extra spark-submit options (e.g. --deploy-mode cluster, --archives env.tar.gz#env) go in
# SPARK_SUBMIT_ARGS. SPARK_HOME selects a Spark installation; default: the venv's pyspark.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
JOBS="$(cd "$ROOT/jobs" && ls *.py | sed 's/\.py$//' | tr '\n' ' ')"

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
  echo "usage: $0 JOB [--conf FILE] [key=value ...]"
  echo "jobs: $JOBS"
  exit 2
fi
JOB="$1"; shift
if [[ ! -f "$ROOT/jobs/$JOB.py" ]]; then
  echo "spark-submit.sh: unknown job '$JOB'; valid jobs: $JOBS" >&2
  exit 2
fi

PYTHON="${LOOKBOOK_PYTHON:-$ROOT/.venv/bin/python}"
if [[ ! -x "$PYTHON" ]]; then
  echo "spark-submit.sh: $PYTHON not found: run 'make setup' first (or set LOOKBOOK_PYTHON)" >&2
  exit 2
fi
if [[ -n "${SPARK_HOME:-}" ]]; then
  SUBMIT="$SPARK_HOME/bin/spark-submit"
else
  SUBMIT="$(dirname "$PYTHON")/spark-submit"
fi

# The job gets an explicit config path: inside the --py-files zip the package cannot find conf/.
if [[ " $* " != *" --conf "* ]]; then
  set -- --conf "$ROOT/conf/local.yaml" "$@"
fi

# Validates the config first: an unknown key fails here, listing the valid ones.
OPTIONS="$(cd "$ROOT" && PYTHONPATH="$ROOT/lib" "$PYTHON" -m lookbook.cli submit-options "$JOB" "$@")"
mapfile -t SUBMIT_OPTIONS <<< "$OPTIONS"
PACKAGE="$(cd "$ROOT" && PYTHONPATH="$ROOT/lib" "$PYTHON" -m lookbook.cli package "$ROOT/build/lookbook.zip")"

export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PYTHON}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$PYTHON}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
if [[ "$OPTIONS" == *$'--master\nlocal'* ]]; then
  export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
fi
cd "$ROOT"
LOG_OPTIONS=(--driver-java-options "-Dlog4j2.configurationFile=file:$ROOT/conf/log4j2.properties")
# shellcheck disable=SC2086  # SPARK_SUBMIT_ARGS is a list of options
exec "$SUBMIT" "${SUBMIT_OPTIONS[@]}" "${LOG_OPTIONS[@]}" ${SPARK_SUBMIT_ARGS:-} --py-files "$PACKAGE" \
  "$ROOT/jobs/$JOB.py" "$@"
