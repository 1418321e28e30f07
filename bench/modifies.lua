-- wrk: modifies of resting limit orders (PUT /orders/{number}), each changing the order's price
-- between two that never cross. ORDERS (from modifies.sh) lists the orders' numbers; each wrk
-- thread takes its own share of them, so that no two modifies of one order are in flight.
local orders = {}
for number in string.gmatch(os.getenv("ORDERS") or "", "%d+") do
  orders[#orders + 1] = number
end
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
local n = 0
wrk.method = "PUT"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local share = math.floor(#orders / 2)
  local number = orders[id * share + (n % share) + 1]
  local price = (math.floor(n / share) % 2 == 0) and "2000.01" or "2000.02"
  n = n + 1
  return wrk.format(nil, "/orders/" .. number, nil, '{"price":' .. price .. '}')
end
