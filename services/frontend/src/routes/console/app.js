// The console: the market live (stocks, the selected stock's chart, depth, book and trades),
// an order form, the user's own orders, fills and portfolio, and the cluster.

import { api, follow } from "./live.js";
import { money, upsertRow, syncRows } from "./rows.js";
import { drawCandles, drawDepth } from "./charts.js";
import { markInvalid, orderBody, showFields } from "./order_form.js";
import { priceChanged, signIn, userOfKey } from "./account.js";

const $ = (id) => document.getElementById(id);
const stocks = new Map();
let selected = null;
let selection = [];            // the selected stock's streams
const book = { bids: new Map(), asks: new Map() };
let candles = [];
const tape = new Map();        // trade id → trade, the selected stock's last 50

function stockRow(name) {
  const stock = stocks.get(name);
  let button = $(`stock-${name}`)?.querySelector("button");
  if (!button) {
    button = document.createElement("button");
    button.className = "stock"; button.textContent = name;
    button.onclick = () => select(name);
  }
  const row = upsertRow($("stocks"), `stock-${name}`, [button, money(stock.price), stock.quantity],
    [null, "price", "quantity"]);
  row.classList.toggle("selected", name === selected);
  return row;
}

function onPrice(message) {
  if (message.type === "snapshot") {
    stocks.clear();
    for (const stock of message.stocks) stocks.set(stock.name, stock);
    syncRows($("stocks"), [...stocks.keys()].sort().map((n) => `stock-${n}`), (id) => stockRow(id.slice(6)));
    if (!selected && message.stocks.length) select(message.stocks[0].name);
  } else if (message.type === "price") {
    const known = stocks.has(message.name);
    stocks.set(message.name, message);
    if (known) {
      const row = stockRow(message.name);
      row.classList.remove("flash"); void row.offsetWidth; row.classList.add("flash");
    } else {
      syncRows($("stocks"), [...stocks.keys()].sort().map((n) => `stock-${n}`), (id) => stockRow(id.slice(6)));
    }
    priceChanged(message);
  }
}

function renderBook() {
  for (const [side, order] of [["bids", (a, b) => b - a], ["asks", (a, b) => a - b]]) {
    const prices = [...book[side].keys()].sort(order).slice(0, 12);
    syncRows($(side), prices.map((p) => `${side}-${p}`), (id) => {
      const level = book[side].get(Number(id.slice(5)));
      const row = upsertRow($(side), id, [money(level.price), level.quantity, level.orders]);
      row.className = side === "bids" ? "buy" : "sell";
      return row;
    });
  }
  const levels = (side) => [...book[side].values()].map((l) => [l.price, l.quantity]);
  drawDepth($("depth"), levels("bids"), levels("asks"));
}

function onBook(message) {
  if (message.type === "snapshot") {
    book.bids = new Map(message.bids.map((l) => [l.price, l]));
    book.asks = new Map(message.asks.map((l) => [l.price, l]));
  } else if (message.type === "update") {
    for (const level of message.levels) {
      const side = level.side === "buy" ? book.bids : book.asks;
      if (level.quantity === 0) side.delete(level.price); else side.set(level.price, level);
    }
  }
  if (message.last_price != null) $("last-price").textContent = money(message.last_price);
  renderBook();
}

function onCandle(message) {
  if (message.type === "snapshot") {
    candles = message.candles;
  } else if (message.type === "update") {
    const last = candles[candles.length - 1];
    if (last && last.time === message.candle.time) candles[candles.length - 1] = message.candle;
    else candles = [...candles, message.candle].slice(-100);
  }
  drawCandles($("candles"), candles);
}

function onTrade(message) {
  if (message.type !== "trade" || message.name !== selected) return;
  tape.set(message.id, message);
  renderTape();
}

function renderTape() {
  const ids = [...tape.keys()].sort((a, b) => b - a).slice(0, 50);
  for (const id of tape.keys()) if (!ids.includes(id)) tape.delete(id);
  syncRows($("trades"), ids.map((id) => `trade-${id}`), (id) => {
    const trade = tape.get(Number(id.slice(6)));
    const row = upsertRow($("trades"), id, [trade.id, money(trade.price), trade.quantity, trade.taker_side],
      [null, "price", "quantity", "taker"]);
    row.className = trade.taker_side;
    return row;
  });
}

function followSelection() {
  for (const stream of selection) stream.close();
  const name = encodeURIComponent(selected);
  selection = [
    follow(() => `/ws/book/${name}`, onBook),
    follow(() => `/ws/candles/${name}?interval=${$("interval").value}`, onCandle),
  ];
}

async function select(name) {
  const previous = selected;
  selected = name;
  $("selected").textContent = name;
  for (const n of [previous, name]) if (n && stocks.has(n)) stockRow(n);
  // Another stock's price left in the form would cross this one's book far from its price.
  const stock = stocks.get(name);
  if (stock && stock.price != null && (name !== previous || !$("price").value)) {
    $("price").value = money(stock.price);
  }
  tape.clear(); renderTape();
  book.bids.clear(); book.asks.clear(); renderBook();
  candles = []; drawCandles($("candles"), candles);
  followSelection();
  const reply = await api(`/trades?name=${encodeURIComponent(name)}&limit=1000`);
  if (reply.data && name === selected) {
    // Trades streamed while the history was on its way are kept: merged by id.
    for (const trade of reply.data) tape.set(trade.id, trade);
    renderTape();
  }
}

function say(text, ok) {
  const message = $("message");
  message.textContent = text;
  message.className = ok ? "ok" : "error";
}

$("new-user").onclick = async () => {
  $("api-key").value = "";
  const name = $("display-name").value.trim();
  const body = name ? { display_name: name } : {};
  const reply = await api("/users", { method: "POST", body: JSON.stringify(body) });
  if (reply.error) { say(reply.error.message, false); return; }
  $("api-key").value = reply.data.api_key;
  localStorage.setItem("stocknet-api-key", reply.data.api_key);
  say(`user ${reply.data.user_id} created; the key is shown once and kept in this browser`, true);
  signIn();
};

$("api-key").onchange = () => {
  localStorage.setItem("stocknet-api-key", $("api-key").value.trim());
  signIn();
};

$("kind").onchange = showFields;
$("tif").onchange = showFields;
$("interval").onchange = () => { if (selected) followSelection(); };

$("order-form").onsubmit = async (event) => {
  event.preventDefault();
  if (!selected) { say("pick a stock first", false); return; }
  const [body, problem] = orderBody(selected, userOfKey() != null);
  markInvalid(problem?.[0]);
  if (problem) { say(`${problem[0]}: ${problem[1]}`, false); return; }
  const reply = await api("/orders", { method: "POST", body: JSON.stringify(body) });
  if (reply.error) {
    say(reply.error.message, false);
  } else {
    const d = reply.data;
    say(`order ${d.transaction_number}: ${d.status}, ${d.filled_quantity} filled, ${d.remaining_quantity} left`, true);
  }
};

async function refreshCluster() {
  const reply = await api("/cluster");
  if (!reply.data) return;
  const cluster = reply.data;
  $("cluster-leader").textContent = cluster.leader == null
    ? "· no leader elected yet" : `· leader: replica ${cluster.leader}, term ${cluster.term}`;
  const yes = (flag) => flag ? "yes" : "no";
  const ids = cluster.replicas.map((r) => `replica-${r.id}`);
  syncRows($("cluster"), [...ids, "catalog-row"], (id) => {
    if (id === "catalog-row") {
      // The frontend's breaker: while open, orders fail at once and prices are the last seen.
      const breaker = cluster.catalog.breaker;
      const state = breaker.state === "open"
        ? `breaker open ${Math.round(breaker.open_for_ms / 1000)} s` : "breaker closed";
      return upsertRow($("cluster"), id, ["catalog", state, yes(cluster.catalog.up), "—",
        cluster.catalog.term ?? "—", "—", cluster.catalog.applied ?? "—"]);
    }
    const replica = cluster.replicas.find((r) => `replica-${r.id}` === id);
    const leads = replica.leader === replica.id && replica.up;
    const row = upsertRow($("cluster"), id, [`order replica ${replica.id}`,
      leads ? "leader" : (replica.up ? "follower" : "—"), yes(replica.up), yes(replica.ready),
      replica.term ?? "—", replica.last_transaction ?? "—", replica.applied ?? "—"]);
    row.className = leads ? "leader" : "";
    return row;
  });
}

$("api-key").value = localStorage.getItem("stocknet-api-key") ?? "";
showFields();
follow(() => "/ws/prices", onPrice);
follow(() => "/ws/trades", onTrade);
signIn();
refreshCluster();
setInterval(refreshCluster, 2000);
