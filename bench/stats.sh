# Statistics shared by the benchmark scripts (sourced by run.sh, point.sh,
# ddl.sh, verify.sh and ab_write.sh).

# The median of the numbers given as arguments (the mean of the two middle
# ones for an even count); an empty line for none.
median() { printf '%s\n' "$@" | sort -g | awk 'NF {a[++n] = $1} END {print (n == 0 ? "" : n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2)}'; }
