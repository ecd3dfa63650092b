#!/usr/bin/env bash
# `audit-log report`, rendered in headless Chromium (Debian's chromium):
# the report of a clean log, against a signed checkpoint, says INTACT with
# the signature valid; the report of the same log after a superuser edited
# one record in the database says NOT INTACT and shows the first bad event
# (the one the server's verify() names) among its neighbours. Names and
# values written by a hostile role (a script in application_name, markup in
# a table name and in row values) appear as text, and no script runs: the
# page's title, which a script would change, stays the report's own. A
# report from an export file and one against a checkpoint signed by another
# key are checked too. The rendered pages' screenshots and DOMs are kept in
# target/test-artifacts/report/.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(dirname "$here")
cli=${AUDIT_LOG_CLI:-$root/target/release/audit-log}
chromium=${CHROMIUM:-$(command -v chromium || true)}
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -x "$cli" ] || fail "$cli not built (cargo build --release -p audit_log_cli)"
[ -n "$chromium" ] && [ -x "$chromium" ] || fail "chromium is not installed (scripts/setup.sh installs it)"
artifacts=${AUDIT_LOG_ARTIFACTS:-$root/target/test-artifacts/report}
rm -rf "$artifacts"; mkdir -p "$artifacts"
work=$(mktemp -d /tmp/al_report.XXXXXX); chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
db=al_report
dsn="host=$PGHOST port=$PGPORT user=postgres dbname=$db"
q() { psql -X -q -v ON_ERROR_STOP=1 -At -d "$db" "$@"; }
run() { set +e; out=$("$cli" "$@" 2>&1); rc=$?; set -e; }
expect() { [ "$rc" = "$1" ] || fail "$2: exit $rc, expected $1: $out"; }
# render NAME: headless Chromium's DOM of $work/NAME.html in $artifacts/NAME.dom, and a screenshot
render() {
    local page=$artifacts/$1.html
    cp "$work/$1.html" "$page"
    "$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars --virtual-time-budget=2000 \
        --dump-dom "file://$page" >"$artifacts/$1.dom" 2>"$artifacts/$1.chromium.log" ||
        fail "chromium could not render $page: $(tail -3 "$artifacts/$1.chromium.log")"
    "$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,2000 \
        --screenshot="$artifacts/$1.png" "file://$page" >>"$artifacts/$1.chromium.log" 2>&1 ||
        fail "chromium could not take a screenshot of $page"
    [ "$(stat -c %s "$artifacts/$1.png")" -gt 10000 ] || fail "the screenshot of $1 is nearly empty"
    grep -q '<section id="verdict"' "$artifacts/$1.dom" || fail "the rendered $1 report has no verdict section"
}
# no_script NAME: the rendered page holds no element a hostile value could have made
no_script() {
    ! grep -qi '<script\|<img' "$artifacts/$1.dom" || fail "the rendered $1 report holds markup from the log: $(grep -oi '<script.\{0,40\}\|<img.\{0,40\}' "$artifacts/$1.dom" | head -3)"
    grep -q '<title>audit_log report' "$artifacts/$1.dom" || fail "the $1 report's title was changed: $(grep -o '<title>.\{0,60\}' "$artifacts/$1.dom")"
    grep -q '&lt;script&gt;' "$artifacts/$1.dom" || fail "the hostile application name is not shown as text in the $1 report"
}

psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
q <<'SQL' >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric);
CREATE TABLE "<img src=x onerror=alert(1)>" (id int PRIMARY KEY, note text);
SELECT audit_log.enable('accounts');
SELECT audit_log.enable('"<img src=x onerror=alert(1)>"');
INSERT INTO accounts SELECT g, 'owner ' || g, g * 10 FROM generate_series(1, 50) g;
UPDATE accounts SET balance = balance - 5 WHERE id <= 10;
DELETE FROM accounts WHERE id > 45;
ALTER TABLE accounts ADD COLUMN email text;
SELECT audit_log.enable('accounts', exclude_columns => '{email}');
SQL
PGAPPNAME='<script>document.title="pwned"</script>' \
    psql -X -q -v ON_ERROR_STOP=1 -d "$db" \
    -c "INSERT INTO \"<img src=x onerror=alert(1)>\" VALUES (1, '<script>document.title=\"pwned\"</script>')" \
    -c "UPDATE accounts SET owner = '</td></tr></table><h1>forged verdict: INTACT</h1>' WHERE id = 3"

run keygen --out "$work/key"; expect 0 keygen
run keygen --out "$work/other"; expect 0 "keygen of another key"
run checkpoint --dsn "$dsn" --key "$work/key" --out "$work/cp.json"; expect 0 checkpoint
events=$(q -c "SELECT events_checked FROM audit_log.verify()")

# A clean log, from the database, against the signed checkpoint.
run report --dsn "$dsn" --out "$work/clean.html" --checkpoint "$work/cp.json" --pub "$work/key.pub"
expect 0 "report of a clean log"
render clean
grep -q 'Verdict: INTACT' "$artifacts/clean.dom" || fail "the clean report's verdict: $(grep -o '<h2>Verdict[^<]*' "$artifacts/clean.dom")"
grep -q "$events events in" "$artifacts/clean.dom" || fail "the clean report does not count the server's $events events"
grep -q 'signature valid' "$artifacts/clean.dom" || fail "the clean report does not show the checkpoint's valid signature"
grep -q '<svg class="timeline"' "$artifacts/clean.dom" || fail "the clean report has no timeline"
for op in ENABLE DDL OPTIONS; do
    grep -q "<td>$op</td>" "$artifacts/clean.dom" || fail "the configuration changes do not list $op"
done
! grep -q 'id="first-bad"' "$artifacts/clean.dom" || fail "the clean report shows a first bad event"
no_script clean
size=$(stat -c %s "$work/clean.html")
echo "  clean log: INTACT, $events events, signature valid, ${size} bytes; rendered and screenshot"

# The same log as an export file, against a checkpoint signed by another key.
run export --dsn "$dsn" --format records --out "$work/log.jsonl"; expect 0 "records export"
run report "$work/log.jsonl" --out "$work/file.html"; expect 0 "report of an export file"
render file
grep -q 'Verdict: INTACT' "$artifacts/file.dom" || fail "the report of the export file is not INTACT"
run report "$work/log.jsonl" --out "$work/wrongkey.html" --checkpoint "$work/cp.json" --pub "$work/other.pub"
expect 1 "report against a checkpoint and the wrong key"
render wrongkey
grep -q 'Verdict: NOT INTACT' "$artifacts/wrongkey.dom" && grep -q 'Checkpoint refused' "$artifacts/wrongkey.dom" ||
    fail "a checkpoint with a bad signature is not refused in the report"

# One record edited in the database by a superuser: its UPDATE becomes a DELETE.
bad=$(q -c "SELECT id FROM audit_log.events WHERE op = 'UPDATE' ORDER BY id LIMIT 1 OFFSET 4")
q -c "ALTER TABLE audit_log.records DISABLE TRIGGER USER" \
  -c "UPDATE audit_log.records SET payload = decode(replace(encode(payload, 'hex'), encode('UPDATE', 'hex'), encode('DELETE', 'hex')), 'hex') WHERE $bad BETWEEN first_event AND last_event" \
  -c "ALTER TABLE audit_log.records ENABLE TRIGGER USER"
server=$(q -c "SELECT first_bad_event FROM audit_log.verify()")
[ -n "$server" ] || fail "the server does not see the edit"
run report --dsn "$dsn" --out "$work/tampered.html" --checkpoint "$work/cp.json" --pub "$work/key.pub"
expect 1 "report of a tampered log"
render tampered
grep -q 'Verdict: NOT INTACT' "$artifacts/tampered.dom" || fail "the tampered report's verdict: $(grep -o '<h2>Verdict[^<]*' "$artifacts/tampered.dom")"
grep -q 'id="first-bad"' "$artifacts/tampered.dom" || fail "the tampered report has no first bad event"
grep -q "<tr class=\"bad\"><td>$server</td>" "$artifacts/tampered.dom" || fail "the tampered report does not mark event $server (the server's first bad event)"
grep -q 'content_changed' "$artifacts/tampered.dom" || fail "the tampered report does not say what is wrong"
around=$(python3 -c '
import re, sys
s = open(sys.argv[1]).read()
part = s[s.index("id=\"first-bad\""):s.index("id=\"timeline\"")]
print(len(re.findall(r"<tr[^>]*><td>[0-9]+</td>", part)))' "$artifacts/tampered.dom")
# Events 3 before and 3 after it, all of which this log has.
[ "$around" = 7 ] || fail "the first bad event is shown among $around events, not 7"
no_script tampered
# The superuser's trigger change on audit_log.records is a configuration change, highlighted.
grep -q '<tr class="audit"><td>[0-9]*</td><td>[0-9]*</td><td>[^<]*</td><td>postgres</td><td>[^<]*</td><td>audit_log\.' "$artifacts/tampered.dom" ||
    fail "the superuser's change to audit_log.records is not highlighted among the configuration changes"
echo "  tampered log: NOT INTACT, first bad event $server marked among $around events, as the server says; no script ran"
echo "report: clean, tampered, file and wrong-key reports render in headless Chromium; screenshots in $artifacts"
