# Shared by scripts/bench and scripts/bench-changes (sourced, not run): the target directory and
# a fresh `mangrove serve` on a free port. The sourcing script defines `die MESSAGE`.

# The directory cargo builds into: $CARGO_TARGET_DIR, or target/ under the repository.
bench_target_dir() {
  if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
    realpath -m "$CARGO_TARGET_DIR"
  else
    echo "$ROOT/target"
  fi
}

# start_mangrove BIN DATA_DIR OUT LOG [PREFIX...]: starts `BIN serve` on port 0 (the server
# picks a free one) on 127.0.0.1 with a data directory DATA_DIR, stdout to OUT and stderr to LOG,
# run under PREFIX (e.g. taskset -c 0), and waits up to 30 s for its ready line. Sets
# MANGROVE_PID and MONGO_ADDR (host:port).
start_mangrove() {
  local bin=$1 data=$2 out=$3 log=$4 _
  shift 4
  "$@" "$bin" serve --port 0 --bind 127.0.0.1 --data-dir "$data" >"$out" 2>"$log" &
  MANGROVE_PID=$!
  MONGO_ADDR=""
  for _ in $(seq 300); do
    if ! kill -0 "$MANGROVE_PID" 2>/dev/null; then
      die "mangrove exited before it was ready"
    fi
    MONGO_ADDR="$(sed -n 's/^mangrove ready: listening on \([^,]*\),.*/\1/p' "$out")"
    [[ -n "$MONGO_ADDR" ]] && return 0
    sleep 0.1
  done
  die "mangrove did not print its ready line within 30 s"
}

# stop_mangrove: SIGTERM to MANGROVE_PID if it is running, and wait for it.
stop_mangrove() {
  if [[ -n "${MANGROVE_PID:-}" ]] && kill -0 "$MANGROVE_PID" 2>/dev/null; then
    kill -TERM "$MANGROVE_PID" 2>/dev/null || true
    wait "$MANGROVE_PID" 2>/dev/null || true
  fi
}
