#!/usr/bin/env bash
# Make sure the real servers the tests talk to are running on loopback.
# Starts any that is installed but stopped; installs none (the machine image has them).
set -u

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local name=$1 port=$2
  for _ in $(seq 1 60); do port_open "$port" && { echo "services: $name up on $port"; return 0; }; sleep 0.5; done
  echo "services: $name did not come up on $port" >&2
  return 1
}

if ! port_open 3306 && [ -x /usr/sbin/mariadbd ]; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  wait_port mariadb 3306 || true
fi
if ! port_open 6379 && command -v redis-server >/dev/null; then
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port redis 6379 || true
fi
if ! port_open 5432 && command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  wait_port postgresql 5432 || true
fi
for pair in mariadb:3306 redis:6379 postgresql:5432; do
  port_open "${pair#*:}" && echo "services: ${pair%%:*} reachable" || echo "services: ${pair%%:*} NOT reachable"
done
exit 0
