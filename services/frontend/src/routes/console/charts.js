// Two charts drawn as SVG, no library: the selected stock's candles with volume, and its
// book's depth (the quantity on each side up to each price).

const NS = "http://www.w3.org/2000/svg";
const WIDTH = 600;

function element(name, attributes, text) {
  const node = document.createElementNS(NS, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text != null) node.textContent = text;
  return node;
}

function empty(svg, height, message) {
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${height}`);
  svg.replaceChildren(element("text", { x: WIDTH / 2, y: height / 2, class: "note" }, message));
}

// Candles oldest first ({time, open, high, low, close, volume}); prices above, volume below.
export function drawCandles(svg, candles) {
  const height = 240, volumeHeight = 50, right = 54, gap = 14;
  svg.dataset.candles = candles.length;
  if (!candles.length) return empty(svg, height, "no trades yet");
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${height}`);
  const priceHeight = height - volumeHeight - gap - 16;
  let high = Math.max(...candles.map((c) => c.high));
  let low = Math.min(...candles.map((c) => c.low));
  // Prices that hardly moved are drawn in the middle of a band of 1% around them.
  if (high - low < high * 0.002) {
    const pad = Math.max(high * 0.005, 0.01);
    high += pad; low -= pad;
  }
  const span = high - low;
  const y = (price) => 6 + (high - price) / span * (priceHeight - 12);
  const most = Math.max(...candles.map((c) => c.volume), 1);
  const slot = (WIDTH - right) / Math.max(candles.length, 40);
  const nodes = [];
  candles.forEach((candle, i) => {
    const x = i * slot + slot / 2;
    const kind = candle.close >= candle.open ? "up" : "down";
    nodes.push(element("line", { x1: x, x2: x, y1: y(candle.high), y2: y(candle.low), class: `wick ${kind}` }));
    const top = y(Math.max(candle.open, candle.close));
    const body = Math.max(y(Math.min(candle.open, candle.close)) - top, 1);
    const bar = element("rect", { x: x - slot * 0.35, width: slot * 0.7, y: top, height: body, class: `body ${kind}` });
    bar.append(element("title", {}, `${candle.time}: O ${candle.open} H ${candle.high} L ${candle.low} C ${candle.close}, ${candle.volume} shares`));
    nodes.push(bar);
    const tall = candle.volume / most * volumeHeight;
    nodes.push(element("rect", { x: x - slot * 0.35, width: slot * 0.7, y: height - 16 - tall, height: tall, class: `volume ${kind}` }));
  });
  const label = (value, at) => element("text", { x: WIDTH - right + 4, y: at, class: "axis" }, value);
  nodes.push(label(high.toFixed(2), y(high) + 4), label(low.toFixed(2), y(low) + 4),
    label(`vol ${most}`, height - 16 - volumeHeight + 10));
  const time = (candle) => candle.time.slice(11, 16);
  nodes.push(element("text", { x: 2, y: height - 3, class: "axis" }, time(candles[0])));
  nodes.push(element("text", { x: (candles.length - 1) * slot, y: height - 3, class: "axis end" }, time(candles[candles.length - 1])));
  svg.replaceChildren(...nodes);
}

// Bids and asks as [price, quantity] pairs, any order.
export function drawDepth(svg, bids, asks) {
  const height = 140;
  svg.dataset.levels = bids.length + asks.length;
  if (!bids.length && !asks.length) return empty(svg, height, "the book is empty");
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${height}`);
  const down = [...bids].sort((a, b) => b[0] - a[0]);
  const up = [...asks].sort((a, b) => a[0] - b[0]);
  const prices = [...down, ...up].map(([price]) => price);
  const pad = (Math.max(...prices) - Math.min(...prices)) * 0.05 || Math.max(prices[0] * 0.01, 0.01);
  const low = Math.min(...prices) - pad, high = Math.max(...prices) + pad;
  const span = high - low;
  const cumulative = (levels) => {
    let total = 0;
    return levels.map(([price, quantity]) => [price, (total += quantity)]);
  };
  const sides = [["bid", cumulative(down)], ["ask", cumulative(up)]];
  const most = Math.max(...sides.flatMap(([, levels]) => levels.map(([, total]) => total)), 1);
  const x = (price) => 20 + (price - low) / span * (WIDTH - 40);
  const y = (total) => height - 18 - total / most * (height - 30);
  const nodes = [];
  for (const [side, levels] of sides) {
    if (!levels.length) continue;
    // From the best price outwards, a step up at each level.
    let path = `M ${x(levels[0][0])} ${y(0)}`;
    let before = 0;
    for (const [price, total] of levels) {
      path += ` L ${x(price)} ${y(before)} L ${x(price)} ${y(total)}`;
      before = total;
    }
    // The last level's total holds on to the chart's edge on that side.
    const edge = side === "bid" ? x(low) : x(high);
    path += ` L ${edge} ${y(before)} L ${edge} ${y(0)} Z`;
    nodes.push(element("path", { d: path, class: `depth ${side}` }));
  }
  nodes.push(element("text", { x: 2, y: height - 3, class: "axis" }, low.toFixed(2)));
  nodes.push(element("text", { x: WIDTH - 2, y: height - 3, class: "axis end" }, high.toFixed(2)));
  nodes.push(element("text", { x: 2, y: 12, class: "axis" }, `${most} shares`));
  svg.replaceChildren(...nodes);
}
