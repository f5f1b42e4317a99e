# Sourced by run_gpu_suite.sh and run_multi_gpu.sh (not run on its own).
#
# stage NAME LIMIT_SECONDS COMMAND...: run COMMAND under `timeout` if NAME is in $STAGES, append "NAME rc=.. ..s"
# to $SUMMARY, set FAILED=1 when it fails, and return its exit code (124/137: it hit its limit; the benchmark
# scripts rewrite their JSON after every record, so what it finished is kept). The caller sets STAGES, SUMMARY
# and SUITE_START.
FAILED=0
stage() {
    local name=$1 limit=$2
    shift 2
    [[ " $STAGES " == *" $name "* ]] || return 0
    echo
    echo "== [$name] limit ${limit}s, t=$((SECONDS - SUITE_START))s: $*"
    local start=$SECONDS rc
    timeout -k 10 "$limit" "$@"
    rc=$?
    local took=$((SECONDS - start))
    [[ $rc == 124 || $rc == 137 ]] && echo "== [$name] stopped at its ${limit}s limit (partial results kept)"
    printf '%-10s rc=%-4s %4ss\n' "$name" "$rc" "$took" >>"$SUMMARY"
    [[ $rc == 0 ]] || FAILED=1
    return "$rc"
}
