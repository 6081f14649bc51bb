-- Scenario k's context rows: GET the page URLs listed in BENCH_PAGES_FILE (one path a
-- line, the pages of the first changes in order), round robin over the thread's
-- connections, until this thread has BENCH_PRELOAD_PER_THREAD answers; then print
-- BENCHDONE and stop the thread (bench/wrk.py interrupts wrk once every thread is done).
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local paths = {}
for line in io.lines(os.getenv("BENCH_PAGES_FILE")) do
  paths[#paths + 1] = line
end
local quota = tonumber(os.getenv("BENCH_PRELOAD_PER_THREAD") or "0")
local sent = 0
local answered = 0
local finished = false

function request()
  sent = sent + 1
  return wrk.format("GET", paths[((sent - 1) % #paths) + 1])
end

function response(status, headers, body)
  if status == 200 then
    answered = answered + 1
  end
  if answered >= quota and not finished then
    finished = true
    io.write("BENCHDONE\n")
    io.flush()
    wrk.thread:stop()
  end
end
