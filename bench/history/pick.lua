-- History reads (SPEC §14) through HTTP, one kind per wrk run, chosen by $MODE:
--   get       GET /v1/products/{id}              a random id of the file $IDS
--   get_as_of GET /v1/products/{id}?as_of=T      the same, at a random instant T
--   list      GET /v1/products?limit=50&cursor=C a random cursor of the file $CURSORS
--   list_as_of  the same page at a random instant T
-- T is drawn uniformly between $FROM and $TO (µs since the epoch).
local mode = os.getenv("MODE")
local function lines(name)
  local t = {}
  for line in io.lines(os.getenv(name)) do t[#t + 1] = line end
  return t
end
local ids, cursors
if mode == "get" or mode == "get_as_of" then ids = lines("IDS") else cursors = lines("CURSORS") end
local from, to = tonumber(os.getenv("FROM")), tonumber(os.getenv("TO"))
math.randomseed(42)
local function instant()
  local us = from + math.random(0, to - from)
  local secs = math.floor(us / 1000000)
  return os.date("!%Y-%m-%dT%H:%M:%S", secs) .. string.format(".%06dZ", us % 1000000)
end
request = function()
  if mode == "get" then return wrk.format("GET", "/v1/products/" .. ids[math.random(#ids)]) end
  if mode == "get_as_of" then
    return wrk.format("GET", "/v1/products/" .. ids[math.random(#ids)] .. "?as_of=" .. instant())
  end
  local path = "/v1/products?limit=50&cursor=" .. cursors[math.random(#cursors)]
  if mode == "list_as_of" then path = path .. "&as_of=" .. instant() end
  return wrk.format("GET", path)
end
