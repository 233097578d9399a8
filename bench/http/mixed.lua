-- A mixed load: GET /v1/products/{id} over the ids in $GETS, and one request in $EVERY
-- (default 10) a DELETE (soft: row, audit entry, outbox event) of the next id of $DELS,
-- each id once: wrk thread t of $THREADS takes the t-th share of that list, in order.
local next_thread = 0
function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  gets, dels = {}, {}
  for line in io.lines(os.getenv("GETS")) do gets[#gets + 1] = line end
  for line in io.lines(os.getenv("DELS")) do dels[#dels + 1] = line end
  every = tonumber(os.getenv("EVERY") or "10")
  local share = math.floor(#dels / tonumber(os.getenv("THREADS") or "1"))
  pos = tid * share
  last = pos + share
  n = 0
  math.randomseed(42 + tid)
end

function request()
  n = n + 1
  if n % every == 0 then
    pos = pos + 1
    if pos > last then
      error("out of ids: give the run more")
    end
    return wrk.format("DELETE", "/v1/products/" .. dels[pos])
  end
  return wrk.format("GET", "/v1/products/" .. gets[math.random(#gets)])
end
