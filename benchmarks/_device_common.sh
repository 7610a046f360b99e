# Shared by the device_run*.sh scripts (sourced, after BUDGET, START, RES and OUT are set):
# the log streams to $OUT/log.txt, results are packed into $OUT/results.tgz atomically.
exec > >(tee -a "$OUT/log.txt") 2>&1
# the interpreter, explicit: PYTHON=/path/to/venv/bin/python (default python3 on PATH; a link
# to a venv's python found on PATH would not see the venv's packages)
PY="${PYTHON:-python3}"
left() { echo $((BUDGET - ($(date +%s) - START))); }
pack() { tar czf "$OUT/results.tgz.tmp" -C "$RES" . && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz"; }
stamp() { echo "== $(date -u +%T) ($(left) s left) $*"; }
