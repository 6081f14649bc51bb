-- Shared by the bench's wrk scripts: print one machine-readable summary line.
-- Latencies are in microseconds, as wrk measures them (send -> full response).
function done(summary, latency, requests)
  local e = summary.errors
  local ps = {}
  for _, q in ipairs({1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.9}) do
    ps[#ps + 1] = string.format('"%s":%d', tostring(q), latency:percentile(q))
  end
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"latency_mean_us":%.1f,' ..
    '"latency_max_us":%d,"percentiles_us":{%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, table.concat(ps, ",")))
end
