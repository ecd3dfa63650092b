#!/usr/bin/env bash
# Install everything audit_log needs on a fresh Debian machine, as root.
# Skips what is already present; safe to run again.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
for p in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo python3; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's package starts a cluster on 5432; audit_log never uses it.
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo pgrx --version 2>/dev/null | grep -q '0.18.1'; then
    echo "setup: installing cargo-pgrx 0.18.1 (about 9 minutes)"
    cargo install cargo-pgrx --version 0.18.1 --locked
fi
if [ ! -f "$HOME/.pgrx/config.toml" ] || ! grep -q 'pg15' "$HOME/.pgrx/config.toml"; then
    cargo pgrx init --pg15 /usr/bin/pg_config
fi
