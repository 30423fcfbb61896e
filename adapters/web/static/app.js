// The browser chat. Each pane is one thread. One event stream per browser (/api/events,
// shared by the tabs through the SharedWorker in events.js) brings every question, reply
// edit and progress report of the browser's threads; each pane takes its thread's events,
// and /api/history rebuilds a pane on load, on reconnect and after a command. Every event
// has a sequence number so a reply's older text never overwrites a newer one.
// Text from the server is only ever set through textContent (or renderMarkdown, which does
// the same), never as HTML.
"use strict";

(() => {
  const BROWSER_KEY = "edgeqa.browser";
  const THREADS_KEY = "edgeqa.threads";
  const TAB_THREAD = "edgeqa.thread";
  const TAB_PANES = "edgeqa.panes";
  const MAX_THREADS = 30;
  // How a stored answer that did not end normally is marked.
  const STATUS_TAGS = {
    stopped: gettext("(stopped)"),
    interrupted: gettext("(interrupted)"),
    error: gettext("(failed)"),
  };

  const panesEl = document.getElementById("panes");
  const threadsEl = document.getElementById("threads");
  const emptyEl = document.getElementById("empty");
  const template = document.getElementById("pane-template");

  function newId() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function stored(storage, key, fallback) {
    try {
      const value = JSON.parse(storage.getItem(key));
      return value === null ? fallback : value;
    } catch {
      return fallback;
    }
  }

  let browserId = localStorage.getItem(BROWSER_KEY);
  if (!browserId) {
    browserId = newId();
    localStorage.setItem(BROWSER_KEY, browserId);
  }

  document.getElementById("me").textContent = gettext("you: %(id)s", { id: browserId });

  // --- the list of this browser's threads (shared by its tabs) -------------------------

  function threads() {
    return stored(localStorage, THREADS_KEY, []);
  }

  function remember(id, title) {
    const list = threads();
    const known = list.find((t) => t.id === id);
    if (known && (!title || known.title)) return;
    const rest = list.filter((t) => t.id !== id);
    rest.unshift({ id, title: title || (known && known.title) || "" });
    localStorage.setItem(THREADS_KEY, JSON.stringify(rest.slice(0, MAX_THREADS)));
    drawThreadList();
  }

  function drawThreadList() {
    threadsEl.textContent = "";
    for (const t of threads()) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.thread = t.id;
      button.textContent = t.title || gettext("New thread");
      button.title = t.title || t.id;
      button.classList.toggle("open", panes.has(t.id));
      button.addEventListener("click", () => openPane(t.id, true));
      threadsEl.append(button);
    }
  }

  // --- panes ---------------------------------------------------------------------------

  const panes = new Map();

  function savePanes() {
    sessionStorage.setItem(TAB_PANES, JSON.stringify([...panes.keys()]));
    emptyEl.hidden = panes.size > 0;
    drawThreadList();
  }

  function openPane(id, focus) {
    let pane = panes.get(id);
    if (!pane) {
      pane = new Pane(id);
      panes.set(id, pane);
      remember(id, "");
      savePanes();
    }
    if (focus) pane.textarea.focus();
    return pane;
  }

  function api(path, params) {
    const query = new URLSearchParams({ browser: browserId, ...params });
    return `${path}?${query}`;
  }

  class Pane {
    constructor(id) {
      this.id = id;
      this.root = template.content.firstElementChild.cloneNode(true);
      this.root.dataset.thread = id;
      this.transcript = this.root.querySelector(".transcript");
      this.statusEl = this.root.querySelector(".status");
      this.textarea = this.root.querySelector("textarea");
      this.titleEl = this.root.querySelector(".pane-title");
      this.connEl = this.root.querySelector(".conn");
      const title = (threads().find((t) => t.id === id) || {}).title;
      this.titled = Boolean(title);
      this.titleEl.textContent = title || gettext("New thread");
      this.seqs = new Map(); // reply id -> latest seq shown
      this.replies = new Map(); // reply id -> its element
      this.buffer = null; // events that arrive while the history loads
      this.generation = 0;
      this.root.querySelector("form").addEventListener("submit", (e) => {
        e.preventDefault();
        this.submit(this.textarea.value);
      });
      this.textarea.addEventListener("keydown", (e) => {
        if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
          e.preventDefault();
          this.submit(this.textarea.value);
        }
      });
      this.root.querySelector(".stop").addEventListener("click", () => this.submit("/stop"));
      this.root.querySelector(".close").addEventListener("click", () => this.close());
      panesEl.append(this.root);
      if (hub.live) this.onHello();
    }

    close() {
      this.root.remove();
      panes.delete(this.id);
      savePanes();
    }

    // The stream is (re)connected: events may have been missed, so rebuild.
    onHello() {
      this.setLive(true);
      this.sync();
    }

    setLive(live) {
      this.connEl.classList.toggle("live", live);
    }

    onEvent(ev) {
      if (this.buffer) {
        this.buffer.push(ev);
      } else {
        this.apply(ev);
      }
    }

    // Rebuild the pane from the stored turns and the answers still being written.
    async sync(keep) {
      const generation = ++this.generation;
      this.buffer = [];
      let data;
      try {
        const response = await fetch(api("/api/history", { thread: this.id }));
        if (!response.ok) throw new Error((await response.json()).error || response.statusText);
        data = await response.json();
      } catch (err) {
        if (generation === this.generation) {
          this.buffer = null;
          this.status(gettext("Could not load the history: %(error)s", { error: err.message }));
        }
        return;
      }
      if (generation !== this.generation) return;
      this.transcript.textContent = "";
      this.seqs.clear();
      this.replies.clear();
      for (const turn of data.turns) {
        const group = this.group(null);
        group.dataset.done = "true";
        this.add(group, this.bubble("user", turn.question));
        const bot = this.add(group, this.bubble("bot", ""));
        this.setText(bot, turn.answer, true);
        this.setSources(bot, turn.sources);
        if (turn.status !== "complete") {
          const tag = document.createElement("span");
          tag.className = "tag";
          tag.textContent = STATUS_TAGS[turn.status] || `(${turn.status})`;
          bot.append(tag);
        }
        if (turn.tokens) {
          group.querySelector(".meta").textContent = ngettext(
            "%(n)d token",
            "%(n)d tokens",
            turn.tokens,
          );
        }
      }
      for (const ex of data.live) {
        if (ex.question !== null) this.apply({ type: "question", id: ex.id, text: ex.question });
        for (const r of ex.replies) {
          const question = ex.question === null ? null : ex.id;
          this.apply({ type: "reply", question, ...r });
        }
        if (ex.progress) this.apply(ex.progress);
      }
      if (keep) this.transcript.append(keep);
      const buffered = this.buffer;
      this.buffer = null;
      for (const ev of buffered) if (ev.seq > data.seq) this.apply(ev); // older: in `data`
      if (data.turns.length && !this.titled) {
        this.setTitle(data.turns[0].question);
      }
      this.scroll(true);
    }

    apply(ev) {
      const nearBottom = this.atBottom();
      if (ev.type === "question") {
        const group = this.group(ev.id);
        if (!group.querySelector(".msg.user")) {
          group.prepend(this.bubble("user", ev.text));
        }
        if (!ev.text.startsWith("/")) this.setTitle(ev.text);
      } else if (ev.type === "reply") {
        const last = this.seqs.get(ev.id);
        if (last !== undefined && last >= ev.seq) return;
        this.seqs.set(ev.id, ev.seq);
        let bot = this.replies.get(ev.id);
        const group = bot ? bot.parentElement : this.group(ev.question);
        if (!bot) {
          bot = this.add(group, this.bubble("bot", ""));
          bot.dataset.id = ev.id;
          this.replies.set(ev.id, bot);
        }
        this.setText(bot, ev.text, ev.final);
        this.setSources(bot, ev.final ? ev.sources : []);
        if (group.dataset.waiting) {
          delete group.dataset.waiting;
          group.querySelector(".meta").textContent = "";
        }
      } else if (ev.type === "typing") {
        const group = ev.question && this.find(ev.question);
        if (group && !group.querySelector(".msg.bot")) {
          group.dataset.waiting = "1";
          group.querySelector(".meta").textContent = gettext("thinking…");
        }
      } else if (ev.type === "progress") {
        const group = ev.question && this.find(ev.question);
        if (group) group.querySelector(".meta").textContent = describe(ev);
      } else if (ev.type === "done") {
        const finished = this.find(ev.question);
        if (finished) finished.dataset.done = "true";
        if (ev.command) {
          // A command may have cleared stored turns (/reset, /reset-all, /forget): show the
          // thread as the server has it now, with the command and its reply kept at the end.
          const group = this.find(ev.question);
          if (group) group.remove();
          this.sync(group);
          for (const other of panes.values()) if (other !== this) other.sync();
        }
      }
      this.scroll(nearBottom);
    }

    find(id) {
      return [...this.transcript.children].find((g) => g.dataset.id === id) || null;
    }

    // The list item holding one question and its replies (a new one for unknown ids).
    group(id) {
      let group = id === null ? null : this.find(id);
      if (!group) {
        group = document.createElement("li");
        group.className = "exchange";
        if (id !== null) group.dataset.id = id;
        const meta = document.createElement("div");
        meta.className = "meta";
        group.append(meta);
        this.transcript.append(group);
      }
      return group;
    }

    // Put a message into a group, above the group's progress line.
    add(group, el) {
      group.insertBefore(el, group.querySelector(".meta"));
      return el;
    }

    bubble(kind, text) {
      const el = document.createElement("div");
      el.className = `msg ${kind}`;
      el.textContent = text;
      return el;
    }

    setText(el, text, final) {
      el.dataset.final = String(final);
      if (final) window.renderMarkdown(el, text);
      else el.textContent = text;
    }

    // The documents an answer came from, under it: links where the document has a web
    // address (http/https only), the title alone otherwise.
    setSources(el, sources) {
      const old = el.querySelector(".sources");
      if (old) old.remove();
      if (!sources || !sources.length) return;
      const box = document.createElement("div");
      box.className = "sources";
      box.append("📚 ");  // a sign, not a word: the same in every language
      sources.forEach((source, i) => {
        if (i) box.append(" · ");
        const label = `[${source.number}] ${source.title || source.location}`;
        let item;
        if (/^https?:\/\//i.test(source.url || "")) {
          item = document.createElement("a");
          item.href = source.url;
          item.target = "_blank";
          item.rel = "noopener noreferrer";
        } else {
          item = document.createElement("span");
        }
        item.textContent = label;
        item.title = [source.location, source.heading].filter(Boolean).join(" > ");
        box.append(item);
      });
      el.append(box);
    }

    setTitle(text) {
      if (this.titled) return;
      this.titled = true;
      const title = text.length > 40 ? `${text.slice(0, 40)}…` : text;
      this.titleEl.textContent = title;
      remember(this.id, title);
    }

    async submit(raw) {
      const text = raw.trim();
      if (!text) return;
      this.status("");
      let response;
      try {
        response = await fetch("/api/ask", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ browser: browserId, thread: this.id, text }),
        });
      } catch (err) {
        this.status(gettext("Could not send: %(error)s", { error: err.message }));
        return;
      }
      const body = await response.json().catch(() => ({}));
      if (response.status !== 202) {
        this.status(body.error || gettext("Could not send (%(status)s)", { status: response.status }));
        return;
      }
      if (raw === this.textarea.value) this.textarea.value = "";
      this.apply({ type: "question", id: body.id, text });
      this.scroll(true);
    }

    status(text) {
      this.statusEl.textContent = text;
    }

    atBottom() {
      const t = this.transcript;
      return t.scrollHeight - t.scrollTop - t.clientHeight < 40;
    }

    scroll(force) {
      if (force) this.transcript.scrollTop = this.transcript.scrollHeight;
    }
  }

  function describe(ev) {
    if (ev.queue_position !== null && ev.queue_position !== undefined && !ev.tokens) {
      return gettext("waiting in queue, position %(position)s", { position: ev.queue_position });
    }
    const tokens = ngettext("%(n)d token", "%(n)d tokens", ev.tokens);
    if (!ev.tokens_per_second) return tokens;
    const speed = ev.tokens_per_second.toFixed(1);
    return gettext("%(tokens)s · %(speed)s tokens/s", { tokens, speed });
  }

  // --- the event stream --------------------------------------------------------------

  const hub = {
    live: false,

    start() {
      const url = api("/api/events", {});
      if (window.SharedWorker) {
        try {
          const worker = new SharedWorker("/assets/events.js", { name: `edgeqa-${browserId}` });
          const port = worker.port;
          port.onmessage = (m) => this.receive(m.data);
          port.start();
          port.postMessage({ type: "start", url });
          window.addEventListener("pagehide", () => port.postMessage({ type: "bye" }));
          window.addEventListener("pageshow", (e) => {
            if (e.persisted) port.postMessage({ type: "start", url });
          });
          return;
        } catch (err) {
          console.warn("no shared event stream; this tab opens its own", err);
        }
      }
      const source = new EventSource(url);
      source.onmessage = (e) => this.receive(JSON.parse(e.data));
      source.onerror = () => this.receive({ type: "down" });
    },

    receive(ev) {
      if (ev.type === "hello") {
        this.live = true;
        for (const pane of panes.values()) pane.onHello();
      } else if (ev.type === "down") {
        this.live = false;
        for (const pane of panes.values()) pane.setLive(false);
      } else {
        const pane = panes.get(ev.thread);
        if (pane) pane.onEvent(ev);
      }
    },
  };

  // --- start ---------------------------------------------------------------------------

  document.getElementById("new-thread").addEventListener("click", () => {
    openPane(newId(), true);
  });
  window.addEventListener("storage", (e) => {
    if (e.key === THREADS_KEY) drawThreadList();
  });

  let tabThread = sessionStorage.getItem(TAB_THREAD);
  if (!tabThread) {
    tabThread = newId();
    sessionStorage.setItem(TAB_THREAD, tabThread);
  }
  hub.start();
  const open = stored(sessionStorage, TAB_PANES, [tabThread]);
  for (const id of open) if (/^[0-9a-f]{24}$/.test(id)) openPane(id, false);
  savePanes();
  const first = panes.values().next().value;
  if (first) first.textarea.focus();
})();
