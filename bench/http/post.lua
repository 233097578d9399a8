-- POST /v1/products with a new sku each time (wrk thread t numbers its own: no conflicts).
local next_thread = 0
function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  n = 0
  run = os.getenv("RUN") or "0"
end

function request()
  n = n + 1
  local body = string.format('{"sku":"P-%s-%d-%d","name":"Posted glass teapot %d"}', run, tid, n, n)
  -- wrk.format uses only the headers it is given: keep the command line's (-H) too.
  local headers = {["Content-Type"] = "application/json"}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  return wrk.format("POST", "/v1/products", headers, body)
end
