// Streams that reconnect by themselves, and the badge that says whether all of them are open.

const streams = new Set();

function showConnection() {
  const live = [...streams].every((s) => s.socket && s.socket.readyState === WebSocket.OPEN);
  const badge = document.getElementById("connection");
  badge.textContent = live ? "live" : "reconnecting…";
  badge.className = live ? "badge live" : "badge down";
}

// Follows the WebSocket at `path()` (asked again at each reconnect, so a stream can resume
// where it was), backing off to 5 s, with jitter. The backoff starts again only once a stream
// has brought a message: a frontend over its cap of streams (or without the catalog) accepts a
// socket and closes it at once (1013), and every page must not come back at once, four times
// a second. `onOpen(socket)` may send a first message.
export function follow(path, onMessage, onOpen = () => {}) {
  const stream = { socket: null, closed: false };
  let delay = 250;
  const connect = () => {
    if (stream.closed) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}${path()}`);
    stream.socket = socket;
    socket.onopen = () => { onOpen(socket); showConnection(); };
    socket.onmessage = (event) => { delay = 250; onMessage(JSON.parse(event.data)); };
    socket.onclose = (event) => {
      if (stream.closed) return;
      // 1008: refused for good (a revoked key); say so instead of retrying.
      if (event.code === 1008 && stream.onRefused) {
        streams.delete(stream);
        showConnection();
        stream.onRefused(event.reason);
        return;
      }
      showConnection();
      if (event.code === 1013) delay = Math.max(delay, 2000);
      setTimeout(connect, delay * (0.5 + Math.random() / 2));
      delay = Math.min(delay * 2, 5000);
    };
  };
  streams.add(stream);
  connect();
  stream.close = () => {
    stream.closed = true;
    streams.delete(stream);
    stream.socket.close();
    showConnection();
  };
  return stream;
}

// Calls the public API with the key in the form, if any; an unreachable frontend is an error
// envelope too.
export async function api(path, options = {}) {
  const headers = { "content-type": "application/json" };
  const key = document.getElementById("api-key").value.trim();
  if (key) headers.authorization = `Bearer ${key}`;
  try {
    const response = await fetch(path, { ...options, headers });
    return await response.json();
  } catch (error) {
    return { error: { code: 0, message: String(error) } };
  }
}
