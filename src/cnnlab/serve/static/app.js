"use strict";
// The page of `cnnlab serve`: reads /info, then offers the run's study. Plain DOM, nothing loaded from elsewhere.

const $ = (id) => document.getElementById(id);
const state = { info: null, files: {} };

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function call(path, form) {
  const response = await fetch(path, form ? { method: "POST", body: form } : {});
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON: answered below */ }
  if (!response.ok) {
    throw new Error((body && body.error) || `${path}: HTTP ${response.status}`);
  }
  return body;
}

function fmt(x, digits = 3) { return Number(x).toFixed(digits); }

// --- picking files: a drop zone is a label around a file input -------------------------------------------

function dropZone(name, onFile) {
  const zone = $(`drop-${name}`), input = $(`file-${name}`), img = $(`preview-${name}`);
  const take = (file) => {
    if (!file) return;
    state.files[name] = file;
    if (img.src) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(file);
    zone.classList.add("filled");
    const box = $(`box-${name}`);
    if (box) box.hidden = true;
    onFile(file);
  };
  input.addEventListener("change", () => take(input.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    take(e.dataTransfer.files[0]);
  });
}

// --- face run ---------------------------------------------------------------------------------------------

function drawBox(name, face) {
  // A detected face's box, in the uploaded image's pixels, over its preview.
  const box = $(`box-${name}`), img = $(`preview-${name}`);
  if (!box || !face || !face.box || !img.naturalWidth) { if (box) box.hidden = true; return; }
  // The preview is scaled to fit its box (object-fit: contain), centred.
  const s = Math.min(img.clientWidth / img.naturalWidth, img.clientHeight / img.naturalHeight);
  const ox = (img.clientWidth - img.naturalWidth * s) / 2, oy = (img.clientHeight - img.naturalHeight * s) / 2;
  const [x0, y0, x1, y1] = face.box;
  Object.assign(box.style, { left: `${ox + x0 * s}px`, top: `${oy + y0 * s}px`, width: `${(x1 - x0) * s}px`,
                             height: `${(y1 - y0) * s}px` });
  box.hidden = false;
}

async function compare() {
  if (!state.files.a || !state.files.b) return;
  const form = new FormData();
  form.append("a", state.files.a);
  form.append("b", state.files.b);
  $("compare").disabled = true;
  $("verdict").textContent = "Comparing…";
  $("verdict").className = "verdict";
  try {
    const r = await call("/verify?crops=true", form);
    showError(null);
    $("crop-a").src = r.crops[0];
    $("crop-b").src = r.crops[1];
    const same = r.same_person;
    $("verdict").textContent = same ? "Same person" : "Different people";
    $("verdict").className = `verdict ${same ? "same" : "different"}`;
    const normalized = state.info.model && state.info.model.normalize_embeddings;
    const top = Math.max(normalized ? 2 : 0, 2 * r.threshold, 1.1 * r.distance, 1e-9);
    $("bar-fill").style.width = `${Math.min(100, 100 * r.distance / top)}%`;
    $("bar-fill").className = `fill ${same ? "same" : "different"}`;
    $("bar-mark").style.left = `${100 * r.threshold / top}%`;
    $("distance").textContent = `distance ${fmt(r.distance)} ${same ? "≤" : ">"} threshold ${fmt(r.threshold)}` +
      " (the bar is the distance, the mark the threshold the run chose on its validation pairs)";
    (r.faces || []).forEach((face, i) => drawBox(i ? "b" : "a", face));
    // Several faces in a photo: the answer is for the closest pair, whose boxes are drawn.
    const counts = (r.compared || []).map((c) => c.length);
    $("compared").textContent = Math.max(0, ...counts) > 1
      ? `Faces compared: ${counts[0]} in A, ${counts[1]} in B; the answer is for the closest pair (boxed).` : "";
    $("verify-result").hidden = false;
  } catch (e) {
    showError(e.message);
    $("verdict").textContent = "";
  } finally {
    $("compare").disabled = false;
  }
}

async function identify() {
  if (!state.files.probe) return;
  const form = new FormData();
  form.append("image", state.files.probe);
  const list = $("matches");
  list.textContent = "";
  try {
    const r = await call(`/identify?k=${$("k").value}`, form);
    showError(null);
    const faces = r.faces || [{ face: r.face, matches: r.matches }];
    faces.forEach((answer, n) => {
      if (faces.length > 1) {
        const head = document.createElement("li");
        head.className = "muted face-head";
        head.textContent = `Face ${n + 1} of ${faces.length}` + (answer.face
          ? ` at (${answer.face.box.map(Math.round).join(", ")})` : "") + (n ? "" : ", the one the photo is of");
        list.append(head);
      }
      showMatches(list, answer.matches);
    });
  } catch (e) {
    showError(e.message);
  }
}

function showMatches(list, matches) {
  for (const m of matches) {
    const li = document.createElement("li");
    if (m.thumbnail) {
      const img = document.createElement("img");
      img.src = m.thumbnail;
      img.alt = m.name;
      li.append(img);
    }
    const text = document.createElement("div");
    const name = document.createElement("div");
    name.textContent = `${m.rank}. ${m.name.replaceAll("_", " ")}`;
    if (m.same_person) name.className = "same";
    const d = document.createElement("div");
    d.className = "muted";
    d.textContent = `distance ${fmt(m.distance)}${m.same_person ? " (within the threshold)" : ""}`;
    text.append(name, d);
    li.append(text);
    list.append(li);
  }
}

function startFaces(info) {
  $("faces").hidden = false;
  $("run-info").textContent = `Face run · ${info.model.backbone}, ${info.model.embedding_dim}-d embeddings, ` +
    `threshold ${fmt(info.threshold)}` + (info.gallery ? ` · gallery of ${info.gallery.people} people` : "");
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
      for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== tab.dataset.view;
    });
  }
  const ready = () => { $("compare").disabled = !(state.files.a && state.files.b); if (!$("compare").disabled) compare(); };
  dropZone("a", ready);
  dropZone("b", ready);
  $("compare").addEventListener("click", compare);
  if (!info.gallery) {
    $("no-gallery").hidden = false;
    $("drop-probe").hidden = true;
  }
  dropZone("probe", identify);
  $("k").addEventListener("change", identify);
}

// --- CIFAR run --------------------------------------------------------------------------------------------

async function predict() {
  const form = new FormData();
  form.append("images", state.files.cifar);
  const list = $("predictions");
  list.textContent = "";
  try {
    const r = await call("/predict?k=5", form);
    showError(null);
    for (const t of r.predictions[0].top) {
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.textContent = t.class;
      const track = document.createElement("span");
      const bar = document.createElement("div");
      bar.className = "p";
      bar.style.width = `${Math.max(1, 100 * t.probability)}%`;
      track.append(bar);
      const p = document.createElement("span");
      p.textContent = `${(100 * t.probability).toFixed(1)}%`;
      li.append(name, track, p);
      list.append(li);
    }
  } catch (e) {
    showError(e.message);
  }
}

function startCifar(info) {
  $("cifar").hidden = false;
  $("run-info").textContent = `CIFAR run · blocks ${info.model.blocks}, width ${info.model.width}, ` +
    `${info.classes.length} classes`;
  dropZone("cifar", predict);
}

async function start() {
  try {
    const info = state.info = await call("/info");
    $("run-name").textContent = info.run;
    document.title = `cnnlab · ${info.run}`;
    (info.study === "faces" ? startFaces : startCifar)(info);
  } catch (e) {
    $("run-info").textContent = "";
    showError(e.message);
  }
}

start();
