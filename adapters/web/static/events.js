// SharedWorker: one event stream per browser, shared by all its tabs.
// Browsers allow only ~6 HTTP/1.1 connections per host across all tabs; an EventSource per
// tab (or per pane) would soon leave none for asking. Tabs connect with {type: "start", url}
// and receive every event of the browser's threads; "hello" (stream (re)opened: resync) and
// "down" (stream lost, the EventSource retries by itself) tell them about the connection.
"use strict";

const ports = new Set();
let source = null;
let live = false;

function broadcast(message) {
  for (const port of ports) port.postMessage(message);
}

function connect(url) {
  source = new EventSource(url);
  source.onmessage = (e) => {
    const event = JSON.parse(e.data);
    if (event.type === "hello") live = true;
    broadcast(event);
  };
  source.onerror = () => {
    live = false;
    broadcast({ type: "down" });
    if (source.readyState === EventSource.CLOSED) {
      // Refused (e.g. 401 or 503), so the EventSource gave up: try again a little later.
      source = null;
      setTimeout(() => source === null && ports.size && connect(url), 3000);
    }
  };
}

self.onconnect = (e) => {
  const port = e.ports[0];
  ports.add(port);
  port.onmessage = (m) => {
    if (m.data.type === "start") {
      ports.add(port); // again, after a page comes back from the back/forward cache
      if (source === null) connect(m.data.url);
      else if (live) port.postMessage({ type: "hello" });
    } else if (m.data.type === "bye") {
      ports.delete(port);
    }
  };
  port.start();
};
