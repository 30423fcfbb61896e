// A deliberately small Markdown renderer for final answers: fenced code, headings, lists,
// paragraphs, `code`, **bold**, *italic* and http(s) links. It builds DOM nodes and only ever
// assigns text through textContent, so nothing the model writes can become markup or script.
"use strict";

window.renderMarkdown = (() => {
  const FENCE = /^\s*```/;
  const HEADING = /^(#{1,6})\s+(.*)$/;
  const ITEM = /^\s*([-*+]|\d+[.)])\s+(.*)$/;
  const INLINE = new RegExp(
    [
      /(`[^`\n]+`)/.source, // 1 code
      /(\*\*[^*\n]+\*\*)/.source, // 2 bold
      /(\*[^*\s][^*\n]*\*|(?<![\w])_[^_\s][^_\n]*_(?![\w]))/.source, // 3 italic
      /\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/.source, // 4 label, 5 url
    ].join("|"),
    "g",
  );

  function inline(parent, text) {
    let last = 0;
    for (const m of text.matchAll(INLINE)) {
      if (m.index > last) parent.append(text.slice(last, m.index));
      let node;
      if (m[1]) {
        node = document.createElement("code");
        node.textContent = m[1].slice(1, -1);
      } else if (m[2]) {
        node = document.createElement("strong");
        node.textContent = m[2].slice(2, -2);
      } else if (m[3]) {
        node = document.createElement("em");
        node.textContent = m[3].slice(1, -1);
      } else {
        node = document.createElement("a");
        node.textContent = m[4];
        node.href = m[5];
        node.rel = "noopener noreferrer nofollow";
        node.target = "_blank";
      }
      parent.append(node);
      last = m.index + m[0].length;
    }
    if (last < text.length) parent.append(text.slice(last));
  }

  function lineBreaks(parent, lines) {
    lines.forEach((line, i) => {
      if (i > 0) parent.append(document.createElement("br"));
      inline(parent, line);
    });
  }

  return function render(container, text) {
    container.textContent = "";
    const lines = text.split("\n");
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (FENCE.test(line)) {
        const code = [];
        i++;
        while (i < lines.length && !FENCE.test(lines[i])) code.push(lines[i++]);
        i++; // the closing fence (or the end)
        const pre = document.createElement("pre");
        const el = document.createElement("code");
        el.textContent = code.join("\n");
        pre.append(el);
        container.append(pre);
        continue;
      }
      if (!line.trim()) {
        i++;
        continue;
      }
      const heading = line.match(HEADING);
      if (heading) {
        const el = document.createElement("h" + Math.min(6, heading[1].length + 2));
        inline(el, heading[2]);
        container.append(el);
        i++;
        continue;
      }
      const item = line.match(ITEM);
      if (item) {
        const ordered = /\d/.test(item[1]);
        const list = document.createElement(ordered ? "ol" : "ul");
        while (i < lines.length) {
          const m = lines[i].match(ITEM);
          if (!m || /\d/.test(m[1]) !== ordered) break;
          const li = document.createElement("li");
          inline(li, m[2]);
          list.append(li);
          i++;
        }
        container.append(list);
        continue;
      }
      const para = [];
      while (
        i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) &&
        !HEADING.test(lines[i]) && !ITEM.test(lines[i])
      ) {
        para.push(lines[i++]);
      }
      const p = document.createElement("p");
      lineBreaks(p, para);
      container.append(p);
    }
  };
})();
