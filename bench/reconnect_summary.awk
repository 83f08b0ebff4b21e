# Summarizes bench/reconnect_rate.sh samples (t_secs, connected gauge,
# connects counter of the new process):  awk -v n=N -F'\t' -f THIS samples.tsv
# Percentiles use the counter (connects completed: hello checked, device
# loaded, welcome about to be sent), since the gauge also counts connections
# still waiting for the database; 100 % needs both at N.
NR > 1 {
  if ($3 != "" && $3 > 0 && first == "") first = $1
  if (!p50 && $3 >= n*0.5) p50 = $1; if (!p90 && $3 >= n*0.9) p90 = $1
  if (!p99 && $3 >= n*0.99) p99 = $1; if (!p100 && $3 >= n && $2 >= n) p100 = $1
  if (prev != "" && $1 > prev) { r = ($3 - prevk) / ($1 - prev); if (r > peak) { peak = r; peakt = $1 } }
  if (prev != "" && $1 - prev > gap) { gap = $1 - prev; gapt = prev }
  prev = $1; prevk = $3; last = $3
}
END {
  printf "first completed connect seen at %s s; 50%% at %s s, 90%% at %s s, 99%% at %s s, 100%% at %s s after launch\n", first, p50, p90, p99, (p100 ? p100 : "never")
  printf "peak connect rate %.0f/s (interval ending at %s s); connects in the new process: %d (N=%d)\n", peak, peakt, last, n
  printf "longest gap between /metrics answers: %.1f s (from %s s; the scrape itself stalls during the storm)\n", gap, gapt
}
