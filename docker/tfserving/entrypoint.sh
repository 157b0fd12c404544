#!/bin/bash
# Starts tensorflow_model_server with the flags docker-compose.yml passes ("$@"), plus dynamic
# batching when BATCHING is on. Runs in the official tensorflow/serving image (bash, sed; no
# curl, no Python) and natively alike.
#
# Why a script: TF Serving refuses to start when --batching_parameters_file is given without
# --enable_batching, so the batching flags cannot sit in compose's `command:` unconditionally.
# And MAX_BATCH_SIZE / BATCH_TIMEOUT_MS / BATCH_THREADS from .env are written over the matching
# lines of serving/config/batching.config, so TF Serving and TorchServe batch with the same bound
# and wait, with as many batches at once as the server has cores.
#
# Environment: BATCHING (true|false), MAX_BATCH_SIZE (rows), BATCH_TIMEOUT_MS, BATCH_THREADS
# (batches run at once: the server's cores, .env SERVER_INTRA_OP_THREADS),
# DEPLOYBENCH_BATCHING_TEMPLATE (serving/config/batching.config as mounted),
# DEPLOYBENCH_BATCHING_FILE (where the rendered copy goes; a tmpfs in the container).
set -euo pipefail

template=${DEPLOYBENCH_BATCHING_TEMPLATE:-/deploybench/config/batching.config}
rendered=${DEPLOYBENCH_BATCHING_FILE:-/tmp/batching.config}

die() {
  echo "tfserving: $*" >&2
  exit 2
}

# A missing export is the most likely first-run mistake: say so in one line.
for arg in "$@"; do
  if [[ $arg == --model_config_file=* && ! -r ${arg#*=} ]]; then
    die "${arg#*=} not found: export the models first (deploybench export --model all" \
      "--out DIR) and point DEPLOYBENCH_ARTIFACTS (.env) at DIR"
  fi
done

batching_args=()
case "${BATCHING:-false}" in
  true | True | TRUE | 1 | yes | on)
    rows=${MAX_BATCH_SIZE:-8}
    wait_ms=${BATCH_TIMEOUT_MS:-5}
    [[ $rows =~ ^[1-9][0-9]*$ ]] || die "MAX_BATCH_SIZE must be a positive integer, got '$rows'"
    [[ $wait_ms =~ ^[0-9]+$ ]] || die "BATCH_TIMEOUT_MS must be whole milliseconds, got '$wait_ms'"
    threads=${BATCH_THREADS:-$(sed -n 's/^num_batch_threads { value: \([0-9]*\) }.*/\1/p' "$template")}
    [[ $threads =~ ^[1-9][0-9]*$ ]] || die "BATCH_THREADS must be a positive integer, got '$threads'"
    [[ -r $template ]] || die "$template: batching parameters file not readable"
    largest=$(sed -n 's/^max_batch_size { value: \([0-9]*\) }.*/\1/p' "$template")
    [[ -n $largest ]] || die "$template has no 'max_batch_size { value: N }' line"
    # a request may never be smaller than one executed batch may be large
    if ((rows > largest)); then largest=$rows; fi
    sed -e "s/^max_execution_batch_size .*/max_execution_batch_size { value: $rows }/" \
      -e "s/^max_batch_size .*/max_batch_size { value: $largest }/" \
      -e "s/^batch_timeout_micros .*/batch_timeout_micros { value: $((wait_ms * 1000)) }/" \
      -e "s/^num_batch_threads .*/num_batch_threads { value: $threads }/" \
      "$template" >"$rendered"
    batching_args=(--enable_batching=true "--batching_parameters_file=$rendered")
    echo "tfserving: batching on: up to $rows rows per batch, waiting at most $wait_ms ms," \
      "$threads batches at once"
    ;;
  false | False | FALSE | 0 | no | off | "")
    echo "tfserving: batching off"
    ;;
  *)
    die "BATCHING must be true or false, got '$BATCHING'"
    ;;
esac

exec tensorflow_model_server "$@" "${batching_args[@]}"
