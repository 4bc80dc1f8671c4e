#!/usr/bin/env bash
# The ai-api benchmark in one command. Installs what it needs (idempotent), builds ai-api and
# the bench tools in release mode, then runs bench/bench.py, which writes
# bench/results/<timestamp>.json and the generated part of docs/performance.md.
#
#   bench/run.sh --quick            # short runs at c=1 and 64: proves every target works
#   bench/run.sh                    # full: c=1,16,64,256, 10 s runs (about 15-20 minutes)
#   bench/run.sh --soak 1000000     # also a bounded soak through ai-api's HTTP door
#   bench/run.sh --help             # every option of bench.py
#
# Own options (the rest go to bench.py): --no-install (use what is there), --no-build (use the
# binaries already built). Environment: LITELLM_SPEC (pip requirement for LiteLLM).
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH")"
LITELLM_SPEC="${LITELLM_SPEC:-litellm[proxy]==1.106.2}"
OHA_VERSION="${OHA_VERSION:-1.16.0}"

install=1
build=1
args=()
for a in "$@"; do
    case "$a" in
        --no-install) install=0 ;;
        --no-build) build=0 ;;
        -h|--help) exec python3 "$BENCH/bench.py" --help ;;
        *) args+=("$a") ;;
    esac
done

say() { echo "[run.sh] $*" >&2; }

# The load runs open a few thousand sockets at once (1,000 held streams, both ends).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

if [ "$install" = 1 ]; then
    if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
        say "installing nginx (Debian)"
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light \
                || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx \
                || say "nginx could not be installed: its runs will be skipped"
        else
            say "not root: install nginx yourself (apt-get install nginx-light); its runs will be skipped"
        fi
    fi
    if ! command -v oha >/dev/null 2>&1 && [ ! -x "$BENCH/.tools/bin/oha" ]; then
        say "installing oha $OHA_VERSION into bench/.tools (cargo install; takes a few minutes)"
        cargo install oha --version "$OHA_VERSION" --locked --root "$BENCH/.tools" \
            || say "oha could not be installed: plain HTTP load will use the Rust driver"
    fi
    if [ ! -x "$BENCH/.venv/bin/litellm" ] || ! "$BENCH/.venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
        say "installing LiteLLM ($LITELLM_SPEC) and matplotlib into bench/.venv"
        python3 -m venv "$BENCH/.venv"
        "$BENCH/.venv/bin/pip" install -q --upgrade pip
        "$BENCH/.venv/bin/pip" install -q "$LITELLM_SPEC" matplotlib \
            || say "LiteLLM could not be installed: its runs will be skipped"
    fi
fi

if [ "$build" = 1 ]; then
    say "building ai-api (release)"
    (cd "$ROOT" && cargo build --release --bin ai-api)
    say "building the bench tools (release, bench/target)"
    cargo build --release --manifest-path "$BENCH/Cargo.toml"
fi

py=python3
if [ -x "$BENCH/.venv/bin/python" ]; then py="$BENCH/.venv/bin/python"; fi
export PATH="$BENCH/.tools/bin:$PATH"
exec "$py" "$BENCH/bench.py" ${args[@]+"${args[@]}"}
