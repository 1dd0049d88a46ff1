#!/usr/bin/env bash
# Install Prometheus and promtool (Debian package `prometheus`) for the integration tests and
# for `promtool check rules streams/monitoring/alerts.yml`, and the Pushgateway (Debian package
# `prometheus-pushgateway`) that `fds replay --pushgateway` pushes to.
#
# Idempotent: returns at once when the three binaries are already on PATH. Needs root (CI runs as
# root) or sudo. The packaged systemd service is not started: the tests run their own
# Prometheus on a random loopback port with a temporary data directory.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 \
    && command -v prometheus-pushgateway >/dev/null 2>&1; then
    echo "prometheus already installed: $(prometheus --version 2>&1 | head -n1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "error: installing prometheus needs root; run as root or install sudo" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
# policy-rc.d exit 101 keeps dpkg from starting the packaged service (no systemd in containers,
# and a service on :9090 would collide with nothing we need).
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    CREATED_POLICY=1
fi
cleanup() { if [ "$CREATED_POLICY" = 1 ]; then $SUDO rm -f "$POLICY"; fi; }
trap cleanup EXIT

$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway >/dev/null

for bin in prometheus promtool prometheus-pushgateway; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        echo "error: apt-get installed 'prometheus' and 'prometheus-pushgateway' but $bin is not on PATH" >&2
        exit 1
    fi
done
echo "installed: $(prometheus --version 2>&1 | head -n1)"
