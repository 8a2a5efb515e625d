// fer-serve's page: a photo or the camera's frames -> POST /predict -> the label, a bar per class, the face box.
// Plain JavaScript, no dependencies (the page works offline). The camera sends its next frame as soon as the
// answer to the previous one has arrived: it updates at the rate the server sustains.
"use strict";

const view = document.getElementById("view");
const ctx = view.getContext("2d");
const video = document.getElementById("video");
const labelEl = document.getElementById("label");
const barsEl = document.getElementById("bars");
const statusEl = document.getElementById("status");
const errorEl = document.getElementById("error");
const cameraButton = document.getElementById("camera");
let classes = [];
let updates = 0;
let stream = null;

fetch("info").then((r) => r.json()).then((info) => {
  const m = info.model || {};
  classes = m.classes || [];
  document.getElementById("model").textContent =
    `${m.name} model (${m.file}), ${classes.length} classes, ${m.preprocessing ? m.preprocessing.image_size : "?"} px` +
    ` faces, face crop ${m.preprocessing ? m.preprocessing.face_crop.mode : "?"}; fer-lightning ${m.version}`;
}).catch(() => { document.getElementById("model").textContent = "the server's /info is not available"; });

function showBars(result) {
  barsEl.replaceChildren();
  for (const [name, p] of Object.entries(result.probabilities)) {
    const row = document.createElement("div");
    row.className = "bar" + (name === result.label ? " top" : "");
    row.dataset.cls = name;
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    const track = document.createElement("div");
    track.className = "track";
    track.append(fill);
    const label = document.createElement("span");
    label.textContent = name;
    const num = document.createElement("span");
    num.className = "num";
    num.textContent = p.toFixed(3);
    row.append(label, track, num);
    barsEl.append(row);
  }
}

function drawBox(result, scale) {
  if (!result.face) return;
  const [top, left, h, w] = result.face.box;
  ctx.lineWidth = Math.max(2, 3 * scale);
  ctx.strokeStyle = result.face.found ? "#16a34a" : "#f59e0b";
  ctx.strokeRect(left * scale, top * scale, w * scale, h * scale);
}

function show(result, source, width, height, ms) {
  const scale = Math.min(1, 480 / Math.max(width, height));
  view.width = Math.round(width * scale);
  view.height = Math.round(height * scale);
  ctx.drawImage(source, 0, 0, view.width, view.height);
  drawBox(result, scale);
  labelEl.textContent = result.label;
  showBars(result);
  updates += 1;
  document.body.dataset.updates = String(updates);
  statusEl.textContent = `${updates} prediction${updates === 1 ? "" : "s"}; the last took ${ms.toFixed(0)} ms`;
}

async function classify(blob) {
  const form = new FormData();
  form.append("image", blob, "image");
  const started = performance.now();
  const response = await fetch("predict", { method: "POST", body: form });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return [body, performance.now() - started];
}

document.getElementById("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  stopCamera();
  errorEl.textContent = "";
  try {
    const [result, ms] = await classify(file);
    const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    show(result, bitmap, bitmap.width, bitmap.height, ms);
  } catch (e) {
    errorEl.textContent = String(e.message || e);
  }
});

function stopCamera() {
  if (!stream) return;
  stream.getTracks().forEach((t) => t.stop());
  stream = null;
  cameraButton.textContent = "Use the camera";
}

async function cameraLoop() {
  const grab = document.createElement("canvas");
  while (stream) {
    if (video.readyState < 2) { await new Promise((r) => setTimeout(r, 50)); continue; }
    grab.width = video.videoWidth;
    grab.height = video.videoHeight;
    grab.getContext("2d").drawImage(video, 0, 0);
    const blob = await new Promise((r) => grab.toBlob(r, "image/jpeg", 0.9));
    try {
      const [result, ms] = await classify(blob);
      if (stream) show(result, grab, grab.width, grab.height, ms);
      errorEl.textContent = "";
    } catch (e) {
      errorEl.textContent = String(e.message || e);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

cameraButton.addEventListener("click", async () => {
  if (stream) { stopCamera(); return; }
  errorEl.textContent = "";
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (e) {
    errorEl.textContent = `the camera is not available: ${e.message || e}`;
    return;
  }
  video.srcObject = stream;
  await video.play();
  cameraButton.textContent = "Stop the camera";
  cameraLoop();
});
