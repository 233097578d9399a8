-- DELETE /v1/products/{id} (a soft delete: row, audit entry, outbox event) over the ids
-- listed in the file named by $IDS, each id once: wrk thread t of $THREADS takes the t-th
-- share of the list, in order. The file must hold more ids than the run can delete.
local next_thread = 0
function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  ids = {}
  for line in io.lines(os.getenv("IDS")) do ids[#ids + 1] = line end
  local share = math.floor(#ids / tonumber(os.getenv("THREADS") or "1"))
  pos = tid * share
  last = pos + share
end

function request()
  pos = pos + 1
  if pos > last then
    error("out of ids: give the run more")
  end
  return wrk.format("DELETE", "/v1/products/" .. ids[pos])
end
