// The user behind the key in the form: their orders, changed live by their own stream
// (`/ws/orders`), their fills, and their portfolio, valued live at the prices streamed.

import { api, follow } from "./live.js";
import { money, upsertRow, syncRows } from "./rows.js";

const $ = (id) => document.getElementById(id);
const OPEN = new Set(["open", "partially_filled", "untriggered"]);

const orders = new Map();      // number → the order as last seen
const fills = new Map();       // trade id → [trade, name, side, price, quantity]
let positions = [];            // from GET /users/{id}/portfolio
let stream = null;
let lastEntry = null;          // the last entry seen: a reconnect resumes after it
let portfolioDue = null;

export function userOfKey() {
  const match = /^snk_(\d+)_/.exec($("api-key").value.trim());
  return match ? Number(match[1]) : null;
}

// Starts over for the key now in the form (none: nobody).
export function signIn() {
  if (stream) stream.close();
  stream = null;
  lastEntry = null;
  orders.clear(); fills.clear(); positions = [];
  $("events").replaceChildren();
  render();
  const user = userOfKey();
  $("user").textContent = user == null ? "anonymous" : `user ${user}`;
  delete $("user").dataset.live;
  if (user == null) return;
  const key = $("api-key").value.trim();
  stream = follow(() => lastEntry == null ? "/ws/orders" : `/ws/orders?after=${lastEntry}`,
    onUpdate, (socket) => socket.send(JSON.stringify({ api_key: key })));
  stream.onRefused = (reason) => {
    delete $("user").dataset.live;
    if (reason.includes("past the end of the order log")) {
      // A position from another deployment (or one restored from an older state): start
      // from now, with the orders read again.
      signIn();
      note(`order stream restarted from now: ${reason}`);
    } else if (reason.includes("invalid or revoked")) {
      // The key is no good any more: forget it, rather than send it with every call.
      localStorage.removeItem("stocknet-api-key");
      $("api-key").value = "";
      signIn();
      note(`the key was refused (${reason}): create a user, or paste another key`);
    } else {
      note(`order stream closed: ${reason}`);
    }
  };
}

// The user's recent orders and fills, and their portfolio: what the stream then changes.
// After a gap (`fresh`), what was read replaces what the page held: the updates that would
// have changed it are gone.
async function load(fresh = false) {
  const user = userOfKey();
  const reply = await api(`/orders?user=${user}&limit=100`);
  if (user !== userOfKey() || !reply.data) return;
  for (const order of reply.data.orders) {
    if (fresh || !orders.has(order.number)) orders.set(order.number, order);
    for (const fill of order.fills) fills.set(fill.trade, [order.name, order.type, fill]);
  }
  render();
  refreshPortfolio();
}

function onUpdate(message) {
  if (message.type === "subscribed") {
    // Read once the stream runs: whatever changes after the read comes through it.
    lastEntry = message.after;
    $("user").dataset.live = "true";
    load();
  } else if (message.type === "gap") {
    note("some updates were missed: reloaded");
    load(true);
  } else if (message.type === "update") {
    // Resumed after only once the entry's last update came: a connection cut inside an entry
    // gets the entry again whole (an update carries the order as the entry left it, so a
    // second copy changes nothing here).
    if (message.last_of_entry !== false) lastEntry = message.entry;
    const order = message.order;
    orders.set(order.number, order);
    for (const fill of message.fills ?? []) fills.set(fill.trade, [order.name, order.type, fill]);
    const reason = message.reason ? ` (${message.reason})` : "";
    note(`#${order.number} ${order.name} ${order.type}: ${message.event.replace("_", " ")}${reason}`);
    render();
    if (message.fills?.length) schedulePortfolio();
  }
}

function note(text) {
  const item = document.createElement("li");
  item.textContent = text;
  $("events").prepend(item);
  while ($("events").children.length > 20) $("events").lastChild.remove();
}

function render() {
  const open = [...orders.values()].filter((o) => OPEN.has(o.status)).sort((a, b) => b.number - a.number);
  syncRows($("open-orders"), open.map((o) => `order-${o.number}`), (id) => {
    const order = orders.get(Number(id.slice(6)));
    const cancel = document.getElementById(`cancel-${order.number}`) ?? cancelButton(order.number);
    const row = upsertRow($("open-orders"), id, [order.number, order.name, order.type,
      order.remaining_quantity, money(order.price), order.status.replace("_", " "), cancel],
    ["number", "name", "side", "left", "price", "status"]);
    row.className = order.type;
    return row;
  });
  const recent = [...fills.keys()].sort((a, b) => b - a).slice(0, 30);
  syncRows($("fills"), recent.map((trade) => `fill-${trade}`), (id) => {
    const [name, side, fill] = fills.get(Number(id.slice(5)));
    const row = upsertRow($("fills"), id, [fill.trade, name, side, fill.quantity, money(fill.price)],
      ["trade", "name", "side", "quantity", "price"]);
    row.className = side;
    return row;
  });
}

function cancelButton(number) {
  const button = document.createElement("button");
  button.id = `cancel-${number}`;
  button.className = "cancel"; button.textContent = "cancel";
  button.setAttribute("aria-label", `cancel order ${number}`);
  button.onclick = async () => {
    const reply = await api(`/orders/${number}`, { method: "DELETE" });
    if (reply.error) note(`#${number}: ${reply.error.message}`);
  };
  return button;
}

function schedulePortfolio() {
  clearTimeout(portfolioDue);
  portfolioDue = setTimeout(refreshPortfolio, 300);
}

async function refreshPortfolio() {
  const user = userOfKey();
  if (user == null) return;
  const reply = await api(`/users/${user}/portfolio`);
  if (user !== userOfKey() || !reply.data) return;
  positions = reply.data.positions;
  renderPortfolio();
}

// A price streamed for a stock held: the position is valued again here, at once.
export function priceChanged(stock) {
  const position = positions.find((p) => p.name === stock.name);
  if (!position || position.price === stock.price) return;
  position.price = stock.price;
  renderPortfolio();
}

function renderPortfolio() {
  const total = { value: 0, unrealized: 0, realized: 0 };
  const rows = positions.map((p) => {
    const value = p.shares * p.price;
    const unrealized = value - p.cost_basis;
    total.value += value; total.unrealized += unrealized; total.realized += p.realized_pnl;
    return [p.name, p.shares, money(p.average_cost), money(p.price), money(value), money(unrealized), money(p.realized_pnl)];
  });
  syncRows($("portfolio"), rows.map((r) => `position-${r[0]}`), (id) => {
    const cells = rows.find((r) => `position-${r[0]}` === id);
    return upsertRow($("portfolio"), id, cells, ["name", "shares", "average", "price", "value", "unrealized", "realized"]);
  });
  $("portfolio-total").textContent = positions.length
    ? `value ${money(total.value)} · unrealized ${money(total.unrealized)} · realized ${money(total.realized)}`
    : "no positions";
}
