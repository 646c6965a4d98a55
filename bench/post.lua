-- wrk script: POST the body in $WRK_BODY (as $WRK_CONTENT_TYPE, JSON by default); print one
-- machine-readable line at the end.
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json"
local file = assert(io.open(os.getenv("WRK_BODY"), "r"))
wrk.body = file:read("*a")
file:close()

-- errors: connect, read, write and timeout failures, and answers with a status of 400 or above (wrk's
-- own "status" count)
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
