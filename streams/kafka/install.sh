#!/usr/bin/env bash
# Make the local Kafka kit runnable on a fresh machine: Java 17+ and Maven (from Debian's
# packages when missing), then the broker jars from Maven Central into ~/.cache/fds/kafka.
# Idempotent and quick once done. Usage: bash streams/kafka/install.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
if ! command -v java >/dev/null 2>&1; then
  need+=(openjdk-17-jre-headless)
fi
if ! command -v mvn >/dev/null 2>&1; then
  need+=(maven)
fi
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: please install ${need[*]} (Java 17+ and Maven) and rerun" >&2
    exit 1
  fi
  echo "install.sh: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

java_major=$(java -version 2>&1 | sed -nE 's/.*version "([0-9]+).*/\1/p' | head -1)
if [[ -z "$java_major" || "$java_major" -lt 17 ]]; then
  echo "install.sh: Kafka 4.x needs Java 17+, found '${java_major:-none}'" >&2
  exit 1
fi

${PYTHON:-python3} -c 'from fds.streams.kafka_kit import ensure_jars; print(ensure_jars())'
