-- GET /v1/products/{id} over the ids listed in the file named by $IDS.
local ids = {}
for line in io.lines(os.getenv("IDS")) do ids[#ids + 1] = line end
math.randomseed(42)
request = function()
  return wrk.format("GET", "/v1/products/" .. ids[math.random(#ids)])
end
