-- wrk: market orders of one share of GameStart (POST /orders), buys and sells alternating,
-- so that the stock never runs out. Used by ab.sh (WRK=1), cold-reads.sh and etcd.sh.
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  local side = (n % 2 == 0) and "sell" or "buy"
  return wrk.format(nil, "/orders", nil, '{"name":"GameStart","quantity":1,"type":"' .. side .. '"}')
end
