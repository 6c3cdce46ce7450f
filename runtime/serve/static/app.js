// The sampling page's behaviour: read the model from readyz, send the form to v1/samples,
// show the samples (base64 PNGs) as a grid of downloadable images, or the server's error line.
// URLs are relative, so the page also works behind a path prefix.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "cvdvae-token";
let model = null;      // the readyz answer once the model is loaded
let lastForm = null;   // the request behind the samples shown, re-sent for the zip

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
  $("image-fields").hidden = !model.conditional;   // a prior-only model takes no image
  $("image").required = model.conditional;
  describePreview();
}

// Says the chosen image's size, and which size the model wants when it differs.
function describePreview() {
  const img = $("preview");
  if (!img.naturalWidth) return;
  let text = `${img.naturalWidth}\u00d7${img.naturalHeight} px`;
  if (model && model.conditional) {
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

function formFields() {
  const data = new FormData();
  if (!model || model.conditional) data.append("image", $("image").files[0]);
  data.append("n", $("n").value.trim());
  data.append("seed", $("seed").value.trim());
  data.append("temperature", $("temperature").value.replace(/\s+/g, ""));
  data.append("consistent", $("consistent").checked ? "true" : "false");
  data.append("from_hr", $("from_hr").checked ? "true" : "false");
  return data;
}

function showSamples(result) {
  const grid = $("samples");
  grid.replaceChildren();
  result.samples.forEach((png, k) => {
    const name = `sample_s${result.seed}_${String(k).padStart(2, "0")}.png`;
    const t = result.temperatures[k];
    const img = document.createElement("img");
    img.className = "sample";
    img.src = `data:image/png;base64,${png}`;
    img.alt = `Sample ${k + 1} of ${result.n}, seed ${result.seed}, temperature ${t}`;
    const link = document.createElement("a");
    link.href = img.src;
    link.download = name;
    link.title = `Download ${name}`;
    link.append(img);
    const caption = document.createElement("figcaption");
    caption.textContent = `#${k + 1}  t = ${t}`;
    const figure = document.createElement("figure");
    figure.append(link, caption);
    grid.append(figure);
  });
  $("results").hidden = false;
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
  const data = formFields();
  busy(true);
  $("status").textContent = "Sampling\u2026";
  const started = performance.now();
  try {
    const response = await fetch("v1/samples", { method: "POST", body: data, headers: headers() });
    if (response.status === 401) $("token-box").open = true;
    if (!response.ok) throw new Error(await errorLine(response));
    const result = await response.json();
    const wall = (performance.now() - started) / 1000;
    showSamples(result);
    lastForm = data;
    $("status").textContent = `${result.n} sample${result.n === 1 ? "" : "s"} from ${result.model} in ` +
      `${result.elapsed_s.toFixed(2)} s on the server (${wall.toFixed(2)} s here), seed ${result.seed}.`;
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
    link.download = `samples_s${lastForm.get("seed")}.zip`;
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
  $("seed").value = crypto.getRandomValues(new Uint32Array(1))[0];
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
  $("random-seed").addEventListener("click", randomSeed);
  $("download-all").addEventListener("click", downloadAll);
  $("sample-form").addEventListener("submit", submit);
  pollReady();
}

init();
