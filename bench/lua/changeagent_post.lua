-- Durable writes to changeagent: POST /changes with the bench's ~100-byte JSON payload.
-- Every request stores a new change; the body is the same for every request.
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

wrk.method = "POST"
wrk.path = "/changes"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"data":' .. os.getenv("BENCH_PAYLOAD") .. '}'
