#!/usr/bin/env bash
# Installs Prometheus + promtool (Debian package `prometheus`) for the monitoring tests, once.
# Idempotent: does nothing when promtool is on PATH. Needs root and apt-get; otherwise it says how
# to install them and exits 0, and the monitoring tests fail with the same instructions.
# The package's own prometheus service is never started: tests run their own Prometheus.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "NOTE: promtool/prometheus not found and cannot install them here (needs root and apt-get)." >&2
  echo "      Install them with: sudo apt-get install --no-install-recommends prometheus" >&2
  echo "      (or put the prometheus and promtool binaries of a release on PATH); the monitoring tests need them." >&2
  exit 0
fi

# Keep the package's service from starting: a policy-rc.d that denies every start, unless one exists.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
echo "Installing prometheus (for promtool and the monitoring integration test) with apt-get ..." >&2
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# Belt and braces where systemd runs: the service stays stopped and disabled.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
promtool --version | head -n 1
