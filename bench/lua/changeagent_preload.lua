-- Preload (setup only, never a measured figure): POST /changes with the bench payload
-- until this thread has BENCH_PRELOAD_PER_THREAD acknowledged writes, then print
-- BENCHDONE and stop the thread (bench/wrk.py interrupts wrk once every thread is done).
-- Requests still in flight on the thread's other connections are abandoned; the server
-- may store them (a preload stores at least what was asked, never fewer).
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

wrk.method = "POST"
wrk.path = "/changes"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"data":' .. os.getenv("BENCH_PAYLOAD") .. '}'

local quota = tonumber(os.getenv("BENCH_PRELOAD_PER_THREAD") or "0")
local acknowledged = 0
local finished = false

function response(status, headers, body)
  if status == 200 then
    acknowledged = acknowledged + 1
  end
  if acknowledged >= quota and not finished then
    finished = true
    io.write("BENCHDONE\n")
    io.flush()
    wrk.thread:stop()
  end
end
