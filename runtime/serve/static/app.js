// The sampling page's behaviour: read the model from readyz, send the form to v1/samples,
// show the samples (base64 PNGs) as a grid of downloadable images beside their mean and
// standard deviation map, with a viewer that steps through them at full size (for a photo: the
// photo with each face boxed, the whole-photo samples, then each face's), or the server's error
// line.
// URLs are relative, so the page also works behind a path prefix. Seeds are 64-bit: they are
// kept as decimal strings (BigInt to check and draw them), never as JSON numbers, which
// JavaScript rounds above 2^53.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "cvdvae-token";
const MAX_SEED = (1n << 64n) - 1n;
let model = null;      // the readyz answer once the model is loaded
let lastForm = null;   // the request behind the samples shown, re-sent for the zip
let lastSeed = null;   // its seed, as the decimal string sent
let viewed = [];       // what the viewer steps through: {png, name, alt, caption}
let lastFile = null;   // the image behind the samples shown
let samplesShown = 0;  // how many of ``viewed`` are LR-face samples a request may vary (0 for a photo)

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function headers(extra = {}) {
  const token = $("token").value.trim();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

// The error line of a failed response: the JSON {"error": ...} when there is one.
async function errorLine(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && body.error) return body.error;
  } catch (_) { /* not JSON: a proxy's page, say */ }
  return `HTTP ${response.status} ${response.statusText}`.trim();
}

async function pollReady() {
  try {
    const response = await fetch("readyz", { cache: "no-store" });
    if (response.ok) {
      model = await response.json();
      describeModel();
      return;
    }
    $("model").textContent = "The model is loading\u2026";
  } catch (_) {
    $("model").textContent = "The server is not reachable; trying again\u2026";
  }
  setTimeout(pollReady, 2000);
}

function describeModel() {
  const sizes = model.conditional
    ? `${model.lr_size}\u00d7${model.lr_size} \u2192 ${model.hr_size}\u00d7${model.hr_size} px`
    : `faces from noise, ${model.hr_size}\u00d7${model.hr_size} px`;
  $("model").textContent = `Model: ${model.model} (${sizes})`;
  $("n").max = model.max_n;
  $("max-faces").textContent = model.max_faces;
  $("image-fields").hidden = !model.conditional;   // a prior-only model takes no image
  $("image").required = model.conditional;
  const levels = model.levels || [];
  $("vary-from").max = Math.max(levels.length - 1, 0);
  $("vary-from").value = Math.floor(levels.length / 2);
  describeLevel();
  describePreview();
}

function describeLevel() {
  const levels = (model && model.levels) || [];
  $("vary-level").textContent = levels.length ? `${levels[Number($("vary-from").value)]} px` : "";
}

// Says the chosen image's size, and which size the model wants when it differs.
function describePreview() {
  const img = $("preview");
  if (!img.naturalWidth) return;
  let text = `${img.naturalWidth}\u00d7${img.naturalHeight} px`;
  if (model && model.conditional && !$("faces").checked) {
    const want = $("from_hr").checked ? model.hr_size : model.lr_size;
    if (img.naturalWidth !== want || img.naturalHeight !== want) {
      text += `; the model takes ${want}\u00d7${want}` + ($("from_hr").checked ? " with from HR" : "");
    }
  }
  $("preview-size").textContent = text;
}

function showPreview() {
  const file = $("image").files[0];
  const img = $("preview");
  if (img.src) URL.revokeObjectURL(img.src);
  $("preview-box").hidden = !file;
  if (!file) return img.removeAttribute("src");
  img.src = URL.createObjectURL(file);
  img.alt = `The chosen face, ${file.name}, enlarged`;
}

// A first visitor without a face at hand: a drawn face of the model's input size, chosen as if uploaded.
function useExample() {
  const size = (model && model.lr_size) || 64;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  const draw = canvas.getContext("2d");
  draw.fillStyle = "#6b7f99";
  draw.fillRect(0, 0, size, size);
  const spot = (x, y, rx, ry, colour) => {
    draw.fillStyle = colour;
    draw.beginPath();
    draw.ellipse(x * size, y * size, rx * size, ry * size, 0, 0, 2 * Math.PI);
    draw.fill();
  };
  spot(0.5, 0.3, 0.36, 0.3, "#3b2a20");                                  // hair
  spot(0.5, 0.55, 0.3, 0.38, "#d9a98a");                                 // face
  spot(0.38, 0.48, 0.06, 0.035, "#2b2b33"); spot(0.62, 0.48, 0.06, 0.035, "#2b2b33");  // eyes
  spot(0.5, 0.74, 0.1, 0.03, "#a4504f");                                 // mouth
  canvas.toBlob((blob) => {
    const files = new DataTransfer();
    files.items.add(new File([blob], "example.png", { type: "image/png" }));
    $("image").files = files.files;
    $("faces").checked = $("from_hr").checked = false;
    photoMode();
    showPreview();
  }, "image/png");
}

// A photo's faces are sampled and pasted back; from HR and consistent are for LR faces only.
function photoMode() {
  const photo = $("faces").checked;
  for (const id of ["from_hr", "consistent"]) {
    $(id).disabled = photo;
    if (photo) $(id).checked = false;
  }
  describePreview();
}

// The seed field as a canonical decimal string, or an Error saying what is wrong with it.
function seedText() {
  const text = $("seed").value.trim();
  const seed = /^\d{1,20}$/.test(text) ? BigInt(text) : -1n;
  if (seed < 0n || seed > MAX_SEED) {
    throw new Error(`Seed: ${text || "(empty)"} is not a whole number from 0 to ${MAX_SEED}`);
  }
  return seed.toString();
}

function formFields(seed) {
  const data = new FormData();
  if (!model || model.conditional) data.append("image", $("image").files[0]);
  data.append("n", $("n").value.trim());
  data.append("seed", seed);
  data.append("temperature", $("temperature").value.replace(/\s+/g, ""));
  data.append("summary", $("summary").checked ? "true" : "false");
  if ($("faces").checked) {
    data.append("faces", "true");
  } else {
    data.append("consistent", $("consistent").checked ? "true" : "false");
    data.append("from_hr", $("from_hr").checked ? "true" : "false");
  }
  return data;
}

// One downloadable image: a figure with the image (base64; PNG unless `type` says), its file name
// (the zip's) and a caption.
function sampleFigure(png, name, alt, caption, type = "image/png") {
  const img = document.createElement("img");
  img.className = "sample";
  img.src = `data:${type};base64,${png}`;
  img.alt = alt;
  const link = document.createElement("a");
  link.href = img.src;
  link.download = name;
  link.title = `Download ${name}`;
  link.append(img);
  const text = document.createElement("figcaption");
  text.textContent = caption;
  const figure = document.createElement("figure");
  figure.append(link, text);
  return figure;
}

const numbered = (k) => String(k).padStart(2, "0");

// The mean and the standard deviation map of a set of samples, as two figures.
function spreadFigures(holder, stem, seed, n, what) {
  const figures = [
    sampleFigure(holder.mean, `${stem}_s${seed}_mean.png`, `${what}: the mean of its ${n} samples`, "mean"),
    sampleFigure(holder.std, `${stem}_s${seed}_std.png`, `${what}: the per-pixel standard deviation of its ` +
      `${n} samples, dark purple 0 to yellow at the top of the scale bar`, "std"),
  ];
  figures.forEach((figure) => figure.classList.add("spread"));
  return figures;
}

// The viewer: one image of `viewed` at full size, the slider and arrows step through them.
function view(index) {
  if (!viewed.length) return;
  const k = Math.min(Math.max(index, 0), viewed.length - 1);
  const item = viewed[k];
  const img = $("viewer-image");
  img.src = `data:${item.type || "image/png"};base64,${item.png}`;
  img.alt = item.alt;
  $("viewer-slider").max = viewed.length;
  $("viewer-slider").value = k + 1;
  $("viewer-caption").textContent = `${k + 1} of ${viewed.length}: ${item.caption}`;
  $("viewer-download").href = img.src;
  $("viewer-download").download = item.name;
  $("viewer-prev").disabled = k === 0;
  $("viewer-next").disabled = k === viewed.length - 1;
  $("viewer").hidden = false;
  $("vary-box").hidden = !(model && model.levels && model.levels.length) || k >= samplesShown;
}

// A click on a thumbnail shows it in the viewer (its link still names the file, for saving).
function openInViewer(event) {
  const figure = event.target.closest("figure[data-view]");
  if (!figure) return;
  event.preventDefault();
  view(Number(figure.dataset.view));
  $("viewer").scrollIntoView({ block: "nearest" });
}

// The photo sent, with a box over each face found. Boxes come in pixel-centre coordinates
// (a pixel's centre is an integer), so the edges are half a pixel out; they are placed in
// percent of the photo, so they follow the image at any displayed size.
function showPhoto(result, file) {
  const [width, height] = result.size;
  const photo = $("photo");
  if (photo.src) URL.revokeObjectURL(photo.src);
  photo.src = URL.createObjectURL(file);
  $("photo-frame").querySelectorAll(".face-box").forEach((box) => box.remove());
  result.faces.forEach((face, j) => {
    const [x0, y0, x1, y1] = face.box;
    const box = document.createElement("div");
    box.className = "face-box";
    box.dataset.face = j;
    box.style.left = `${((x0 + 0.5) / width) * 100}%`;
    box.style.top = `${((y0 + 0.5) / height) * 100}%`;
    box.style.width = `${((x1 - x0) / width) * 100}%`;
    box.style.height = `${((y1 - y0) / height) * 100}%`;
    const label = document.createElement("span");
    label.textContent = `face ${j}`;
    box.append(label);
    box.title = `face ${j}: score ${face.score}`;
    $("photo-frame").append(box);
  });
  const found = result.faces.length;
  $("photo-caption").textContent = `${width}\u00d7${height} px, ${found} face${found === 1 ? "" : "s"} found` +
    (found ? "" : ": the samples are the photo upscaled");
  $("photo-box").hidden = false;
}

function showSamples(result, seed, file) {
  const photo = Boolean(result.faces);
  const stem = photo ? "photo" : "sample";
  const what = photo ? "Photo sample" : "Sample";
  // Whole photos come back in the photo's own format (result.photo_format), samples as PNG.
  const [type, suffix] = { jpeg: ["image/jpeg", "jpg"], webp: ["image/webp", "webp"] }[result.photo_format]
    || ["image/png", "png"];
  viewed = result.samples.map((png, k) => ({
    png, type, name: `${stem}_s${seed}_${numbered(k)}.${suffix}`,
    alt: `${what} ${k + 1} of ${result.n}, seed ${seed}, temperature ${result.temperatures[k]}`,
    caption: `#${k + 1}  t = ${result.temperatures[k]}`,
  }));
  samplesShown = photo ? 0 : result.samples.length;
  const grid = $("samples");
  grid.replaceChildren(...viewed.map((item) => sampleFigure(item.png, item.name, item.alt, item.caption, item.type)));
  const spread = $("spread");
  spread.replaceChildren(...(result.mean ? spreadFigures(result, stem, seed, result.n, photo ? "The photo" : "The face")
    : []));
  if (result.mean) {
    viewed.push({ png: result.mean, name: `${stem}_s${seed}_mean.png`, alt: spread.children[0].querySelector("img").alt,
      caption: "mean" }, { png: result.std, name: `${stem}_s${seed}_std.png`,
      alt: spread.children[1].querySelector("img").alt, caption: "standard deviation" });
  }
  [...grid.children, ...spread.children].forEach((figure, k) => { figure.dataset.view = k; });
  $("spread-box").hidden = !result.mean;
  const faces = $("face-samples");
  faces.replaceChildren();
  for (const face of photo ? result.faces : []) {
    const row = document.createElement("div");
    row.className = "face-row";
    face.samples.forEach((png, k) => {
      row.append(sampleFigure(png, `face${face.index}_s${seed}_${numbered(k)}.png`,
        `Face ${face.index}, sample ${k + 1} of ${result.n}, seed ${seed}`, `face ${face.index} #${k + 1}`));
    });
    if (face.mean) row.append(...spreadFigures(face, `face${face.index}`, seed, result.n, `Face ${face.index}`));
    faces.append(row);
  }
  $("faces-title").hidden = !photo || !result.faces.length;
  grid.classList.toggle("photos", photo);
  $("viewer").classList.toggle("photos", photo);
  if (photo) showPhoto(result, file); else $("photo-box").hidden = true;
  $("results").hidden = false;
  view(0);
}

function busy(on) {
  $("submit").disabled = on;
  $("download-all").disabled = on;
  $("results").setAttribute("aria-busy", on ? "true" : "false");
}

async function submit(event) {
  event.preventDefault();
  showError("");
  const form = $("sample-form");
  if (!form.checkValidity()) {
    const bad = form.querySelector("input:invalid");
    showError(`${bad.labels[0].textContent.trim()}: ${bad.validationMessage}`);
    bad.focus();
    return;
  }
  let seed;
  try {
    seed = seedText();
  } catch (error) {
    showError(error.message);
    $("seed").focus();
    return;
  }
  await send(formFields(seed), seed, $("image").files[0]);
}

// The sample in the viewer again, its coarse levels kept and the finer ones drawn afresh: the same
// request with like (its index) and vary_from (the level chosen).
async function varyThis() {
  if (!lastForm) return;
  const like = Number($("viewer-slider").value) - 1;
  const data = new FormData();
  for (const [name, value] of lastForm) if (!["like", "vary_from"].includes(name)) data.append(name, value);
  data.append("like", String(like));
  data.append("vary_from", String(model.levels[Number($("vary-from").value)]));
  await send(data, lastSeed, lastFile);
  view(like);
}

async function send(data, seed, file) {
  showError("");
  busy(true);
  $("status").textContent = "Sampling\u2026";
  const started = performance.now();
  try {
    const response = await fetch("v1/samples", { method: "POST", body: data, headers: headers() });
    if (response.status === 401) $("token-box").open = true;
    if (!response.ok) throw new Error(await errorLine(response));
    const result = await response.json();
    const wall = (performance.now() - started) / 1000;
    showSamples(result, seed, file);
    lastForm = data;
    lastSeed = seed;
    lastFile = file;
    const what = result.faces
      ? `${result.n} photo sample${result.n === 1 ? "" : "s"} (${result.faces.length} face` +
        `${result.faces.length === 1 ? "" : "s"})`
      : `${result.n} sample${result.n === 1 ? "" : "s"}`;
    $("status").textContent = `${what} from ${result.model} in ` +
      `${result.elapsed_s.toFixed(2)} s on the server (${wall.toFixed(2)} s here), seed ${seed}.`;
  } catch (error) {
    $("status").textContent = "";
    showError(error instanceof TypeError ? `The server is not reachable: ${error.message}` : error.message);
  } finally {
    busy(false);
  }
}

// The same request again with Accept: application/zip: the seed fixes the samples, so the zip
// holds the images shown.
async function downloadAll() {
  if (!lastForm) return;
  showError("");
  busy(true);
  try {
    const response = await fetch("v1/samples", {
      method: "POST", body: lastForm, headers: headers({ Accept: "application/zip" }),
    });
    if (!response.ok) throw new Error(await errorLine(response));
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = `samples_s${lastSeed}.zip`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (error) {
    showError(`Download all: ${error.message}`);
  } finally {
    busy(false);
  }
}

function randomSeed() {
  $("seed").value = crypto.getRandomValues(new BigUint64Array(1))[0].toString();
}

function init() {
  $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("token-box").open = Boolean($("token").value);
  $("token").addEventListener("change", () => {
    const token = $("token").value.trim();
    token ? sessionStorage.setItem(TOKEN_KEY, token) : sessionStorage.removeItem(TOKEN_KEY);
  });
  $("image").addEventListener("change", showPreview);
  $("preview").addEventListener("load", describePreview);
  $("from_hr").addEventListener("change", describePreview);
  $("faces").addEventListener("change", photoMode);
  $("random-seed").addEventListener("click", randomSeed);
  $("download-all").addEventListener("click", downloadAll);
  $("samples").addEventListener("click", openInViewer);
  $("spread").addEventListener("click", openInViewer);
  $("viewer-slider").addEventListener("input", () => view(Number($("viewer-slider").value) - 1));
  $("viewer-prev").addEventListener("click", () => view(Number($("viewer-slider").value) - 2));
  $("viewer-next").addEventListener("click", () => view(Number($("viewer-slider").value)));
  $("sample-form").addEventListener("submit", submit);
  $("vary-from").addEventListener("input", describeLevel);
  $("vary-this").addEventListener("click", varyThis);
  $("example").addEventListener("click", useExample);
  photoMode();
  pollReady();
}

init();
