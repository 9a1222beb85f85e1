#!/usr/bin/env bash
# CI for the Debian package (issue 5): build it with dpkg-buildpackage, lint it,
# verify the systemd unit, install it with apt, smoke-test the installed daemon
# and tools with Debian's own python3 and libraries, then purge it and check
# that nothing but the spool is left. Needs root and Debian bookworm.
#
# Usage: bash .ci/debian.sh      (from anywhere; 15-30 s once the build
#                                 dependencies are installed)
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

# Debian's python3 and nothing else: no pyenv shims, no pip site-packages, no
# PYTHONPATH pointing at the checkout.
CLEAN=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root)
PY=/usr/bin/python3
TOOLS=(hacheck haup hadown hastatus hashowdowned halist haupdown)
SPOOL=/var/spool/hacheck
KEEP_SERVICE=debian-ci-keep
REMOTE_SERVICE=debian-ci-remote
DOWN_SERVICE=debian-ci-smoke

fail() { echo "debian.sh: FAIL: $*" >&2; exit 1; }
step() { echo "== debian: $*"; }

[ "$(id -u)" = 0 ] || fail "must run as root (it installs and purges a package)"

WORK="$(mktemp -d /tmp/hacheck-debian.XXXXXX)"
PIDS=()
SPOOL_EXISTED=no
[ -d "$SPOOL" ] && SPOOL_EXISTED=yes
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -f "$SPOOL/$KEEP_SERVICE" "$SPOOL/$DOWN_SERVICE" "$SPOOL/$REMOTE_SERVICE"
    if [ "$SPOOL_EXISTED" = no ] && ! dpkg -s hacheck >/dev/null 2>&1; then
        rmdir "$SPOOL" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# http METHOD URL [FORM]: prints the status code, a space and the body.
http() {
    "${CLEAN[@]}" "$PY" - "$@" <<'EOF'
import sys, urllib.error, urllib.parse, urllib.request
method, url = sys.argv[1], sys.argv[2]
data = sys.argv[3].encode() if len(sys.argv) > 3 else None
request = urllib.request.Request(url, data=data, method=method)
try:
    with urllib.request.urlopen(request, timeout=20) as response:
        code, body = response.status, response.read()
except urllib.error.HTTPError as err:
    code, body = err.code, err.read()
print(code, body.decode("utf-8", "replace"))
EOF
}

# expect URL CODE [TEXT]: GET URL answers CODE (and a body containing TEXT).
expect() {
    local answer
    answer="$(http GET "$1")" || fail "GET $1: no answer"
    [ "${answer%% *}" = "$2" ] || fail "GET $1: expected $2, got: $answer"
    if [ $# -ge 3 ] && [[ "$answer" != *"$3"* ]]; then
        fail "GET $1: expected a body containing '$3', got: $answer"
    fi
    echo "   GET $1 -> ${answer:0:100}"
}

spare_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {  # wait_port PORT PID LOG
    local _
    for _ in $(seq 100); do
        if "$PY" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$1" 2>/dev/null; then
            return 0
        fi
        kill -0 "$2" 2>/dev/null || { cat "$3" >&2; fail "process $2 exited before listening on $1"; }
        sleep 0.2
    done
    cat "$3" >&2
    fail "nothing listening on port $1 after 20s"
}

# Prefix that runs a command as the service user, the way the unit does (it
# execs, so $! of a background job is the daemon itself).
AS_HACHECK=(setpriv --reuid=hacheck --regid=hacheck --init-groups --)

step "build dependencies"
# debian/control's Build-Depends, and what this script uses (man-db: the
# manual pages behind the unit's Documentation= are looked up with man).
BUILD_DEPS=(build-essential dpkg-dev debhelper dh-python man-db python3-all python3-setuptools
            python3-asyncpg python3-pymysql python3-prometheus-client python3-redis python3-tornado python3-yaml
            lintian systemd logrotate util-linux)
if ! apt-get install -y -qq --no-install-recommends "${BUILD_DEPS[@]}" >"$WORK/apt.log" 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${BUILD_DEPS[@]}" >"$WORK/apt.log" 2>&1 \
        || { cat "$WORK/apt.log" >&2; fail "cannot install the build dependencies"; }
fi

step "version"
DEB_VERSION="$(dpkg-parsechangelog -l debian/changelog -S Version)"
PY_VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' hacheck/__init__.py)"
[ "$DEB_VERSION" = "$PY_VERSION" ] \
    || fail "debian/changelog says $DEB_VERSION but hacheck/__init__.py says $PY_VERSION"
echo "   $DEB_VERSION"

step "dpkg-buildpackage -us -uc -b (in a copy of the tree)"
DEB="$(bash .ci/build-deb.sh "$WORK")"
CONTENTS="$(dpkg-deb -c "$DEB")"
for tool in "${TOOLS[@]}"; do
    grep -q " \./usr/bin/$tool\$" <<<"$CONTENTS" || fail "the package has no /usr/bin/$tool"
    grep -q " \./usr/share/man/man1/$tool\.1\.gz\$" <<<"$CONTENTS" || fail "the package has no man page for $tool"
done
grep -q " \./usr/share/man/man5/hacheck\.yaml\.5\.gz\$" <<<"$CONTENTS" || fail "the package has no hacheck.yaml(5)"
grep -q " \./usr/share/doc/hacheck/docs/debian\.md\$" <<<"$CONTENTS" || fail "the package has no docs/debian.md"
if grep -q 'dist-packages/tests/' <<<"$CONTENTS"; then fail "the package ships the test suite"; fi
echo "   $(basename "$DEB"), $(stat -c %s "$DEB") bytes"

# From here on, nothing may import the checkout: run everything from /.
cd /

step "lintian (errors fail)"
lintian --allow-root --fail-on error "$WORK"/hacheck_*.changes \
    || fail "lintian found errors"
# The manual pages: no lintian tag of any level about them.
man_tags="$(lintian --allow-root -I -E --pedantic "$WORK"/hacheck_*.changes 2>&1 \
    | grep -Ei 'manpage|manual|groff|whatis' || true)"
[ -z "$man_tags" ] || fail "lintian on the manual pages: $man_tags"

step "apt install ./$(basename "$DEB")"
if dpkg -s hacheck >/dev/null 2>&1; then
    echo "   purging an installed hacheck first"
    apt-get purge -y -qq hacheck >/dev/null
fi
(cd "$WORK" && apt-get install -y -qq "./$(basename "$DEB")") >"$WORK/install.log" 2>&1 \
    || { cat "$WORK/install.log" >&2; fail "apt install failed"; }
[ "$(dpkg-query -W -f '${db:Status-Status}' hacheck)" = installed ] || fail "hacheck is not installed"
getent passwd hacheck >/dev/null || fail "postinst made no hacheck user"
getent group hacheck >/dev/null || fail "postinst made no hacheck group"
check_stat() {  # check_stat PATH "OWNER:GROUP MODE"
    local actual
    actual="$(stat -c '%U:%G %a' "$1")"
    [ "$actual" = "$2" ] || fail "$1 is $actual, expected $2"
}
check_stat /etc/hacheck/hacheck.yaml "root:hacheck 640"
check_stat "$SPOOL" "root:hacheck 2775"
check_stat /var/log/hacheck "hacheck:adm 2750"
dpkg-query -W -f '${Conffiles}\n' hacheck | grep -q '/etc/hacheck/hacheck.yaml' \
    || fail "/etc/hacheck/hacheck.yaml is not a conffile"
for tool in "${TOOLS[@]}"; do
    [ "$(head -1 "/usr/bin/$tool")" = "#!/usr/bin/python3" ] \
        || fail "/usr/bin/$tool does not run Debian's /usr/bin/python3"
done
"${CLEAN[@]}" "$PY" - <<'EOF' || fail "hacheck does not run on Debian's python3 libraries"
import sys
import tornado, yaml, pymysql, redis, asyncpg, prometheus_client
import hacheck, hacheck.process.main, hacheck.cli
for module in (tornado, yaml, pymysql, redis, asyncpg, prometheus_client, hacheck):
    assert module.__file__.startswith("/usr/lib/python3/dist-packages/"), module.__file__
print(f"   python {sys.version.split()[0]}, tornado {tornado.version}, hacheck {hacheck.__version__}"
      f" from {hacheck.__file__}")
EOF

step "systemd-analyze verify (offline: no running systemd needed)"
# verify also runs `man hacheck` for Documentation=man:hacheck(1) when man exists.
man_check=--man=yes
command -v man >/dev/null || man_check=--man=no
# It exits 0 on unknown keys and bad values, only warning: any output fails.
verify_output="$(systemd-analyze verify "$man_check" /lib/systemd/system/hacheck.service \
    /lib/systemd/system/hacheck.socket /lib/systemd/system/hacheck-agent@3334.socket 2>&1)" \
    || fail "systemd-analyze verify failed: $verify_output"
[ -z "$verify_output" ] || fail "systemd-analyze verify warns: $verify_output"
grep -qx 'Type=notify' /lib/systemd/system/hacheck.service || fail "the unit is not Type=notify"
grep -qx 'ExecStart=/usr/bin/hacheck -c /etc/hacheck/hacheck.yaml -p 3333' \
    /lib/systemd/system/hacheck.service || fail "the unit's ExecStart changed"
systemd-analyze security --offline=yes /lib/systemd/system/hacheck.service 2>/dev/null \
    | tail -1 | sed 's/^/   /' || true
"${CLEAN[@]}" "$PY" -c 'import sys, yaml; assert yaml.safe_load(open(sys.argv[1])) is None' \
    /etc/hacheck/hacheck.yaml || fail "the packaged hacheck.yaml is not all comments"

step "run /usr/bin/hacheck as user hacheck with the packaged config and spool"
UPSTREAM_PORT="$(spare_port)"
mkdir "$WORK/www"
echo "upstream for the debian smoke test" >"$WORK/www/index.html"
(cd "$WORK/www" && exec "${CLEAN[@]}" "$PY" -m http.server --bind 127.0.0.1 "$UPSTREAM_PORT") \
    >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
wait_port "$UPSTREAM_PORT" "$!" "$WORK/upstream.log"

# What systemd does for Type=notify: hand hacheck a datagram socket and wait
# for READY=1 (abstract, so the hacheck user needs no file permission).
NOTIFY_NAME="hacheck-debian-ci-$$"
"${CLEAN[@]}" "$PY" - "$NOTIFY_NAME" >"$WORK/notify.log" 2>&1 <<'EOF' &
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind("\0" + sys.argv[1])
sock.settimeout(30)
while True:
    message = sock.recv(4096).decode()
    if "READY=1" in message.split("\n"):
        print("READY=1")
        break
EOF
NOTIFY_PID=$!
PIDS+=($NOTIFY_PID)
for _ in $(seq 100); do grep -q "@$NOTIFY_NAME\$" /proc/net/unix && break; sleep 0.1; done
grep -q "@$NOTIFY_NAME\$" /proc/net/unix || fail "the fake NOTIFY_SOCKET @$NOTIFY_NAME never appeared"
PORT="$(spare_port)"
"${CLEAN[@]}" NOTIFY_SOCKET="@$NOTIFY_NAME" "${AS_HACHECK[@]}" \
    /usr/bin/hacheck -c /etc/hacheck/hacheck.yaml -p "$PORT" -B 127.0.0.1 >"$WORK/hacheck.log" 2>&1 &
HACHECK_PID=$!
PIDS+=($HACHECK_PID)
wait_port "$PORT" "$HACHECK_PID" "$WORK/hacheck.log"
wait "$NOTIFY_PID" || { cat "$WORK/hacheck.log" >&2; fail "hacheck sent no READY=1 to \$NOTIFY_SOCKET"; }
echo "   listening on $PORT, sent READY=1"

BASE="http://127.0.0.1:$PORT"
expect "$BASE/spool/$DOWN_SERVICE/80/" 200
expect "$BASE/http/$DOWN_SERVICE/$UPSTREAM_PORT/" 200
expect "$BASE/http/$DOWN_SERVICE/$UPSTREAM_PORT/index.html" 200 "upstream for the debian smoke test"

"${CLEAN[@]}" /usr/bin/hadown -r "debian ci" "$DOWN_SERVICE" || fail "/usr/bin/hadown failed"
check_stat "$SPOOL/$DOWN_SERVICE" "root:hacheck 644"
expect "$BASE/spool/$DOWN_SERVICE/80/" 503 "Service $DOWN_SERVICE in down state"
expect "$BASE/http/$DOWN_SERVICE/$UPSTREAM_PORT/" 503 "debian ci"
status=0
"${CLEAN[@]}" /usr/bin/hastatus "$DOWN_SERVICE" >"$WORK/hastatus.out" || status=$?
[ "$status" = 1 ] && grep -q "^DOWN" "$WORK/hastatus.out" \
    || fail "/usr/bin/hastatus of a downed service: exit $status, $(cat "$WORK/hastatus.out")"
"${CLEAN[@]}" /usr/bin/haup "$DOWN_SERVICE" || fail "/usr/bin/haup failed"
expect "$BASE/spool/$DOWN_SERVICE/80/" 200
expect "$BASE/http/$DOWN_SERVICE/$UPSTREAM_PORT/" 200
"${CLEAN[@]}" /usr/bin/halist -p "$PORT" | grep -q "^$DOWN_SERVICE " \
    || fail "/usr/bin/halist does not list $DOWN_SERVICE"
answer="$(http POST "$BASE/spool/$DOWN_SERVICE/0/x" "status=down&reason=remote")"
[ "${answer%% *}" = 403 ] || fail "remote spool change not refused by default: $answer"
kill "$HACHECK_PID"
wait "$HACHECK_PID" 2>/dev/null || true

# start_sandboxed LOG RW_PATH... -- ARGS...: /usr/bin/hacheck ARGS as user
# hacheck on a new $PORT (sets $HACHECK_PID), confined the way the unit's
# hardening would confine it (systemd itself does not run here): the whole file
# system read-only (ProtectSystem=strict) but for the RW_PATHs
# (ReadWritePaths=), /home and /root hidden (ProtectHome=yes).
start_sandboxed() {
    local log="$1" rw=()
    shift
    while [ "$1" != -- ]; do rw+=("$1"); shift; done
    shift
    PORT="$(spare_port)"
    # unshare and sh exec, so $! is the daemon itself.
    unshare --mount --propagation private -- /bin/sh -ec '
        while [ "$1" != -- ]; do mount --bind "$1" "$1"; shift; done; shift
        mount -o remount,bind,ro /
        for home in /home /root; do mount -t tmpfs -o mode=000 tmpfs "$home"; done
        exec "$@"' sandboxed "${rw[@]}" -- \
        "${CLEAN[@]}" "${AS_HACHECK[@]}" /usr/bin/hacheck -p "$PORT" -B 127.0.0.1 "$@" >"$log" 2>&1 &
    HACHECK_PID=$!
    PIDS+=($HACHECK_PID)
    wait_port "$PORT" "$HACHECK_PID" "$log"
}

step "the unit's hardening: log_path file, logrotate, spool read-only unless allowed"
cp /etc/hacheck/hacheck.yaml "$WORK/hardened.yaml"
printf 'log_path: /var/log/hacheck/hacheck.log\nallow_remote_spool_changes: true\n' >>"$WORK/hardened.yaml"
chmod 644 "$WORK/hardened.yaml"
chmod 755 "$WORK"
start_sandboxed "$WORK/hacheck-hardened.log" /var/log/hacheck -- -v -c "$WORK/hardened.yaml"
expect "http://127.0.0.1:$PORT/spool/before-rotation/1/" 200
[ -s /var/log/hacheck/hacheck.log ] || fail "hacheck wrote nothing to /var/log/hacheck/hacheck.log"
logrotate -f -s "$WORK/logrotate.state" /etc/logrotate.d/hacheck || fail "logrotate failed"
[ -f /var/log/hacheck/hacheck.log.1 ] || fail "logrotate did not rotate /var/log/hacheck/hacheck.log"
expect "http://127.0.0.1:$PORT/spool/after-rotation/1/" 200
grep -q after-rotation /var/log/hacheck/hacheck.log \
    || fail "hacheck did not reopen /var/log/hacheck/hacheck.log after rotation"
echo "   logs to /var/log/hacheck/hacheck.log; rotated, and hacheck writes to the new file"
answer="$(http POST "http://127.0.0.1:$PORT/spool/$REMOTE_SERVICE/0/x" "status=down&reason=remote")"
[ "${answer%% *}" != 200 ] && [ ! -e "$SPOOL/$REMOTE_SERVICE" ] \
    || fail "the service wrote the spool without ReadWritePaths=/var/spool/hacheck: $answer"
echo "   remote spool change without the drop-in -> ${answer:0:100}"
kill "$HACHECK_PID"
wait "$HACHECK_PID" 2>/dev/null || true

# With the drop-in the unit's comment describes, user hacheck writes the spool
# (group hacheck, setgid), and root's tools see its downtimes.
start_sandboxed "$WORK/hacheck-remote.log" /var/log/hacheck /var/spool/hacheck -- -c "$WORK/hardened.yaml"
answer="$(http POST "http://127.0.0.1:$PORT/spool/$REMOTE_SERVICE/0/x" "status=down&reason=remote")"
[ "${answer%% *}" = 200 ] || fail "remote downtime with ReadWritePaths=/var/spool/hacheck: $answer"
check_stat "$SPOOL/$REMOTE_SERVICE" "hacheck:hacheck 644"
status=0
"${CLEAN[@]}" /usr/bin/hastatus "$REMOTE_SERVICE" >/dev/null || status=$?
[ "$status" = 1 ] || fail "/usr/bin/hastatus does not see the downtime the service wrote"
echo "   with the drop-in, user hacheck writes a downtime that root's hastatus sees"
kill "$HACHECK_PID"
wait "$HACHECK_PID" 2>/dev/null || true

step "upgrade (reinstall) keeps downtimes, user and modes"
"${CLEAN[@]}" /usr/bin/hadown -r "kept across upgrade and purge" "$KEEP_SERVICE" || fail "hadown failed"
dpkg -i "$DEB" >"$WORK/reinstall.log" 2>&1 || { cat "$WORK/reinstall.log" >&2; fail "dpkg -i (upgrade) failed"; }
[ -f "$SPOOL/$KEEP_SERVICE" ] || fail "the upgrade removed a downtime"
check_stat "$SPOOL" "root:hacheck 2775"
getent passwd hacheck >/dev/null || fail "the upgrade removed the hacheck user"

step "apt purge leaves nothing behind but the spool"
if pgrep -u hacheck >/dev/null; then fail "processes of user hacheck still run: $(pgrep -a -u hacheck)"; fi
apt-get purge -y -qq hacheck >"$WORK/purge.log" 2>&1 || { cat "$WORK/purge.log" >&2; fail "apt purge failed"; }
if dpkg -s hacheck >/dev/null 2>&1; then fail "dpkg still knows hacheck after purge"; fi
if [ -n "$(dpkg -L hacheck 2>/dev/null)" ]; then fail "dpkg -L hacheck is not empty after purge"; fi
for path in /etc/hacheck /var/log/hacheck /lib/systemd/system/hacheck.service /etc/logrotate.d/hacheck \
        /usr/lib/python3/dist-packages/hacheck /usr/share/doc/hacheck /usr/share/man/man1/hadown.1.gz \
        /etc/systemd/system/multi-user.target.wants/hacheck.service /lib/systemd/system/hacheck.socket \
        /etc/systemd/system/sockets.target.wants/hacheck.socket \
        /var/lib/systemd/deb-systemd-helper-enabled/hacheck.service.dsh-also \
        /var/lib/systemd/deb-systemd-helper-enabled/hacheck.socket.dsh-also "${TOOLS[@]/#//usr/bin/}"; do
    if [ -e "$path" ] || [ -L "$path" ]; then fail "$path is still there after purge"; fi
done
if getent passwd hacheck >/dev/null; then fail "the hacheck user is still there after purge"; fi
if getent group hacheck >/dev/null; then fail "the hacheck group is still there after purge"; fi
if dpkg-statoverride --list | grep -q hacheck; then fail "dpkg-statoverride entries left after purge"; fi
[ -f "$SPOOL/$KEEP_SERVICE" ] || fail "purge removed the operators' downtime $SPOOL/$KEEP_SERVICE"
check_stat "$SPOOL" "root:root 755"
check_stat "$SPOOL/$KEEP_SERVICE" "root:root 644"
check_stat "$SPOOL/$REMOTE_SERVICE" "root:root 644"
echo "   only $SPOOL is left (with its downtimes)"

step "OK"
