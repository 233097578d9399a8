-- GET /v1/products/{id} over the ids listed in the file named by $IDS.
-- With $DELAY_MS, each connection waits that long between requests: a paced "live
-- traffic" load instead of a saturating one.
local ids = {}
for line in io.lines(os.getenv("IDS")) do ids[#ids + 1] = line end
math.randomseed(42)
request = function()
  return wrk.format("GET", "/v1/products/" .. ids[math.random(#ids)])
end
local pause = tonumber(os.getenv("DELAY_MS") or "")
if pause then
  delay = function() return pause end
end
