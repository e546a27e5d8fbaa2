// The metakit serve page: collects classes, support items and queries, posts them to /predict
// and draws each query's label with a probability bar per class. No framework, no build step.
"use strict";

const state = { kind: "image", classes: [], queries: [], limits: null };
const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;  // never innerHTML: names come from users
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function isImage(file) {
  return file.type.startsWith("image/") || /\.(png|jpe?g|gif|bmp|tiff?|webp)$/i.test(file.name);
}

// A list of files shown as thumbnails, each removable; object URLs are revoked when dropped.
function fileList(container) {
  const files = [];
  const render = () => {
    for (const img of container.querySelectorAll("img")) URL.revokeObjectURL(img.src);
    container.replaceChildren();
    files.forEach((file, i) => {
      const remove = el("button", { type: "button", class: "remove-file", title: "remove " + file.name, text: "\u00d7" });
      remove.addEventListener("click", () => { files.splice(i, 1); render(); });
      container.append(el("figure", { class: "thumb", title: file.name }, [
        el("img", { src: URL.createObjectURL(file), alt: file.name }), remove,
      ]));
    });
  };
  return {
    files,
    add(newFiles) {
      const rejected = [];
      for (const f of newFiles) (isImage(f) ? files.push(f) : rejected.push(f.name));
      render();
      if (rejected.length) showError(`not an image: ${rejected.join(", ")}`);
    },
    clear() { files.length = 0; render(); },
  };
}

function wireDrop(zone, input, list) {
  input.addEventListener("change", () => {
    list.add(Array.from(input.files));
    input.value = "";  // so choosing more files adds to these
  });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    list.add(Array.from(e.dataTransfer.files));
  });
}

function addClass(name = "") {
  const card = $("#class-template").content.firstElementChild.cloneNode(true);
  const entry = { card, nameInput: $(".class-name", card), text: $(".support-text", card) };
  entry.nameInput.value = name;
  entry.list = fileList($(".thumbs", card));
  wireDrop($(".support-drop", card), $(".support-files", card), entry.list);
  $(".remove-class", card).addEventListener("click", () => {
    state.classes.splice(state.classes.indexOf(entry), 1);
    entry.list.clear();
    card.remove();
  });
  state.classes.push(entry);
  $("#classes").append(card);
  return entry;
}

function lines(text) {
  return text.split("\n").map((s) => s.trim()).filter((s) => s.length > 0);
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

function buildRequest() {
  const names = state.classes.map((c) => c.nameInput.value.trim());
  const seen = new Set();
  for (const name of names) {
    if (name && seen.has(name)) throw new Error(`class '${name}' is named twice; give each class a different name.`);
    seen.add(name);
  }
  if (state.kind === "text") {
    const support = {};
    state.classes.forEach((c, i) => { support[names[i]] = lines(c.text.value); });
    const query = lines($("#query-text").value);
    return { items: query.map((q) => ({ text: q })),
             init: { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ support, query }) } };
  }
  const form = new FormData();
  state.classes.forEach((c, i) => {
    form.append("class", names[i]);
    for (const file of c.list.files) form.append("support:" + names[i], file, file.name);
  });
  for (const file of state.queries.files) form.append("query", file, file.name);
  return { items: state.queries.files.map((f) => ({ file: f })), init: { method: "POST", body: form } };
}

function barFill(p) {
  const fill = el("span", { class: "bar-fill" });
  fill.style.width = `${(100 * p).toFixed(1)}%`;  // CSSOM, which the page's CSP allows (style attributes it does not)
  return fill;
}

function renderResults(answer, items) {
  const results = $("#results");
  results.replaceChildren();
  answer.predictions.forEach((pred, i) => {
    const item = items[i] || {};
    const order = answer.classes.map((name, k) => [name, pred.probabilities[k]]).sort((a, b) => b[1] - a[1]);
    const bars = el("div", { class: "bars" }, order.map(([name, p]) => el("div", { class: "bar-row" + (name === pred.label ? " top" : "") }, [
      el("span", { class: "bar-name", text: name, title: name }),
      el("span", { class: "bar" }, [barFill(p)]),
      el("span", { class: "bar-value", text: `${(100 * p).toFixed(1)}%` }),
    ])));
    const what = item.file
      ? el("img", { class: "result-thumb", src: URL.createObjectURL(item.file), alt: pred.file })
      : el("blockquote", { class: "result-text", text: pred.text });
    results.append(el("article", { class: "result", "data-label": pred.label }, [
      what,
      el("div", { class: "result-body" }, [
        el("div", { class: "result-name", text: pred.file || "", title: pred.file || "" }),
        el("div", { class: "result-label", text: pred.label }),
        bars,
      ]),
    ]));
  });
  $("#results-section").hidden = false;
}

async function predict() {
  showError("");
  const button = $("#predict");
  let request;
  try {
    request = buildRequest();
  } catch (err) {
    showError(err.message);
    return;
  }
  button.disabled = true;
  $("#status").textContent = "adapting and labelling\u2026";
  document.body.classList.add("busy");
  try {
    const response = await fetch("/predict", request.init);
    let answer;
    try {
      answer = await response.json();
    } catch {
      throw new Error(`the server answered ${response.status} ${response.statusText}`);
    }
    if (!response.ok) throw new Error(answer.error || `the server answered ${response.status}`);
    renderResults(answer, request.items);
    const n = answer.predictions.length;
    $("#status").textContent = `${n} item${n === 1 ? "" : "s"} labelled in ${answer.seconds.toFixed(2)} s`;
  } catch (err) {
    $("#status").textContent = "";
    showError(err.message);
  } finally {
    button.disabled = false;
    document.body.classList.remove("busy");
    document.body.dataset.done = String(Date.now());  // a hook for tests and scripts waiting on an answer
  }
}

async function init() {
  state.queries = fileList($("#query-thumbs"));
  wireDrop($("#query-drop"), $("#query-files"), state.queries);
  $("#add-class").addEventListener("click", () => addClass().nameInput.focus());
  $("#predict").addEventListener("click", predict);
  $("#clear-queries").addEventListener("click", () => { state.queries.clear(); $("#query-text").value = ""; });
  addClass();
  addClass();
  try {
    const info = await (await fetch("/health")).json();
    state.kind = info.kind;
    state.limits = info.limits;
    $("#run-info").textContent =
      `run ${info.run} \u00b7 ${info.learner} on ${info.dataset} \u00b7 ${info.checkpoint} checkpoint \u00b7 ${info.kind} inputs`;
  } catch {
    $("#run-info").textContent = "cannot reach the server; is metakit serve still running?";
  }
  document.body.dataset.kind = state.kind;
  const unit = state.kind === "text" ? "sentences" : "images";
  for (const span of document.querySelectorAll(".unit")) span.textContent = unit;
  if (state.kind === "text") $("#support-hint").textContent = "Type a few example sentences under each class, one per line.";
  document.body.dataset.ready = "true";
}

init();
