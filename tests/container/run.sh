#!/usr/bin/env bash
# The container image, built and run for real (a manual check: not part of `make test` or CI,
# it downloads the service's dependencies and takes about 4 minutes the first time).
#
#   bash tests/container/run.sh            as root, on Debian/Ubuntu (installs podman if missing)
#
# What it proves:
#   - the repo's Dockerfile builds (both stages; libqwen compiled by pip in the build stage);
#   - the image starts with its default command and /health answers 200 (the time from
#     `podman run` to that first 200 is printed, with the image size);
#   - a real transcription (multipart POST /v1/audio/transcriptions, bearer token) works on a
#     tiny random checkpoint made on the host and mounted read-only as a volume at /models;
#   - every process in the container runs as a non-root user (uid 1000);
#   - the image's HEALTHCHECK passes (`podman healthcheck run`);
#   - compose.yaml is valid: against the Compose Specification's JSON schema
#     (check-jsonschema's vendored copy), and through podman-compose's `config`, which
#     interpolates it (refused without QWEN_API_TOKEN, valid with it); then the image runs as
#     compose.yaml's service does (its command, user, environment, init, shm size, stop
#     signal, taken from the resolved file): /health, Ray's metrics on the metrics port, and a
#     stop by SIGINT well within stop_grace_period.
#
# Where Docker Hub cannot be reached, the Dockerfile's default base (python:3.11-slim-bookworm)
# cannot be pulled: the script builds a stand-in from Debian packages (debootstrap minbase +
# python3.11, venv, pip, `python` on PATH) and passes it as BASE_IMAGE. It is cached (built
# once, kept as localhost/qwen-serve-base:bookworm); the stand-in also trusts the host's
# extra CA certificates (/usr/local/share/ca-certificates), so that pip works behind a
# TLS-intercepting proxy. Set QWEN_TEST_BASE=python:3.11-slim-bookworm to test the real base.
#
# Podman inside a VM: the runtime settings below (runc, cgroupfs, file events, ulimits no
# higher than the host's) are what it took on a Debian 12 VM with hybrid cgroups, where crun
# refuses to start ("cgroups in hybrid mode not supported") and podman's default ulimits
# exceed the host's hard limits ("setrlimit RLIMIT_NOFILE: Operation not permitted").
# Without systemd, `podman run` logs "unable to get systemd connection to add healthchecks":
# only podman's periodic timer is missing; `podman healthcheck run` runs the check itself.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}                       # has qwen_serve (for the checkpoint)
BASE=${QWEN_TEST_BASE:-localhost/qwen-serve-base:bookworm}
IMAGE=${QWEN_TEST_IMAGE:-localhost/qwen-serve:test}
PORT=${QWEN_TEST_PORT:-18011}                          # host port for the container's 8011
TOKEN=sk-container-test
NAME=qwen-serve-test-$$                                # the container; $NAME-compose the second
TOOLS=${XDG_CACHE_HOME:-$HOME/.cache}/qwen-serve-container-tools   # check-jsonschema, podman-compose
HEALTH_TIMEOUT=${QWEN_TEST_HEALTH_TIMEOUT:-300}

WORK=$(mktemp -d /tmp/qwen-container.XXXXXX)
cleanup() {
    local rc=$? c
    for c in "$NAME" "$NAME-compose"; do
        podman container exists "$c" 2>/dev/null || continue
        if [ "$rc" != 0 ]; then
            echo "--- $c: log (last 60 lines) ---"
            podman logs --tail 60 "$c" 2>&1 || true
        fi
        podman rm -f -t 5 "$c" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
    [ "$rc" = 0 ] && echo "PASS" || echo "FAIL (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# wait_health CONTAINER: until /health answers 200 on $PORT; fails if the container exits.
wait_health() {
    local t0=$(date +%s.%N)
    until curl -sf -o /dev/null "http://127.0.0.1:$PORT/health"; do
        [ "$(podman inspect --format '{{.State.Running}}' "$1")" = true ] || fail "$1 exited"
        awk -v t="$(since "$t0")" -v max="$HEALTH_TIMEOUT" 'BEGIN { exit !(t > max) }' \
            && fail "$1: no 200 on /health after $HEALTH_TIMEOUT s"
        sleep 0.2
    done
}

# --- tools ----------------------------------------------------------------------------------
step "tools"
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || fail "run as root, or install: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -x "$PY" ] || fail "$PY not found: make install first (the checkpoint is made with qwen_serve)"

nofile=$(ulimit -Hn) nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 16384 ]; } && nproc=16384
cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$WORK/containers.conf
podman --version

# --- compose.yaml ------------------------------------------------------------------------------------
step "compose.yaml: Compose Specification schema, podman-compose config"
if [ ! -x "$TOOLS/bin/podman-compose" ] || [ ! -x "$TOOLS/bin/check-jsonschema" ]; then
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install -q check-jsonschema podman-compose >"$WORK/pip.log" 2>&1 \
        || { cat "$WORK/pip.log"; fail "pip install check-jsonschema podman-compose"; }
fi
"$TOOLS/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$ROOT/compose.yaml"
if env -u QWEN_API_TOKEN "$TOOLS/bin/podman-compose" -f "$ROOT/compose.yaml" config >/dev/null 2>&1; then
    fail "compose.yaml resolves without QWEN_API_TOKEN"
fi
QWEN_API_TOKEN=sk-compose "$TOOLS/bin/podman-compose" -f "$ROOT/compose.yaml" config >"$WORK/resolved.yaml"
"$TOOLS/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$WORK/resolved.yaml"
grep -q 'QWEN_API_TOKEN: sk-compose' "$WORK/resolved.yaml" || fail "token not interpolated"
echo "compose.yaml: valid; refused without QWEN_API_TOKEN"

# --- the stand-in base (cached) --------------------------------------------------------------
if podman image exists "$BASE"; then
    step "base image $BASE: present (podman rmi $BASE to rebuild it)"
elif [[ "$BASE" != localhost/* ]]; then
    step "base image $BASE: pulling"
    podman pull "$BASE"
else
    step "base image $BASE: debootstrap bookworm (minbase) + python3.11"
    rootfs=$WORK/rootfs
    debootstrap --variant=minbase \
        --include=python3.11,python3-venv,python3-pip,python-is-python3,ca-certificates \
        bookworm "$rootfs" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$rootfs" update-ca-certificates >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    # What the official python image sets that matters here; PIP_CERT: pip upgraded from PyPI
    # may use its own CA bundle, which lacks the host's extra certificates.
    tar -C "$rootfs" -c . | podman import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' - "$BASE" >/dev/null
    rm -rf "$rootfs"
fi

# --- the project image -------------------------------------------------------------------------
step "podman build -t $IMAGE --build-arg BASE_IMAGE=$BASE $ROOT"
# --format docker: the OCI image format has no HEALTHCHECK (podman would drop it).
t0=$(date +%s)
podman build --format docker --build-arg "BASE_IMAGE=$BASE" -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT"
echo "built in $(($(date +%s) - t0)) s"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
[ "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" = 1000 ] || fail "image USER is not 1000"

# --- a tiny checkpoint and a WAV on the host ------------------------------------------------------
step "tiny checkpoint (random weights) and a 2 s WAV"
mkdir -p "$WORK/models"
"$PY" - "$WORK" <<'EOF'
import math, struct, sys, wave
from pathlib import Path
from qwen_serve.testing.checkpoint import make_checkpoint

work = Path(sys.argv[1])
# qwen-asr-0.6b, the first default model id, lives in <models_dir>/qwen3-asr-0.6b
make_checkpoint(work / "models" / "qwen3-asr-0.6b", preset="tiny-0.6b", seed=0)
with wave.open(str(work / "tone.wav"), "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(16000)
    w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 16000)))
                           for i in range(32000)))
EOF
chmod -R a+rX "$WORK"              # readable by the container's uid 1000 (mounted read-only)

# --- run it ------------------------------------------------------------------------------------
step "podman run (default command), /models read-only, waiting for /health"
t0=$(date +%s.%N)
podman run -d --name "$NAME" --shm-size=2g -p "127.0.0.1:$PORT:8011" \
    -v "$WORK/models:/models:ro" -e "QWEN_API_TOKEN=$TOKEN" "$IMAGE" >/dev/null
wait_health "$NAME"
startup=$(since "$t0")
echo "/health: 200 after $startup s"

step "transcription: POST /v1/audio/transcriptions (tiny checkpoint, random text)"
curl -sS --fail-with-body -o "$WORK/answer.json" -H "Authorization: Bearer $TOKEN" \
    -F model=qwen-asr-0.6b -F "file=@$WORK/tone.wav" "http://127.0.0.1:$PORT/v1/audio/transcriptions" \
    || { cat "$WORK/answer.json" 2>/dev/null; fail "transcription request"; }
"$PY" - "$WORK/answer.json" <<'EOF'
import json, sys
answer = json.load(open(sys.argv[1]))
print("answer:", answer)
assert isinstance(answer["text"], str), answer           # random weights: any text, often none
assert answer["usage"]["input_token_details"]["audio_tokens"] > 0, answer   # the audio went through
EOF
code=$(curl -s -o /dev/null -w '%{http_code}' -F model=qwen-asr-0.6b -F "file=@$WORK/tone.wav" \
    "http://127.0.0.1:$PORT/v1/audio/transcriptions")
[ "$code" = 401 ] || fail "without the token: $code, not 401"
echo "without the token: 401"

step "non-root"
uid=$(podman exec "$NAME" id -u)
[ "$uid" != 0 ] || fail "podman exec runs as root"
# Every process of the container (Ray's raylet, GCS, workers, the replicas), not only PID 1.
uids=$(podman exec "$NAME" sh -c 'for f in /proc/[0-9]*/status; do awk "/^Uid:/ { print \$2 }" "$f"; done' \
    | sort -u | tr '\n' ' ')
[ "$uids" = "1000 " ] || fail "process uids in the container: $uids"
echo "exec uid $uid; uids of all $(podman top "$NAME" pid | tail -n +2 | wc -l) processes: $uids"

step "HEALTHCHECK"
podman inspect --format '{{json .Config.Healthcheck}}' "$NAME"
podman healthcheck run "$NAME" || fail "podman healthcheck run"
echo "healthy"

podman rm -f -t 5 "$NAME" >/dev/null

# --- the image as compose.yaml's service runs it ---------------------------------------------------
step "compose.yaml's service: command, user, environment, init, shm size, stop signal"
MPORT=$((PORT + 1))
"$PY" - "$WORK/resolved.yaml" "$WORK" <<'EOF'
import sys, yaml
from pathlib import Path
(svc,) = yaml.safe_load(open(sys.argv[1]))["services"].values()
opts = [f"--user={svc['user']}", f"--shm-size={svc['shm_size']}", f"--stop-signal={svc['stop_signal']}"]
opts += ["--init"] * bool(svc.get("init"))
opts += [f"--env={k}={v}" for k, v in svc["environment"].items() if k != "QWEN_API_TOKEN"]
out = Path(sys.argv[2])
(out / "opts").write_text("\n".join(opts) + "\n")
(out / "cmd").write_text("\n".join(svc["command"]) + "\n")
(out / "metrics_port").write_text(str(svc["environment"]["QWEN_METRICS_PORT"]))
(out / "grace").write_text(str(svc["stop_grace_period"]).removesuffix("s"))
EOF
mapfile -t opts <"$WORK/opts"
mapfile -t cmd <"$WORK/cmd"
metrics_port=$(cat "$WORK/metrics_port") grace=$(cat "$WORK/grace")
echo "podman run ${opts[*]} ... ${cmd[*]}"
t0=$(date +%s.%N)
podman run -d --name "$NAME-compose" "${opts[@]}" -e "QWEN_API_TOKEN=$TOKEN" \
    -p "127.0.0.1:$PORT:8011" -p "127.0.0.1:$MPORT:$metrics_port" -v "$WORK/models:/models:ro" \
    "$IMAGE" "${cmd[@]}" >/dev/null
wait_health "$NAME-compose"
startup_compose=$(since "$t0")
echo "/health: 200 after $startup_compose s"
t0=$(date +%s.%N)
until curl -sf -o "$WORK/metrics.txt" "http://127.0.0.1:$MPORT/metrics" && grep -q '^ray_' "$WORK/metrics.txt"; do
    awk -v t="$(since "$t0")" 'BEGIN { exit !(t > 120) }' && fail "no ray_* metrics on port $metrics_port"
    sleep 1
done
echo "Ray's metrics on $metrics_port: $(grep -c '^ray_' "$WORK/metrics.txt") samples"
t0=$(date +%s.%N)
podman stop -t "$grace" "$NAME-compose" >/dev/null
stopped=$(since "$t0")
awk -v t="$stopped" -v g="$grace" 'BEGIN { exit !(t < g - 5) }' || fail "SIGINT did not stop it: killed after $stopped s"
echo "stopped by SIGINT in $stopped s (exit code $(podman inspect --format '{{.State.ExitCode}}' "$NAME-compose"))"

# --- figures -------------------------------------------------------------------------------------------
step "figures ($(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs)"
echo "image $IMAGE (base $BASE): $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.0f", s / 1e6 }') MB)"
echo "start-up, podman run -> first 200 on /health: $startup s (image's CMD, serve run);" \
    "$startup_compose s (compose.yaml's command, python -m qwen_serve.app)"
