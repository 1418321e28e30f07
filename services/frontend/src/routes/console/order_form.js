// The order form: every order type the API takes, checked here by the API's own rules before
// anything is sent (docs/API.md: POST /orders), so a mistake is named at its field.

const $ = (id) => document.getElementById(id);

// Which fields each kind of order uses.
const KINDS = {
  limit: { price: true, stop: false, terms: true, market: false },
  market: { price: false, stop: false, terms: false, market: true },
  stop_limit: { price: true, stop: true, terms: true, market: false },
  stop_market: { price: false, stop: true, terms: false, market: true },
  house: { price: false, stop: false, terms: false, market: false },
};

const FIELDS = ["quantity", "price", "stop-price", "tif", "expire-at", "post-only", "stp",
  "client-order-id", "display-quantity", "protection-bps"];

// Shows the fields the chosen kind and time in force use, and hides the rest.
export function showFields() {
  const kind = KINDS[$("kind").value];
  const gtd = $("tif").value === "gtd";
  const show = { price: kind.price, "stop-price": kind.stop, tif: kind.terms || kind.market,
    "expire-at": kind.terms && gtd, "post-only": kind.terms && !kind.stop, stp: kind.terms || kind.market,
    "client-order-id": kind.terms || kind.market, "display-quantity": kind.terms && !kind.stop,
    "protection-bps": kind.market };
  for (const [field, shown] of Object.entries(show)) {
    for (const node of document.querySelectorAll(`[data-for="${field}"]`)) node.hidden = !shown;
  }
  // A market order trades now: ioc (its default) or fok.
  for (const option of $("tif").options) {
    option.disabled = kind.market && !["ioc", "fok"].includes(option.value);
  }
  if ($("tif").selectedOptions[0]?.disabled) $("tif").value = "ioc";
}

const cents = (text) => /^\d{1,10}(\.\d{1,2})?$/.test(text) && Number(text) > 0 && Number(text) <= 1e9;
const whole = (text, low, high) => /^\d{1,10}$/.test(text) && Number(text) >= low && Number(text) <= high;

// The body of `POST /orders` for stock `name`, or the first problem: [field, message].
export function orderBody(name, hasKey) {
  const kind = KINDS[$("kind").value];
  const value = (id) => $(id).value.trim();
  const body = { name, type: $("side").value, quantity: Number(value("quantity")) };
  if (!whole(value("quantity"), 1, 4294967295)) return [null, ["quantity", "a whole number of shares, at least 1"]];
  if (kind.price) {
    if (!cents(value("price"))) return [null, ["price", "a price above 0 with at most 2 decimals"]];
    body.price = Number(value("price"));
  }
  if (kind.stop) {
    if (!cents(value("stop-price"))) return [null, ["stop-price", "a stop price above 0 with at most 2 decimals"]];
    body.stop_price = Number(value("stop-price"));
  }
  if (kind.market) {
    body.order_type = "market";
    if (value("protection-bps") !== "") {
      if (!whole(value("protection-bps"), 0, 10000)) return [null, ["protection-bps", "basis points, 0 to 10000"]];
      body.protection_bps = Number(value("protection-bps"));
    }
  }
  if (!kind.terms && !kind.market) return [body, null];
  const tif = $("tif").value;
  if (tif !== (kind.market ? "ioc" : "gtc")) body.time_in_force = tif;
  const nowOnly = tif === "ioc" || tif === "fok";
  if (kind.terms && tif === "gtd") {
    const at = Date.parse(value("expire-at"));
    if (Number.isNaN(at)) return [null, ["expire-at", "gtd needs the time it expires"]];
    if (at <= Date.now()) return [null, ["expire-at", "that time has passed"]];
    body.expire_at = new Date(at).toISOString();
  }
  if (kind.stop && (tif === "day" || tif === "gtd")) return [null, ["tif", "a stop order is gtc, ioc or fok"]];
  if (kind.terms && !kind.stop && $("post-only").checked) {
    if (nowOnly) return [null, ["post-only", "a post-only order rests: not with ioc or fok"]];
    body.post_only = true;
  }
  if ($("stp").value !== "cancel_newest") body.stp = $("stp").value;
  if (value("client-order-id") !== "") {
    if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(value("client-order-id"))) {
      return [null, ["client-order-id", "1 to 64 letters, digits, '-', '_', '.' or ':'"]];
    }
    if (!hasKey) return [null, ["client-order-id", "a client order id needs an API key"]];
    body.client_order_id = value("client-order-id");
  }
  if (kind.terms && !kind.stop && value("display-quantity") !== "") {
    if (!whole(value("display-quantity"), 1, body.quantity - 1)) {
      return [null, ["display-quantity", "a whole number, at least 1 and below the quantity"]];
    }
    if (nowOnly) return [null, ["display-quantity", "an iceberg rests: not with ioc or fok"]];
    body.display_quantity = Number(value("display-quantity"));
  }
  return [body, null];
}

// Marks the field a problem is about, and no other.
export function markInvalid(field) {
  for (const id of FIELDS) $(id).removeAttribute("aria-invalid");
  if (field) { $(field).setAttribute("aria-invalid", "true"); $(field).focus(); }
}
