-- `q=` pages whose query text differs on every request (teapot, and not a word no record
-- has), so each has the same 10,000 matches and none finds them in the cache of matches:
-- the cost of a search's first page.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local n = 0
function request()
  n = n + 1
  return wrk.format(nil, "/v1/products?q=teapot%20-none" .. tid .. "x" .. n .. "&limit=50")
end
