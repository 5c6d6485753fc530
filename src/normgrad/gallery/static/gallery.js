// normgrad gallery: lists the images of an explain output folder; works from file:// (data come as <script> files).
// Every name and class comes from the user's files: it is only ever set with textContent, value or setAttribute.
"use strict";
(function () {
  const DATA = "gallery/data/";
  const POLL_MS = 2000;
  const state = { chunks: [], stamps: [], items: [], view: [], page: 0, current: -1, mapIndex: 0, running: false };
  const $ = (id) => document.getElementById(id);
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
  let loaded = false, rebuildTimer = 0, pollTimer = 0, pending = 0;

  function load(src, failed) {
    const tag = document.createElement("script");
    tag.src = src;
    tag.onload = () => tag.remove();
    tag.onerror = () => { tag.remove(); if (failed) failed(); };
    document.head.appendChild(tag);
  }
  const pad = (k) => String(k).padStart(6, "0");

  window.normgradGallery = {
    index(data) {
      state.running = Boolean(data.running);
      $("folder").textContent = data.folder ? "— " + data.folder : "";
      state.updated = data.updated;
      const stamps = data.chunks || [];
      if (stamps.length < state.chunks.length) { state.chunks.length = stamps.length; state.stamps.length = stamps.length; scheduleRebuild(); }
      stamps.forEach((stamp, k) => {
        if (state.stamps[k] !== stamp) {
          state.stamps[k] = stamp;
          pending += 1;
          load(DATA + "chunk-" + pad(k) + ".js?v=" + stamp, () => { state.stamps[k] = undefined; window.normgradGallery.chunk(k, state.chunks[k] || []); });
        }
      });
      if (!pending) { loaded = true; scheduleRebuild(); }
      clearTimeout(pollTimer);
      if (state.running) pollTimer = setTimeout(poll, POLL_MS);
      showStatus();
    },
    chunk(k, items) {
      state.chunks[k] = items;
      pending = Math.max(0, pending - 1);
      if (!pending) loaded = true;
      scheduleRebuild();
    },
  };
  function poll() { load(DATA + "index.js?t=" + Date.now(), () => { pollTimer = setTimeout(poll, POLL_MS); }); }

  function scheduleRebuild() {
    if (!rebuildTimer) rebuildTimer = setTimeout(() => { rebuildTimer = 0; rebuild(); }, 30);
  }

  // ---------------------------------------------------------------- data → view

  function rebuild() {
    const byName = new Map();  // an image redone later appears again in a later chunk: the last one wins
    for (const chunk of state.chunks) for (const item of chunk || []) byName.set(item.name, item);
    state.items = Array.from(byName.values());
    fillClasses();
    if (loaded && !state.restored) {  // once everything is loaded: what the address asked for (#class=...&page=...&open=...)
      state.restored = true;
      if (Array.from($("class").options).some((o) => o.value === state.wanted.cls)) $("class").value = state.wanted.cls;
      state.page = state.wanted.page;
      applyView(false);
      const at = state.view.findIndex((i) => i.name === state.wanted.open);
      if (at >= 0) showViewer(at, false);
      return;
    }
    applyView(false);
  }

  const top = (item) => (item.predictions && item.predictions[0]) || item.target || null;
  const confidence = (item) => { const t = top(item); return item.status === "ok" && t ? t.probability : -1; };

  function fillClasses() {
    const select = $("class"), chosen = select.value;
    const predicted = new Map(), explained = new Map();
    for (const item of state.items) {
      const t = top(item);
      if (t) predicted.set(t.class, [t.name, (predicted.get(t.class) || [0, 0])[1] + 1]);
      if (item.target) explained.set(item.target.class, [item.target.name, (explained.get(item.target.class) || [0, 0])[1] + 1]);
    }
    const same = predicted.size === explained.size && state.items.every((i) => !i.target || !top(i) || top(i).class === i.target.class);
    while (select.options.length > 1) select.remove(1);
    for (const [prefix, label, classes] of same ? [["p", "class", predicted]] : [["p", "predicted class", predicted], ["t", "explained class", explained]]) {
      const group = document.createElement("optgroup");
      group.label = label;
      for (const [index, [name, count]] of Array.from(classes).sort((a, b) => collator.compare(a[1][0], b[1][0]))) {
        const option = document.createElement("option");
        option.value = prefix + ":" + index;
        option.textContent = name + " (" + count + ")";
        group.appendChild(option);
      }
      select.appendChild(group);
    }
    select.value = Array.from(select.options).some((o) => o.value === chosen) ? chosen : "";
  }

  function matches(item, words, chosen, status) {
    if (status && item.status !== status) return false;
    if (chosen) {
      const [kind, index] = chosen.split(":");
      const cls = kind === "t" ? item.target : top(item);
      if (!cls || String(cls.class) !== index) return false;
    }
    if (!words.length) return true;
    const t = top(item);
    const text = [item.name, item.file, t && t.name, item.target && item.target.name].join("\n").toLowerCase();
    return words.every((w) => text.includes(w));
  }

  function applyView(resetPage) {
    const words = $("search").value.toLowerCase().split(/\s+/).filter(Boolean);
    const chosen = $("class").value, status = $("state").value, [key, order] = $("sort").value.split("-");
    const sign = order === "asc" ? 1 : -1;
    const currentName = state.current >= 0 && state.view[state.current] ? state.view[state.current].name : null;
    state.view = state.items.filter((item) => matches(item, words, chosen, status));
    state.view.sort(key === "name"
      ? (a, b) => sign * collator.compare(a.name, b.name)
      : (a, b) => sign * (confidence(a) - confidence(b)) || collator.compare(a.name, b.name));
    if (resetPage) state.page = 0;
    state.page = Math.min(state.page, Math.max(0, pages() - 1));
    if (currentName !== null) state.current = state.view.findIndex((i) => i.name === currentName);
    renderPage();
    showStatus();
    if (state.restored) saveHash();
  }

  const perPage = () => Number($("per-page").value) || 48;
  const pages = () => Math.ceil(state.view.length / perPage());

  // ---------------------------------------------------------------- the grid

  function percent(p) { return (100 * p).toFixed(p >= 0.1 ? 1 : 2) + "%"; }
  function text(tag, className, content) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    node.textContent = content;
    return node;
  }

  function card(item, position) {
    const figure = document.createElement("figure");
    figure.className = "card " + item.status;
    figure.tabIndex = 0;
    figure.dataset.position = String(position);
    figure.dataset.name = item.name;
    const frame = document.createElement("div");
    frame.className = "frame";
    if (item.status === "ok") {
      const img = document.createElement("img");
      img.loading = "lazy";
      img.decoding = "async";
      if (item.thumb_size) { img.width = item.thumb_size[0]; img.height = item.thumb_size[1]; }
      img.src = item.thumb + "?v=" + encodeURIComponent(item.v || "");
      img.alt = "saliency overlay of " + item.file;
      frame.appendChild(img);
    } else {
      frame.textContent = item.status + ": " + (item.error || "");
    }
    const caption = document.createElement("figcaption");
    caption.appendChild(text("div", "name", item.file));
    if (item.name !== item.file && item.name.includes("/")) caption.appendChild(text("div", "meta", item.name));
    const t = top(item);
    if (item.status === "ok" && t) {
      const where = item.predicted_at ? " (at " + item.predicted_at[0] + "×" + item.predicted_at[1] + ")" : "";
      caption.appendChild(text("div", "prediction", t.name + " · " + percent(t.probability) + where));
      if (item.target) caption.appendChild(text("div", "meta explained", "explained: " + item.target.name + " (" + percent(item.target.probability) + ")"));
      caption.appendChild(text("div", "meta method", (item.method || "") + " · " + (item.layers || []).join(", ")));
    }
    figure.appendChild(frame);
    figure.appendChild(caption);
    return figure;
  }

  function renderPage() {
    const grid = $("grid");
    const start = state.page * perPage();
    const shown = state.view.slice(start, start + perPage());
    const fragment = document.createDocumentFragment();
    shown.forEach((item, i) => fragment.appendChild(card(item, start + i)));
    if (!shown.length) fragment.appendChild(text("p", "empty", loaded ? (state.items.length ? "No image matches." : state.running ? "No image yet: the run is going; this page updates itself." : "No image.") : "Loading…"));
    grid.replaceChildren(fragment);
    for (const where of document.querySelectorAll(".pager .where")) {
      where.textContent = state.view.length ? "page " + (state.page + 1) + " of " + pages() + " · " + (start + 1) + "–" + (start + shown.length) + " of " + state.view.length : "";
    }
    for (const button of document.querySelectorAll(".pager button")) {
      const step = Number(button.dataset.step);
      button.disabled = step < 0 ? state.page === 0 : state.page >= pages() - 1;
    }
    if (!$("viewer").hidden && state.current >= 0) showViewer(state.current, true);
  }

  function showStatus() {
    const counts = { ok: 0, failed: 0, interrupted: 0 };
    for (const item of state.items) counts[item.status] = (counts[item.status] || 0) + 1;
    const parts = [counts.ok + " explained"];
    if (counts.failed) parts.push(counts.failed + " failed");
    if (counts.interrupted) parts.push(counts.interrupted + " interrupted");
    parts.push(state.running ? "run in progress, updates itself" : "run finished");
    if (state.updated) parts.push("updated " + state.updated.replace("T", " ").replace("Z", " UTC"));
    $("status").textContent = parts.join(" · ");
  }

  // ---------------------------------------------------------------- the full view

  function showViewer(position, keepMap) {
    const item = state.view[position];
    if (!item) return closeViewer();
    state.current = position;
    if (!keepMap) state.mapIndex = 0;
    const viewer = $("viewer");
    viewer.hidden = false;
    $("viewer-title").textContent = item.name;
    $("previous").disabled = position === 0;
    $("next").disabled = position >= state.view.length - 1;
    const choice = $("map-choice");
    choice.replaceChildren();
    const details = $("details");
    details.replaceChildren();
    const stage = $("stage");
    if (item.status !== "ok") {
      stage.hidden = true;
      details.appendChild(text("p", "error", item.status + ": " + (item.error || "")));
      details.appendChild(text("p", "", item.image));
      return;
    }
    stage.hidden = false;
    const maps = item.maps || [];
    state.mapIndex = Math.min(state.mapIndex, Math.max(0, maps.length - 1));
    if (maps.length > 1) {
      maps.forEach((m, k) => {
        const button = text("button", k === state.mapIndex ? "on" : "", m.layer);
        button.type = "button";
        button.dataset.map = String(k);
        button.addEventListener("click", () => { state.mapIndex = k; showViewer(state.current, true); });
        choice.appendChild(button);
      });
    }
    const version = "?v=" + encodeURIComponent(item.v || "");
    const chosen = maps[state.mapIndex];
    setSrc($("original"), item.photo + version);
    setSrc($("photo"), item.photo + version);
    setSrc($("map"), chosen.view + version);
    $("map").alt = "saliency map (" + chosen.layer + ") of " + item.file;
    $("original").alt = item.file;
    $("map-caption").textContent = chosen.layer + (item.original === false ? " (the input is gone: its overlay is shown)" : "");
    applyOpacity();

    const predictions = document.createElement("table");
    const at = (size) => (size ? size[0] + " × " + size[1] : "");
    predictions.appendChild(text("caption", "", "top predictions" + (item.predicted_at ? " (model input " + at(item.predicted_at) + ")" : "")));
    for (const p of item.predictions || []) {
      const row = document.createElement("tr");
      row.appendChild(text("td", "", p.name));
      row.appendChild(text("td", "", percent(p.probability)));
      predictions.appendChild(row);
    }
    const facts = document.createElement("table");
    const add = (label, value) => {
      if (value === null || value === undefined || value === "") return;
      const row = document.createElement("tr");
      row.appendChild(text("th", "", label));
      row.appendChild(text("td", "", String(value)));
      facts.appendChild(row);
    };
    add("explained", item.target ? item.target.name + " (" + percent(item.target.probability) + ")" : "");
    add("method", item.method);
    add("layers", (item.layers || []).join(", "));
    add("combine", item.combine);
    add("lr", item.lr);
    add("steps", item.steps);
    add("model", item.model);
    add("size", item.size ? item.size[0] + " × " + item.size[1] : "");
    add("predicted at", item.predicted_at ? at(item.predicted_at) + " (the predictions and probabilities)" : "");
    add("explained at", item.explained_at ? at(item.explained_at) + " (the maps, brought to the image's size)" : "");
    add("input", item.image);
    const files = document.createElement("div");
    for (const m of maps) {
      const line = document.createElement("div");
      line.appendChild(document.createTextNode(m.layer + ": "));
      for (const [label, href] of [["overlay PNG", m.png], ["map NPY", m.npy]]) {
        if (!href) continue;  // not written (--no-overlay, --no-npy)
        const link = text("a", "", label);
        link.setAttribute("href", href);
        link.setAttribute("download", "");
        line.appendChild(link);
        line.appendChild(document.createTextNode(" "));
      }
      files.appendChild(line);
    }
    details.append(predictions, facts, files);
  }

  function setSrc(img, src) { if (img.getAttribute("src") !== src) img.setAttribute("src", src); }
  function applyOpacity() {
    const value = Number($("opacity").value);
    $("map").style.opacity = String(value / 100);
    $("opacity-value").textContent = value + "%";
  }
  function closeViewer() {
    $("viewer").hidden = true;
    state.current = -1;
    saveHash();
  }
  function step(delta) {
    const next = state.current + delta;
    if (next < 0 || next >= state.view.length) return;
    if (Math.floor(next / perPage()) !== state.page) { state.page = Math.floor(next / perPage()); renderPage(); }
    showViewer(next, true);
    saveHash();
  }

  // ---------------------------------------------------------------- controls and the address (#...)

  function saveHash() {
    const params = new URLSearchParams();
    for (const [key, id] of [["q", "search"], ["class", "class"], ["status", "state"], ["sort", "sort"], ["n", "per-page"]]) {
      if ($(id).value && !(key === "sort" && $(id).value === "confidence-desc") && !(key === "n" && $(id).value === "48")) params.set(key, $(id).value);
    }
    if (state.page) params.set("page", String(state.page + 1));
    if (!$("viewer").hidden && state.view[state.current]) params.set("open", state.view[state.current].name);
    const hash = params.toString();
    if (("#" + hash) !== location.hash && !(hash === "" && location.hash === "")) history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
  }
  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    const defaults = { q: "", status: "", sort: "confidence-desc", n: "48" };
    for (const [key, id] of [["q", "search"], ["status", "state"], ["sort", "sort"], ["n", "per-page"]]) $(id).value = params.has(key) ? params.get(key) : defaults[key];
    state.wanted = { cls: params.get("class") || "", page: Math.max(0, (Number(params.get("page")) || 1) - 1), open: params.get("open") };
  }

  let searchTimer = 0;
  $("search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(() => applyView(true), 120); });
  for (const id of ["class", "state", "sort", "per-page"]) $(id).addEventListener("change", () => applyView(true));
  for (const button of document.querySelectorAll(".pager button")) {
    button.addEventListener("click", () => { state.page = Math.max(0, Math.min(pages() - 1, state.page + Number(button.dataset.step))); renderPage(); saveHash(); window.scrollTo(0, 0); });
  }
  $("grid").addEventListener("click", (event) => {
    const figure = event.target.closest(".card");
    if (figure) { showViewer(Number(figure.dataset.position), false); saveHash(); }
  });
  $("grid").addEventListener("keydown", (event) => {
    const figure = event.target.closest(".card");
    if (figure && (event.key === "Enter" || event.key === " ")) { event.preventDefault(); showViewer(Number(figure.dataset.position), false); saveHash(); }
  });
  $("opacity").addEventListener("input", applyOpacity);
  for (const radio of document.querySelectorAll("input[name=layout]")) {
    radio.addEventListener("change", () => $("stage").classList.toggle("side", radio.value === "side" && radio.checked));
  }
  $("close").addEventListener("click", closeViewer);
  $("previous").addEventListener("click", () => step(-1));
  $("next").addEventListener("click", () => step(1));
  document.addEventListener("keydown", (event) => {
    if ($("viewer").hidden) return;
    if (event.key === "Escape") closeViewer();
    else if (event.key === "ArrowLeft") step(-1);
    else if (event.key === "ArrowRight") step(1);
  });

  window.addEventListener("hashchange", () => {  // an address typed or a link followed (replaceState fires nothing)
    readHash();
    state.restored = false;
    if (loaded) rebuild();
  });
  readHash();
  load(DATA + "index.js?t=" + Date.now());
})();
