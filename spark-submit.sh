#!/usr/bin/env bash
# One way to run any lookbook job, locally or on a cluster:
#   ./spark-submit.sh JOB [--conf FILE] [key=value ...]
#   ./spark-submit.sh JOB --help     what it does, reads, writes, and its settings
# Builds the package for --py-files, derives spark-submit options (master, Spark conf) from the
# same config the job will load, ships that config with --files, and runs jobs/JOB.py with
# Spark's own spark-submit.
# Extra spark-submit options (e.g. --deploy-mode cluster, --archives env.tar.gz#env) go in
# SPARK_SUBMIT_ARGS, split by shell rules (quotes and backslashes; no globbing, no variable or
# command expansion):
#   SPARK_SUBMIT_ARGS='--conf "spark.driver.extraJavaOptions=-Da=1 -Db=2"' ./spark-submit.sh ...
# SPARK_HOME selects a Spark installation; default: the venv's pyspark.
# LOOKBOOK_SUBMIT_DRY_RUN=1 prints the command it would run, one argument after another each
# ended by a NUL byte, and exits without building or running anything; read it with
#   LOOKBOOK_SUBMIT_DRY_RUN=1 ./spark-submit.sh JOB ... | tr '\0' '\n'
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# A job is a jobs/NAME.py whose name is a plain identifier: nothing else (../x, __init__, a/b,
# -x) is ever turned into a path.
VALID_JOBS=()
for file in "$ROOT"/jobs/*.py; do
  name="$(basename "$file" .py)"
  if [[ "$name" =~ ^[a-z][a-z0-9_]*$ ]]; then
    VALID_JOBS+=("$name")
  fi
done
JOBS="${VALID_JOBS[*]}"

is_job() {
  local job
  for job in "${VALID_JOBS[@]}"; do
    [[ "$1" == "$job" ]] && return 0
  done
  return 1
}

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
  echo "usage: $0 JOB [--conf FILE] [key=value ...]"
  echo "jobs: $JOBS"
  exit 2
fi
JOB="$1"; shift
if ! is_job "$JOB"; then
  echo "spark-submit.sh: unknown job '$JOB'; valid jobs: $JOBS" >&2
  exit 2
fi

PYTHON="${LOOKBOOK_PYTHON:-$ROOT/.venv/bin/python}"
if [[ ! -x "$PYTHON" ]]; then
  echo "spark-submit.sh: $PYTHON not found: run 'make setup' first (or set LOOKBOOK_PYTHON)" >&2
  exit 2
fi
# JOB --help (or -h): what the job does, reads and writes, and its settings, from the steps'
# declarations; no Spark, no JVM.
for arg in "$@"; do
  if [[ "$arg" == -h || "$arg" == --help ]]; then
    cd "$ROOT"
    PYTHONPATH="$ROOT/lib" exec "$PYTHON" -m lookbook.cli help "$JOB" "$@"
  fi
done

if [[ -n "${SPARK_HOME:-}" ]]; then
  SUBMIT="$SPARK_HOME/bin/spark-submit"
else
  SUBMIT="$(dirname "$PYTHON")/spark-submit"
fi

# The job gets an explicit config path: inside the --py-files zip the package cannot find conf/.
HAS_CONF=0
ARGS=("$@")
for ((i = 0; i < ${#ARGS[@]}; i++)); do
  case "${ARGS[i]}" in
    --conf) HAS_CONF=1; CONF_FILE="${ARGS[i + 1]:-}" ;;
    --conf=*) HAS_CONF=1; CONF_FILE="${ARGS[i]#--conf=}" ;;
  esac
done
if [[ $HAS_CONF == 0 ]]; then
  CONF_FILE="$ROOT/conf/local.yaml"
  set -- --conf "$CONF_FILE" "$@"
fi

# Lists travel NUL-separated through files: a value may hold spaces, quotes or newlines, and
# $(...) would drop NULs and hide a failing command's status.
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Validates the config first: an unknown key fails here, listing the valid ones.
(cd "$ROOT" && PYTHONPATH="$ROOT/lib" "$PYTHON" -m lookbook.cli submit-options "$JOB" "$@") \
  > "$WORK/options"
mapfile -d '' SUBMIT_OPTIONS < "$WORK/options"

# shlex, not eval: quotes are honoured, nothing is expanded or executed.
SPLIT_ARGS='
import shlex, sys
try:
    args = shlex.split(sys.argv[1])
except ValueError as exc:
    sys.exit(f"spark-submit.sh: SPARK_SUBMIT_ARGS does not parse: {exc}")
sys.stdout.write("".join(arg + "\0" for arg in args))
'
"$PYTHON" -c "$SPLIT_ARGS" "${SPARK_SUBMIT_ARGS:-}" > "$WORK/extra" || exit 2
mapfile -d '' EXTRA_OPTIONS < "$WORK/extra"

# The config also travels with --files: a driver in cluster deploy mode runs where the path
# given to the job does not exist, and finds the file in its working directory (YARN and
# Kubernetes put --files there; lookbook.config.config_file looks there). spark-submit keeps
# only the last --files, so one given in SPARK_SUBMIT_ARGS gets the config added to its list.
FILES_OPTIONS=(--files "$CONF_FILE")
for ((i = 0; i < ${#EXTRA_OPTIONS[@]}; i++)); do
  case "${EXTRA_OPTIONS[i]}" in
    --files) EXTRA_OPTIONS[i + 1]="${EXTRA_OPTIONS[i + 1]:-},$CONF_FILE"; FILES_OPTIONS=() ;;
    --files=*) EXTRA_OPTIONS[i]="${EXTRA_OPTIONS[i]},$CONF_FILE"; FILES_OPTIONS=() ;;
  esac
done

PACKAGE="$ROOT/build/lookbook.zip"
LOG_OPTIONS=(--driver-java-options "-Dlog4j2.configurationFile=file:$ROOT/conf/log4j2.properties")
COMMAND=("$SUBMIT" "${SUBMIT_OPTIONS[@]}" "${LOG_OPTIONS[@]}" "${FILES_OPTIONS[@]}"
         "${EXTRA_OPTIONS[@]}" --py-files "$PACKAGE" "$ROOT/jobs/$JOB.py" "$@")
if [[ "${LOOKBOOK_SUBMIT_DRY_RUN:-}" == 1 ]]; then
  printf '%s\0' "${COMMAND[@]}"
  exit 0
fi

(cd "$ROOT" && PYTHONPATH="$ROOT/lib" "$PYTHON" -m lookbook.cli package "$PACKAGE") > /dev/null
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PYTHON}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$PYTHON}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
for ((i = 0; i + 1 < ${#SUBMIT_OPTIONS[@]}; i++)); do
  if [[ "${SUBMIT_OPTIONS[i]}" == --master && "${SUBMIT_OPTIONS[i + 1]}" == local* ]]; then
    export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
  fi
done
cd "$ROOT"
rm -rf "$WORK"
trap - EXIT
exec "${COMMAND[@]}"
