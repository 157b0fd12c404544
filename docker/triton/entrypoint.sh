#!/bin/sh
# The Triton services' entrypoint (docker-compose.yml): runs the command it is given (Triton's
# launcher, serving/triton_server.py), adding --batching when BATCHING=true. The launcher takes
# batching as a flag, and compose cannot add a flag by a variable's value.
set -eu
case "${BATCHING:-}" in
    true) exec "$@" --batching ;;
    false) exec "$@" ;;
    *) echo "BATCHING must be true or false, not '${BATCHING:-}'" >&2; exit 2 ;;
esac
