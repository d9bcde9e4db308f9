#!/usr/bin/env bash
# Regenerates the small directory sources the generator tests read (tests/data/sources/):
# a CSV of bank transactions, a numeric CSV, GitHub-style events as JSON lines (.json.gz), and
# three license texts from /usr/share/common-licenses compressed as .bz2, .xz and .zst. The
# output is deterministic (awk's seeded rand, gzip -n); the files are committed, so tests need
# none of these tools except for checking what they decompress.
set -euo pipefail
cd "$(dirname "$0")"
out=sources
rm -rf "$out"
mkdir -p "$out/bank" "$out/numeric" "$out/events" "$out/text"

awk 'BEGIN {
    srand(12); print "date,account,counterparty,amount,currency,balance";
    split("EUR USD GBP CHF", cur, " ");
    split("Grocer Utility Payroll Rent Transfer Cafe Pharmacy Airline Bookshop Insurance", who, " ");
    bal = 2500;
    for (i = 0; i < 900; i++) {
        amt = int(rand() * 200000 - 90000) / 100; bal += amt;
        printf "2024-%02d-%02d,DE%020d,%s %d,%.2f,%s,%.2f\n", 1 + int(rand() * 12),
            1 + int(rand() * 28), int(rand() * 1e15), who[1 + int(rand() * 10)],
            int(rand() * 1000), amt, cur[1 + int(rand() * 4)], bal;
    }
}' > "$out/bank/transactions.csv"

awk 'BEGIN {
    srand(34); print "station,t,temperature_c,pressure_hpa,humidity_pct,wind_ms";
    for (i = 0; i < 1500; i++)
        printf "S%03d,%d,%.3f,%.2f,%.1f,%.2f\n", int(rand() * 200), 1700000000 + i * 60,
            -10 + rand() * 45, 960 + rand() * 80, rand() * 100, rand() * 30;
}' > "$out/numeric/measurements.csv"

awk 'BEGIN {
    srand(56);
    split("PushEvent WatchEvent IssuesEvent ForkEvent PullRequestEvent CreateEvent", ty, " ");
    split("alice bob carol dave erin frank grace heidi", us, " ");
    for (i = 0; i < 1200; i++)
        printf "{\"id\":\"%d\",\"type\":\"%s\",\"actor\":{\"login\":\"%s%d\"},\"repo\":{\"name\":\"org%d/proj%d\"},\"created_at\":\"2024-01-01T%02d:%02d:%02dZ\",\"payload\":{\"size\":%d}}\n",
            30000000000 + i * 7 + int(rand() * 7), ty[1 + int(rand() * 6)],
            us[1 + int(rand() * 8)], int(rand() * 100), int(rand() * 50), int(rand() * 500),
            int(i / 50), int(rand() * 60), int(rand() * 60), int(rand() * 20);
}' | gzip -n -9 > "$out/events/2024-01-01-0.json.gz"

licenses=/usr/share/common-licenses
bzip2 -9 -c "$licenses/GPL-3" > "$out/text/gpl-3.txt.bz2"
xz -9 -c "$licenses/Apache-2.0" > "$out/text/apache-2.0.txt.xz"
zstd -q -19 -c "$licenses/MPL-2.0" > "$out/text/mpl-2.0.txt.zst"
