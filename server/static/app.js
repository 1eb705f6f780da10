"use strict";
const $ = (id) => document.getElementById(id);
let current = null;

async function api(path, options) {
  const response = await fetch(path, options);
  const body = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(body && body.error ? `${body.error.message} [${body.error.code}]` : response.statusText);
  return body;
}

function show(job) {
  $("job").hidden = false;
  $("job-id").textContent = job.id;
  $("status").textContent = job.status;
  $("stage").textContent = job.status === "queued" && job.queue_position !== null
    ? `(position ${job.queue_position} in queue)` : (job.progress.stage || "");
  $("bar").value = job.progress.fraction;
  $("percent").textContent = job.status === "running" ? `${Math.round(job.progress.fraction * 100)}%` : "";
  $("error").textContent = job.error ? `${job.error.message} [${job.error.code}]` : "";
  $("cancel").hidden = !["queued", "running"].includes(job.status);
  if (job.status === "succeeded" && job.urls.video && $("result").hidden) {
    $("result").src = job.urls.video;
    $("result").hidden = false;
    $("previews").innerHTML = "";
    for (const [name, url] of Object.entries(job.urls.artifacts)) {
      if (name === "poses") continue;
      const figure = document.createElement("figure");
      const video = document.createElement("video");
      Object.assign(video, { src: url, muted: true, autoplay: true, loop: true, title: name });
      const caption = document.createElement("figcaption");
      caption.textContent = name;
      figure.append(video, caption);
      $("previews").append(figure);
    }
  }
}

async function poll(id) {
  current = id;
  while (current === id) {
    const job = await api(`/v1/jobs/${id}`);
    show(job);
    if (["succeeded", "failed", "canceled"].includes(job.status)) break;
    await new Promise((r) => setTimeout(r, 1000));
  }
  recent();
}

async function recent() {
  const list = await api("/v1/jobs?limit=10");
  $("recent").innerHTML = "";
  for (const job of list.jobs) {
    const row = document.createElement("tr");
    row.dataset.id = job.id;
    row.innerHTML = `<td><a href="#">${job.id.slice(0, 8)}</a></td><td>${job.status}</td><td>${new Date(job.created_at).toLocaleString()}</td>`;
    row.querySelector("a").onclick = (e) => { e.preventDefault(); $("result").hidden = true; poll(job.id); };
    $("recent").append(row);
  }
}

$("submit").onsubmit = async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  for (const [key, value] of [...form.entries()]) if (value === "") form.delete(key);
  if (form.has("size")) {
    const [width, height] = form.get("size").split("x");
    form.delete("size");
    form.set("width", width);
    form.set("height", height);
  }
  $("result").hidden = true;
  try {
    const job = await api("/v1/jobs", { method: "POST", body: form });
    recent();
    poll(job.id);
  } catch (error) {
    $("job").hidden = false;
    $("error").textContent = error.message;
  }
};
$("cancel").onclick = () => current && api(`/v1/jobs/${current}/cancel`, { method: "POST" });
recent();
