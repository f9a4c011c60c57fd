# Sourced by the test scripts: installs Debian's docker-registry (the CNCF
# Distribution registry) when missing, and exports SLUICE_DOCKER_REGISTRY.
# The operator's OCI tests start their own registry on a random loopback
# port; the package's systemd service is not used.
if [ ! -x /usr/bin/docker-registry ]; then
  echo "== installing docker-registry"
  sudo=
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends docker-registry >/dev/null
fi
export SLUICE_DOCKER_REGISTRY=/usr/bin/docker-registry
