#!/usr/bin/env bash
# Build the extension and install it into Debian's PostgreSQL 15; build the
# audit-log CLI and install it into /usr/local/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo pgrx install --release --pg-config /usr/bin/pg_config >/dev/null
echo "install: audit_log installed into $(/usr/bin/pg_config --sharedir)/extension"
cargo build --release -q -p audit_log_cli
install -m 755 target/release/audit-log /usr/local/bin/audit-log
echo "install: the audit-log CLI installed as /usr/local/bin/audit-log"
