-- Durable writes to etcd through its HTTP/JSON gateway: POST /v3/kv/put, one new key per
-- request (keys are unique per run, thread and request, so every write is a new revision
-- of a new key, like appending a change), value = the bench's ~100-byte JSON payload.
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(data)
  local out = {}
  for i = 1, #data, 3 do
    local a, b, c = data:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = alphabet:sub(c1 + 1, c1 + 1) .. alphabet:sub(c2 + 1, c2 + 1) ..
      (b and alphabet:sub(c3 + 1, c3 + 1) or "=") .. (c and alphabet:sub(c4 + 1, c4 + 1) or "=")
  end
  return table.concat(out)
end

wrk.method = "POST"
wrk.path = "/v3/kv/put"
wrk.headers["Content-Type"] = "application/json"

local value = base64(os.getenv("BENCH_PAYLOAD"))
local run = os.getenv("BENCH_RUN") or "0"
local counter = 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function request()
  counter = counter + 1
  local key = string.format("w/%s/%d/%010d", run, tid or 0, counter)
  return wrk.format(nil, nil, nil, '{"key":"' .. base64(key) .. '","value":"' .. value .. '"}')
end
