-- The security-overhead scenario: one request, repeated; optionally with Basic credentials.
-- BENCH_METHOD (GET or POST; POST sends the bench payload) and BENCH_AUTH (a whole
-- Authorization header value, or empty) come from the environment.
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

wrk.method = os.getenv("BENCH_METHOD")
if wrk.method == "POST" then
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"data":' .. os.getenv("BENCH_PAYLOAD") .. '}'
end
local auth = os.getenv("BENCH_AUTH")
if auth ~= nil and auth ~= "" then
  wrk.headers["Authorization"] = auth
end
