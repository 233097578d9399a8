-- PATCH /v1/products/{id} (a new name; row, version, audit entry, outbox event) over random
-- ids of the file named by $IDS.
local ids = {}
local n = 0
function init(args)
  for line in io.lines(os.getenv("IDS")) do ids[#ids + 1] = line end
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

function request()
  n = n + 1
  local body = string.format('{"name":"Patched glass teapot %d"}', n)
  local headers = {["Content-Type"] = "application/json"}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  return wrk.format("PATCH", "/v1/products/" .. ids[math.random(#ids)], headers, body)
end
