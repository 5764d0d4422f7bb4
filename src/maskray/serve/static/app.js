// maskray serve: the page. Talks to the JSON API of maskray/serve/app.py; needs no other file.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const state = { info: null, caseId: null, meta: null, nodules: [], selected: -1, bad: -1, offset: 0,
                job: null, k: 0, images: 0, clickedAt: 0 };

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" },
                                           body: JSON.stringify(body) };
  const res = await fetch(path, opts);
  if (!res.ok) {
    let detail = `${res.status} ${res.statusText}`, nodule;
    try { const j = await res.json(); detail = j.detail || detail; nodule = j.nodule; } catch (e) { /* not JSON */ }
    const err = new Error(detail); err.nodule = nodule; throw err;
  }
  return res;
}

function say(text, ok = false) { $("message").textContent = text; $("message").className = ok ? "ok" : ""; }
const enc = encodeURIComponent;

// ------------------------------------------------------------------------------------- cases
async function loadCases(reset) {
  if (reset) { state.offset = 0; $("case-list").replaceChildren(); }
  const q = $("search").value;
  const data = await (await api(`/api/cases?q=${enc(q)}&offset=${state.offset}&limit=45`)).json();
  for (const id of data.ids) {
    const b = document.createElement("button");
    b.className = "case"; b.dataset.id = id; b.title = id;
    const img = document.createElement("img");
    img.alt = id; img.loading = "lazy"; img.src = `/api/cases/${enc(id)}/image.png`;
    img.onerror = () => { img.onerror = null; img.src = `/api/cases/${enc(id)}/mask.png`; };
    const label = document.createElement("span"); label.textContent = id;
    b.append(img, label);
    b.onclick = () => selectCase(id);
    $("case-list").append(b);
  }
  state.offset += data.ids.length;
  $("case-count").textContent = `${data.total} case${data.total === 1 ? "" : "s"}`;
  $("more").hidden = state.offset >= data.total;
  if (reset && data.ids.length && !state.caseId) selectCase(data.ids[0]);
}

async function selectCase(id) {
  state.meta = await (await api(`/api/cases/${enc(id)}`)).json();
  state.caseId = id; state.nodules = []; state.selected = -1; state.bad = -1;
  for (const b of document.querySelectorAll(".case")) b.classList.toggle("active", b.dataset.id === id);
  $("case-title").textContent = `case ${id}` + (state.meta.nodules ? ` (${state.meta.nodules} nodule(s) already)` : "");
  $("real").src = state.meta.has_image ? `/api/cases/${enc(id)}/image.png` : "";
  $("mask").src = `/api/cases/${enc(id)}/mask.png`;
  $("overlay").setAttribute("viewBox", `0 0 ${state.meta.width} ${state.meta.height}`);
  $("mode").querySelector('[value="inpaint"]').disabled = !state.meta.inpaint;
  if (!state.meta.inpaint) $("mode").value = "new";
  say("");
  drawNodules();
}

// ------------------------------------------------------------------------------------- nodules
function radiusPx(d) { return d / 2 / state.info.spacing_mm[1]; }

function drawNodules() {
  const svg = $("overlay");
  svg.replaceChildren();
  state.nodules.forEach((n, i) => {
    const c = document.createElementNS(SVG, "circle");
    c.setAttribute("cx", n.x + 0.5); c.setAttribute("cy", n.y + 0.5);
    c.setAttribute("r", Math.max(radiusPx(n.diameter_mm), 0.6));
    c.dataset.index = i;
    c.classList.toggle("selected", i === state.selected);
    c.classList.toggle("bad", i === state.bad);
    svg.append(c);
  });
  $("remove").disabled = state.selected < 0;
  $("clear").disabled = state.nodules.length === 0;
  $("nodule-list").textContent = state.nodules.map((n, i) =>
    `${i + 1}: (${n.y}, ${n.x}) ${n.diameter_mm} mm`).join("  ·  ");
  $("generate").disabled = state.bad >= 0 || !state.caseId || state.job !== null;
}

async function updateMask() {
  try {
    const res = await api("/api/mask", { case_id: state.caseId, nodules: state.nodules });
    $("mask").src = URL.createObjectURL(await res.blob());
    state.bad = -1;
    say(state.nodules.length ? `${state.nodules.length} nodule(s) placed` : "", true);
  } catch (e) {
    state.bad = e.nodule === undefined ? -1 : e.nodule;
    say(e.message);
  }
  drawNodules();
}

function pixelAt(ev) {
  const r = $("overlay").getBoundingClientRect();
  const x = Math.floor((ev.clientX - r.left) / r.width * state.meta.width);
  const y = Math.floor((ev.clientY - r.top) / r.height * state.meta.height);
  return { x: Math.min(Math.max(x, 0), state.meta.width - 1), y: Math.min(Math.max(y, 0), state.meta.height - 1) };
}

let drag = null;
function onPointerDown(ev) {
  if (!state.meta) return;
  const p = pixelAt(ev);
  if (ev.target.tagName === "circle") {
    state.selected = Number(ev.target.dataset.index);
    drag = { index: state.selected, moved: false };
    $("overlay").setPointerCapture(ev.pointerId);
    $("diameter").value = state.nodules[state.selected].diameter_mm;
    $("diameter-value").value = $("diameter").value;
    drawNodules();
    return;
  }
  if (state.nodules.length >= state.info.limits.nodules) { say(`at most ${state.info.limits.nodules} nodules`); return; }
  state.nodules.push({ y: p.y, x: p.x, diameter_mm: Number($("diameter").value) });
  state.selected = state.nodules.length - 1;
  updateMask();
}

function onPointerMove(ev) {
  if (!drag) return;
  const p = pixelAt(ev), n = state.nodules[drag.index];
  if (p.x !== n.x || p.y !== n.y) { n.x = p.x; n.y = p.y; drag.moved = true; drawNodules(); }
}

function onPointerUp() {
  if (drag && drag.moved) updateMask();
  drag = null;
}

// ------------------------------------------------------------------------------------- generation
function seeds() {
  const first = Number($("seed").value), n = Number($("count").value);
  return Array.from({ length: n }, (_, i) => first + i);
}

async function generate() {
  state.clickedAt = performance.now();
  const body = { case_id: state.caseId, nodules: state.nodules, mode: $("mode").value, scheduler: $("scheduler").value,
                 steps: Number($("steps").value), guidance_scale: Number($("guidance").value), seeds: seeds() };
  let job;
  try { job = await (await api("/api/generate", body)).json(); } catch (e) { say(e.message); return; }
  state.job = job.job;
  $("generate").disabled = true;
  say("");
  poll(job.job);
}

async function poll(jobId) {
  let s;
  try { s = await (await api(`/api/jobs/${jobId}`)).json(); } catch (e) { finish(e.message); return; }
  if (s.state === "queued") $("status").textContent = `waiting (${s.position} ahead)`;
  if (s.state === "running") {
    $("progress").value = s.total ? s.done / s.total : 0;
    $("status").textContent = `step ${s.done} of ${s.total}`;
  }
  if (s.state === "failed") { finish(s.error); return; }
  if (s.state === "done") { showResult(jobId, s); return; }
  setTimeout(() => poll(jobId), 200);
}

function finish(error) {
  state.job = null;
  if (error) say(error);
  drawNodules();
}

function showResult(jobId, s) {
  state.images = s.images;
  state.resultJob = jobId;
  $("progress").value = 1;
  const strip = $("seed-strip");
  strip.replaceChildren();
  s.seeds.forEach((seed, k) => {
    const b = document.createElement("button");
    const img = document.createElement("img");
    img.src = `/api/jobs/${jobId}/${k}/view/image.png`; img.alt = `seed ${seed}`;
    b.append(img, `seed ${seed}`);
    b.onclick = () => showImage(jobId, k, s.seeds, s.checks);
    strip.append(b);
  });
  $("res-image").onload = () => {
    $("res-image").onload = null;
    const secs = (performance.now() - state.clickedAt) / 1000;
    $("status").textContent = `done: ${s.seeds.length} image(s), click to image ${secs.toFixed(2)} s`;
    $("status").dataset.seconds = secs.toFixed(3);
  };
  showImage(jobId, 0, s.seeds, s.checks);
  $("results").hidden = false;
  finish(null);
}

function showImage(jobId, k, seedList, checks) {
  state.k = k;
  const base = `/api/jobs/${jobId}/${k}`;
  const hasReal = state.meta.has_image;
  const check = checks && checks[k];  // serve --check: does the image show what its mask says?
  $("res-image").src = `${base}/view/image.png`;
  $("res-caption").textContent = `generated, seed ${seedList[k]}` +
    (check ? (check.passed ? " · passes the check" : ` · fails the check: ${check.failures.join("; ")}`) : "");
  $("save").disabled = Boolean(check && !check.passed);
  $("res-mask").src = `${base}/view/mask.png`;
  $("fig-real").hidden = $("fig-diff").hidden = !hasReal;
  if (hasReal) { $("res-real").src = `${base}/view/real.png`; $("res-diff").src = `${base}/view/diff.png`; }
  [...$("seed-strip").children].forEach((b, i) => b.classList.toggle("active", i === k));
  $("saved").textContent = "";
  setDownloads();
}

function setDownloads() {
  if (!state.resultJob) return;
  const base = `/api/jobs/${state.resultJob}/${state.k}/download`;
  const fmt = $("format").value;
  const image = { png: "image.png", nifti: "image.nii.gz", dicom: "image.dcm" }[fmt];
  const mask = fmt === "png" ? "mask.png" : "mask.nii.gz";
  $("dl-image").href = `${base}/${image}`;
  $("dl-mask").href = `${base}/${mask}`;
}

async function save() {
  try {
    const r = await (await api(`/api/jobs/${state.resultJob}/${state.k}/save`, {})).json();
    $("saved").textContent = `added as ${r.case_id}`;
  } catch (e) { say(e.message); }
}

// ------------------------------------------------------------------------------------- start
async function start() {
  const info = state.info = await (await api("/api/info")).json();
  $("model-info").textContent = `${info.cases} cases · model ${info.image_size} px · labels ${Object.keys(info.labels).join(", ")}` +
    (info.check ? ` · every image checked by ${info.check.checkers} checker(s)` : "");
  const d = $("diameter");
  d.min = info.diameter_mm.min; d.max = info.diameter_mm.max; d.value = info.diameter_mm.default;
  $("diameter-value").value = d.value;
  for (const name of info.schedulers) $("scheduler").append(new Option(name, name));
  $("scheduler").value = info.defaults.scheduler;
  $("steps").value = info.defaults.steps;
  $("guidance").value = info.defaults.guidance_scale;
  $("steps").max = info.limits.steps; $("count").max = info.limits.seeds; $("guidance").max = info.limits.guidance;
  $("save").hidden = !info.can_save;
  d.oninput = () => { $("diameter-value").value = d.value; };
  d.onchange = () => {
    if (state.selected >= 0) { state.nodules[state.selected].diameter_mm = Number(d.value); updateMask(); }
  };
  $("remove").onclick = () => { state.nodules.splice(state.selected, 1); state.selected = -1; updateMask(); };
  $("clear").onclick = () => { state.nodules = []; state.selected = -1; updateMask(); };
  const ov = $("overlay");
  ov.addEventListener("pointerdown", onPointerDown);
  ov.addEventListener("pointermove", onPointerMove);
  ov.addEventListener("pointerup", onPointerUp);
  $("generate").onclick = generate;
  $("format").onchange = setDownloads;
  $("save").onclick = save;
  let timer;
  $("search").oninput = () => { clearTimeout(timer); timer = setTimeout(() => loadCases(true), 200); };
  $("more").onclick = () => loadCases(false);
  await loadCases(true);
}

start().catch((e) => say(`could not start: ${e.message}`));
