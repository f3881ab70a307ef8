#!/usr/bin/env bash
# Source this from the test command: start the single-node HDFS test kit in ../shared/hdfs (when that kit is
# there) for this run, export its client variables (PFS_TEST_HDFS_URI, JAVA_HOME, ARROW_LIBHDFS_DIR,
# CLASSPATH, LD_LIBRARY_PATH) so every backend suite also runs on hdfs://, and stop it when the shell exits,
# whether the tests passed or not. Without the kit nothing starts, and the HDFS suites report one skip that
# says what to set.
#   PFS_HDFS_KIT   the kit's directory (default: ../shared/hdfs beside this checkout)
# The kit may be read-only: its state (conf, data, logs, pids) goes to a fresh directory under /tmp.

pfs_hdfs_kit="${PFS_HDFS_KIT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/../shared/hdfs}"
if [ -n "${PFS_TEST_HDFS_URI:-}" ]; then
    echo "hdfs: using the cluster at $PFS_TEST_HDFS_URI" >&2
elif [ -x "$pfs_hdfs_kit/start.sh" ]; then
    PFS_HDFS_STATE="$(mktemp -d /tmp/pfs-hdfs.XXXXXX)"
    pfs_hdfs_stop() {
        HDFS_KIT_STATE="$PFS_HDFS_STATE" "$pfs_hdfs_kit/stop.sh" >/dev/null 2>&1 || true
        rm -rf "$PFS_HDFS_STATE"
    }
    trap pfs_hdfs_stop EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP
    # The kit writes its export line to stdout and progress to stderr; a failed start fails the run.
    pfs_hdfs_env="$(HDFS_KIT_STATE="$PFS_HDFS_STATE" "$pfs_hdfs_kit/start.sh" 2>"$PFS_HDFS_STATE.log")" || {
        cat "$PFS_HDFS_STATE.log" >&2
        rm -f "$PFS_HDFS_STATE.log"
        exit 1
    }
    rm -f "$PFS_HDFS_STATE.log"
    eval "$pfs_hdfs_env"
    export PFS_HDFS_STATE  # the fault tests find the daemons' pids in $PFS_HDFS_STATE/hdfs.pids
    echo "hdfs: test cluster at $PFS_TEST_HDFS_URI (state $PFS_HDFS_STATE)" >&2
else
    echo "hdfs: no test kit at $pfs_hdfs_kit: the HDFS suites will be skipped" >&2
fi
