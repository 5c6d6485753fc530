// normgrad explorer: the page of `normgrad serve`. Names (files, classes, layers) are only set with textContent or value.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { info: null, image: null, photo: null, size: null, result: null, maps: [], selected: 0, seq: 0, shown: 0 };
  let timer = 0;

  async function api(path, options) {
    let response;
    try {
      response = await fetch(path, options);
    } catch (error) {
      throw new Error("the explorer's server does not answer (is normgrad serve still running?)");
    }
    let body = null;
    try { body = await response.json(); } catch (error) { body = null; }
    if (!response.ok) throw new Error((body && body.error) || "the server answered " + response.status);
    return body;
  }
  function showError(message) {
    $("error").textContent = message || "";
    $("error").hidden = !message;
  }
  function option(value, label) {
    const node = document.createElement("option");
    node.value = value;
    node.textContent = label === undefined ? value : label;
    return node;
  }

  // ---------------------------------------------------------------- setup from /api/info

  async function init() {
    const info = await api("/api/info");
    state.info = info;
    $("model").textContent = "— " + info.model;
    const classes = document.createDocumentFragment();
    info.classes.forEach((name, index) => classes.appendChild(option(index + ": " + name)));
    $("classes").appendChild(classes);
    const methods = $("method");
    info.methods.forEach((name) => methods.appendChild(option(name)));
    const pairs = document.createElement("optgroup");
    pairs.label = "extract + aggregate";
    info.pairs.forEach((name) => pairs.appendChild(option(name)));
    methods.appendChild(pairs);
    layersFor(methods.value).forEach((name) => addLayer(name, true));
    state.method = methods.value;
    info.layers.forEach((name) => $("layer-names").appendChild(option(name)));
    info.combine.forEach((name) => $("combine").appendChild(option(name)));
    $("lr").value = info.lr;
    $("steps").value = info.steps;
    if (info.images.length) {
      $("listed-box").hidden = false;
      info.images.forEach((name, index) => $("listed").appendChild(option(String(index), name)));
    }
    updateControls();
    document.body.dataset.ready = "1";
  }

  function addLayer(name, checked) {
    for (const box of $("layers").querySelectorAll("input")) if (box.value === name) { box.checked = true; return; }
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = name;
    box.checked = checked;
    box.addEventListener("change", later);
    label.append(box, document.createTextNode(" " + name));
    $("layers").appendChild(label);
  }
  // the default method (normgrad explain's) has layers of its own; every other method starts from the stage layers
  const layersFor = (method) => (method === "default" && state.info.explain_default ? state.info.explain_default.layers : state.info.default_layers);
  function selectLayers(names) {
    for (const box of $("layers").querySelectorAll("input")) box.checked = names.includes(box.value);
    names.forEach((name) => addLayer(name, true));
  }
  function methodChanged() {
    const method = $("method").value;
    if ((method === "default") !== (state.method === "default")) selectLayers(layersFor(method));
    state.method = method;
    updateControls();
    explain();
  }
  const usesLayers = (method) => !state.info.input_level.includes(method);
  const innerStep = (method) => method.startsWith("meta") || method.startsWith("adversarial");
  function updateControls() {
    const method = $("method").value;
    $("layers-box").disabled = !usesLayers(method);
    $("meta-box").disabled = !innerStep(method);
    $("target").disabled = state.info.model_free.includes(method);
  }

  // ---------------------------------------------------------------- opening photos

  async function openFile(file) {
    if (!file) return;
    showError("");
    const kind = file.type && file.type.startsWith("image/") ? file.type : "application/octet-stream";
    try {
      opened(await api("/api/upload", { method: "POST", headers: { "Content-Type": kind, "X-File-Name": encodeURIComponent(file.name) }, body: file }));
    } catch (error) {
      showError("Cannot open " + file.name + ": " + error.message);
    }
  }
  async function openListed(index) {
    showError("");
    try { opened(await api("/api/open/" + Number(index), { method: "POST" })); } catch (error) { showError(error.message); }
  }

  function opened(data) {
    state.image = data.image;
    state.size = [data.width, data.height];
    $("photo-name").textContent = data.name + " · " + data.width + " × " + data.height + " px";
    const list = $("predictions");
    list.replaceChildren();
    if (data.predicted_at) {
      list.title = "predicted at the model's input size " + data.predicted_at[0] + " × " + data.predicted_at[1] +
        "; the maps explain at " + data.explained_at[0] + " × " + data.explained_at[1];
    }
    for (const p of data.predictions) {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.class = String(p.class);
      button.textContent = p.name + " · " + (100 * p.probability).toFixed(1) + "%";
      button.title = "explain this class";
      button.addEventListener("click", () => { $("target").value = p.class + ": " + p.name; explain(); });
      item.appendChild(button);
      list.appendChild(item);
    }
    $("target").value = "";
    const photo = new Image();
    photo.onload = () => { state.photo = photo; explain(); };
    photo.onerror = () => showError("the photo could not be shown");
    photo.src = "/api/photo/" + encodeURIComponent(data.image);
  }

  // ---------------------------------------------------------------- explaining

  function later() { clearTimeout(timer); timer = setTimeout(explain, 150); }

  function settings() {
    const method = $("method").value;
    const request = { image: state.image, method: method };
    if (!state.info.model_free.includes(method)) {
      const text = $("target").value.trim();
      const numbered = /^(\d+):/.exec(text);
      request.target = !text ? "auto" : numbered ? Number(numbered[1]) : /^\d+$/.test(text) ? Number(text) : text;
    }
    if (usesLayers(method)) {
      request.layers = Array.from($("layers").querySelectorAll("input:checked"), (box) => box.value);
      if (request.layers.length > 1) request.combine = $("combine").value;
    }
    if (innerStep(method)) {
      request.lr = Number($("lr").value);
      request.steps = Number($("steps").value);
    }
    return request;
  }

  async function explain() {
    clearTimeout(timer);
    if (!state.image || !state.photo) return;
    const seq = ++state.seq;
    document.body.classList.add("busy");
    const started = performance.now();
    try {
      const result = await api("/api/explain", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(settings()) });
      if (seq !== state.seq) return;  // a newer request is on its way
      showError("");
      show(result, performance.now() - started);
    } catch (error) {
      if (seq === state.seq) showError(error.message);
    } finally {
      if (seq === state.seq) document.body.classList.remove("busy");
    }
  }

  function decode(map) {
    const bytes = atob(map.data);
    const levels = new Uint16Array(bytes.length / 2);
    for (let i = 0; i < levels.length; i += 1) levels[i] = bytes.charCodeAt(2 * i) | (bytes.charCodeAt(2 * i + 1) << 8);
    return Object.assign({}, map, { levels: levels });
  }

  function show(result, milliseconds) {
    const previous = state.maps[state.selected] && state.maps[state.selected].layer;
    state.result = result;
    state.maps = result.maps.map(decode);
    const again = state.maps.findIndex((m) => m.layer === previous);
    state.selected = again >= 0 ? again : 0;
    for (const button of $("predictions").querySelectorAll("button")) button.classList.toggle("on", result.target && button.dataset.class === String(result.target.class));
    const tiles = $("tiles");
    tiles.replaceChildren();
    state.maps.forEach((map, k) => {
      const figure = document.createElement("figure");
      figure.className = "tile";
      figure.dataset.index = String(k);
      const canvas = document.createElement("canvas");
      draw(canvas, map);
      canvas.addEventListener("mousemove", (event) => readout(event, canvas, map));
      const caption = document.createElement("figcaption");
      caption.textContent = map.layer;
      figure.append(canvas, caption);
      figure.addEventListener("click", () => select(k));
      tiles.appendChild(figure);
    });
    select(state.selected);
    const what = result.target ? result.target.name + " (" + (100 * result.target.probability).toFixed(1) + "%)" : "no class (model-free)";
    $("timing").textContent = result.method + " for " + what + ": computed in " + result.seconds.toFixed(3) + " s, shown after " + (milliseconds / 1000).toFixed(3) + " s";
    const box = $("result");
    box.dataset.result = result.result;
    box.dataset.target = result.target ? String(result.target.class) : "";
    box.dataset.method = result.method;
    state.shown += 1;
    box.dataset.shown = String(state.shown);
  }

  function select(k) {
    state.selected = k;
    for (const tile of $("tiles").children) tile.classList.toggle("on", tile.dataset.index === String(k));
    const map = state.maps[k];
    draw($("main"), map);
    $("main-name").textContent = map.layer + ":";
    $("download-png").href = "/api/result/" + encodeURIComponent(state.result.result) + "/" + k + ".png";
    $("download-npy").href = "/api/result/" + encodeURIComponent(state.result.result) + "/" + k + ".npy";
  }

  function draw(canvas, map) {
    const [height, width] = map.shape;
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d");
    context.globalAlpha = 1;
    context.drawImage(state.photo, 0, 0, width, height);
    const colours = context.createImageData(width, height);
    const table = state.info.colormap;
    for (let i = 0; i < map.levels.length; i += 1) {
      const colour = table[Math.min(255, Math.floor((map.levels[i] / 65535) * 256))];
      colours.data[4 * i] = colour[0];
      colours.data[4 * i + 1] = colour[1];
      colours.data[4 * i + 2] = colour[2];
      colours.data[4 * i + 3] = 255;
    }
    const layer = document.createElement("canvas");
    layer.width = width;
    layer.height = height;
    layer.getContext("2d").putImageData(colours, 0, 0);
    context.globalAlpha = Number($("opacity").value) / 100;
    context.drawImage(layer, 0, 0);
    context.globalAlpha = 1;
  }

  function readout(event, canvas, map) {
    const box = canvas.getBoundingClientRect();
    const [height, width] = map.shape;
    const column = Math.min(width - 1, Math.max(0, Math.floor(((event.clientX - box.left) / box.width) * width)));
    const row = Math.min(height - 1, Math.max(0, Math.floor(((event.clientY - box.top) / box.height) * height)));
    const value = map.min + (map.levels[row * width + column] / 65535) * (map.max - map.min);
    const x = Math.floor(((column + 0.5) / width) * state.size[0]), y = Math.floor(((row + 0.5) / height) * state.size[1]);
    $("readout").textContent = map.layer + " at (" + x + ", " + y + "): " + value.toPrecision(4) + "   (range " + map.min.toPrecision(3) + " … " + map.max.toPrecision(3) + ")";
  }

  // ---------------------------------------------------------------- events

  $("file").addEventListener("change", () => { openFile($("file").files[0]); $("file").value = ""; });
  const drop = $("drop");
  document.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  document.addEventListener("dragleave", () => drop.classList.remove("over"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    openFile(event.dataTransfer.files[0]);
  });
  $("listed").addEventListener("change", () => openListed($("listed").value));
  $("listed-filter").addEventListener("input", () => {
    const words = $("listed-filter").value.toLowerCase();
    for (const item of $("listed").options) item.hidden = !item.textContent.toLowerCase().includes(words);
  });
  $("target").addEventListener("change", explain);
  $("method").addEventListener("change", methodChanged);
  for (const id of ["combine", "lr", "steps"]) $(id).addEventListener("change", later);
  $("layer-add-button").addEventListener("click", () => {
    const name = $("layer-add").value.trim();
    if (!name) return;
    if (!state.info.layers.includes(name)) { showError("no layer " + JSON.stringify(name) + " in " + state.info.model + "; pick one from the list"); return; }
    addLayer(name, true);
    $("layer-add").value = "";
    explain();
  });
  $("opacity").addEventListener("input", () => { if (state.maps.length) select(state.selected); });
  $("main").addEventListener("mousemove", (event) => { if (state.maps.length) readout(event, $("main"), state.maps[state.selected]); });

  init().catch((error) => showError("The explorer could not start: " + error.message));
})();
