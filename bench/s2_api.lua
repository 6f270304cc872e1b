-- S2: a valid JWT and an allowed Origin on every request.
-- BENCH_TOKEN (required) and BENCH_ORIGIN come from bench/run.
local token = os.getenv("BENCH_TOKEN")
if not token or token == "" then
  error("BENCH_TOKEN is not set")
end
wrk.headers["Authorization"] = "Bearer " .. token
wrk.headers["Origin"] = os.getenv("BENCH_ORIGIN") or "https://app.example.com"
