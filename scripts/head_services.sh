#!/usr/bin/env bash
# Services the Ray head node runs beside Ray: PostgreSQL (MLflow's backend store and the Optuna study) and
# the MLflow tracking server. cluster.yaml calls it; on the head, run it by hand to restart MLflow.
#
#   scripts/head_services.sh setup                         # PostgreSQL + the mlflow and optuna databases (sudo)
#   scripts/head_services.sh start-mlflow ARGS...          # (re)start `mlflow server ARGS...` in the background,
#                                                          # return once /health answers (or fail with its log)
#   scripts/head_services.sh stop-mlflow
#
# TS_MLFLOW_HOME (default ~/mlflow) holds server.pid, server.log and basic-auth's user database. No password
# or key appears here or in cluster.yaml: MLflow reads its credentials from the environment.
set -euo pipefail

home=${TS_MLFLOW_HOME:-$HOME/mlflow}
pidfile=$home/server.pid
log=$home/server.log
health_timeout_s=${TS_MLFLOW_HEALTH_TIMEOUT_S:-180}  # 7-12 s on 2 cores; a cold first start is slower

die() { echo "head_services.sh: $*" >&2; exit 1; }

setup() {
    cd /  # `sudo -u postgres` cannot read the login user's home: keep psql from complaining about the cwd
    # A fresh instance runs unattended-upgrades at boot: wait for the dpkg lock instead of failing on it.
    local apt=(sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q)
    "${apt[@]}" update
    "${apt[@]}" install postgresql postgresql-client
    sudo systemctl enable --now postgresql  # listens on localhost only (Ubuntu's default): never on the VPC
    # A role named after the login user, so MLflow and the sweep driver connect over the Unix socket with peer
    # authentication (postgresql+psycopg2:///mlflow): no password exists to leak.
    local user
    user=$(id -un)
    if [[ $(sudo -u postgres psql -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$user'") != 1 ]]; then
        sudo -u postgres createuser "$user"
    fi
    local db
    for db in mlflow optuna; do
        if [[ $(sudo -u postgres psql -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'") != 1 ]]; then
            sudo -u postgres createdb --owner="$user" "$db"
        fi
    done
}

# The port in `mlflow server` arguments (5000, MLflow's default, when none is given).
port_of() {
    local port=5000
    while (($#)); do
        case $1 in
            --port | -p) port=$2; shift ;;
            --port=*) port=${1#--port=} ;;
        esac
        shift
    done
    echo "$port"
}

start_mlflow() {
    (($#)) || die "start-mlflow needs the mlflow server arguments"
    command -v mlflow >/dev/null || die "mlflow is not on PATH (is the venv's bin/ first on PATH?)"
    stop_mlflow
    mkdir -p "$home"
    local port
    port=$(port_of "$@")
    cd "$home"  # basic-auth keeps its user database in ./basic_auth.db
    # setsid: its own session and process group (this script has no job control, so setsid need not fork and
    # $! is the group's id), which outlives the ssh session Ray ran us in and which stop_mlflow signals whole.
    # Job execution is for MLflow's GenAI jobs, unused here; off, the server needs ~0.5 GB instead of ~2.4 GB.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid nohup mlflow server "$@" >>"$log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    local waited=0
    until curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/health"; do
        if ! kill -0 "$(<"$pidfile")" 2>/dev/null; then
            tail -n 40 "$log" >&2
            die "mlflow server exited; the lines above are the end of $log"
        fi
        if ((waited >= health_timeout_s)); then
            tail -n 40 "$log" >&2
            stop_mlflow
            die "mlflow server did not answer /health on port $port within ${health_timeout_s} s"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "mlflow server up on port $port (pid $(<"$pidfile"), log $log)"
}

stop_mlflow() {
    [[ -f $pidfile ]] || return 0
    local pgid
    pgid=$(<"$pidfile")
    # Only a group that still runs mlflow: after a reboot the pid in a stale file may belong to anything.
    if pgrep -g "$pgid" -f mlflow >/dev/null; then
        kill -TERM -- "-$pgid" 2>/dev/null || true
        local i
        for ((i = 0; i < 100; i++)); do  # up to 10 s for a clean shutdown
            pgrep -g "$pgid" >/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pgid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

case ${1:-} in
    setup) setup ;;
    start-mlflow) shift; start_mlflow "$@" ;;
    stop-mlflow) stop_mlflow ;;
    *) die "usage: head_services.sh setup | start-mlflow MLFLOW_SERVER_ARGS... | stop-mlflow" ;;
esac
