#!/usr/bin/env bash
# Build the extension and install it into Debian's PostgreSQL 15.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo pgrx install --release --pg-config /usr/bin/pg_config >/dev/null
echo "install: audit_log installed into $(/usr/bin/pg_config --sharedir)/extension"
