"use strict";
// animate's web page: plain script, no build step. Talks to the REST API documented at /docs.
const $ = (id) => document.getElementById(id);

// Every error code the server can answer or a job can fail with, in words a person can act on.
// (tests/test_web_page.py checks that each code the server knows has an entry here.)
const ERROR_MESSAGES = {
  // the photo or the video
  unsupported_format: "That file type isn't supported. Use a JPEG, PNG or WebP photo and an MP4, MOV, MKV, WebM or AVI video.",
  unsupported_codec: "The video is encoded in a way we can't read. Export it as H.264 MP4 and try again.",
  unsupported_source: "Only files from your device can be used, not links.",
  corrupt_media: "The file seems damaged or incomplete. Try exporting or downloading it again.",
  empty_media: "The file is empty, or no picture could be read from it.",
  no_video_stream: "That file has no picture, only sound. Pick a video.",
  too_large: "The file is too big for this server. Use a smaller or shorter file.",
  too_small: "The photo is too small to show a person. Use a larger photo.",
  too_long: "The video is too long for this server. Trim it and try again.",
  not_found: "That job (or file) isn't here: it may have been deleted.",
  missing_file: "Both a photo and a video are needed.",
  probe_timeout: "Reading the file took too long. Try a smaller or more common file.",
  probe_failed: "The file couldn't be read safely. Try exporting it again in a common format.",
  probe_busy: "The server is busy checking other uploads. Try again in a few seconds.",
  // what was found in them
  no_person_detected: "No person was found in the photo. Use a photo where one person is clearly visible, ideally full body.",
  retarget_failed: "The motion couldn't be matched to the person in the photo. Try a photo showing more of the body, or another video.",
  no_3d_pose: "The body's pose couldn't be worked out from the video. Try a video where the whole person is visible.",
  pose_error: "The body pose couldn't be read. Try another photo or video.",
  pose_model_missing: "The pose model this server is set up to use is missing. Ask the server's administrator.",
  unsupported_pose_file: "That pose file isn't one this tool reads.",
  unreadable_pose_file: "That pose file is damaged or incomplete.",
  // options
  invalid_option: "One of the options isn't valid. Check the size, frames and frames per second.",
  invalid_request: "The request wasn't understood. Reload the page and try again.",
  invalid_input: "Something about the input isn't usable. Check the photo, the video and the options.",
  bad_size: "That size isn't valid. Pick one of the listed sizes.",
  unknown_field: "The page sent an option the server doesn't know. Reload the page and try again.",
  duplicate_field: "The page sent an option twice. Reload the page and try again.",
  too_many_fields: "The page sent too many fields. Reload the page and try again.",
  malformed_multipart: "The upload arrived incomplete. Check your connection and try again.",
  unsupported_media_type: "The upload wasn't sent as a form. Reload the page and try again.",
  invalid_webhook: "The notification address isn't allowed: it must be a public web address.",
  idempotency_key_reused: "This request's key was already used for a different job.",
  invalid_cursor: "That page of the job list doesn't exist. Reload the page.",
  // engines and weights
  engine_unavailable: "That engine can't run on this server. Pick another engine.",
  preset_unavailable: "That preset can't run with the weights on this server. Pick no preset.",
  weights_missing: "The model files this engine needs aren't installed on the server.",
  weights_invalid: "The model files on the server are damaged or of the wrong kind. Ask the server's administrator.",
  invalid_dtype: "That number format isn't supported for these weights.",
  adapter_invalid: "The trained adapter this server is set up to use can't be loaded. Ask the server's administrator.",
  out_of_memory: "The GPU ran out of memory for this job. Try a smaller size or fewer frames.",
  no_face_in_reference: "No face was found in the photo. The wan engine needs a photo that shows the face.",
  face_models_missing: "The face models this server needs aren't installed. Ask the server's administrator.",
  bad_body_model: "The body model file on the server can't be used. Ask the server's administrator.",
  body_model_not_found: "The body model file the server is set up to use is missing. Ask the server's administrator.",
  // the job
  canceled: "The job was canceled.",
  not_ready: "The video isn't ready yet. Wait until the job is done.",
  expired: "This job's files were deleted after the retention period. Run it again.",
  job_finished: "The job had already finished, so it couldn't be canceled.",
  job_active: "The job is still running. Cancel it first.",
  worker_lost: "The machine running the job stopped several times. Try again later.",
  disk_full: "The server ran out of disk space during the job. Try again later.",
  insufficient_storage: "The server is out of storage space. Try again later.",
  internal_error: "Something went wrong on the server. Try again; if it keeps happening, tell the administrator.",
  invalid_frame: "A frame couldn't be written to the video. Try again; if it keeps happening, tell the administrator.",
  // busy, limits, access
  queued_limit: "You already have many jobs waiting. Wait until some finish.",
  rate_limited: "Too many requests in a short time. Wait a minute and try again.",
  queue_unavailable: "The job queue can't be reached right now. Try again shortly.",
  too_many_auth_failures: "Too many wrong keys from this address. Wait a minute.",
  unauthorized: "This server needs an API key, and the page didn't send a valid one.",
  forbidden: "You aren't allowed to do that.",
  upload_timeout: "The upload took too long or stalled. Check your connection and try again.",
  request_timeout: "The request took too long to arrive. Check your connection and try again.",
  headers_too_large: "The request was too large to accept. Reload the page and try again.",
  invalid_http: "The request was garbled on the way. Reload the page and try again.",
  unsupported_transfer_encoding: "The request was sent in a way this server doesn't accept.",
  invalid_range: "The video was requested in a way the server can't answer. Reload the page.",
  range_not_satisfiable: "The video was requested past its end. Reload the page.",
  method_not_allowed: "The page asked the server for something it doesn't do. Reload the page.",
  http_error: "The server refused the request. Reload the page and try again.",
  // the cli only; listed so every code has words
  file_not_found: "The file wasn't found.",
  output_exists: "The output already exists.",
  train_invalid: "The training setup isn't valid.",
  network: "The server can't be reached. Check your connection, then try again.",
};

// The pipeline's stages, as a person would describe them.
const STAGE_WORDS = {
  startup: "Starting up",
  decode: "Reading your photo and video",
  load: "Loading the model",
  pose: "Finding the body pose in each frame",
  body: "Fitting a 3D body to the person",
  motion: "Working out the motion",
  previews: "Drawing the previews",
  render: "Animating your photo",
  encode: "Saving the video",
};
const STATUS_WORDS = {
  queued: "Waiting", running: "Working", succeeded: "Done", failed: "Failed", canceled: "Canceled",
};
const PREVIEW_WORDS = {
  skeleton: "Pose", motion: "Joint motion", depth: "Depth", normal: "Surface", semantic: "Body parts",
  dense_flow: "Body motion", wan_pose: "Pose (Wan)", wan_face: "Face (Wan)", wan_mask: "Replaced area (Wan)",
};
const FINISHED = ["succeeded", "failed", "canceled"];

function humanError(code, detail) {
  return ERROR_MESSAGES[code] || detail || "Something went wrong.";
}

// Seconds left from the fractions seen while running ({t: seconds, f: 0..1}, oldest first), or null while
// the measurement means little: under 3 s of running or under 5% of progress seen.
function timeLeft(samples) {
  if (samples.length < 2) return null;
  const first = samples[0];
  const last = samples[samples.length - 1];
  const seconds = last.t - first.t;
  const done = last.f - first.f;
  if (seconds < 3 || done < 0.05 || last.f >= 1) return null;
  return (1 - last.f) * seconds / done;
}

function formatLeft(seconds) {
  if (seconds === null) return "";
  if (seconds < 10) return "a few seconds left";
  if (seconds < 90) return `about ${Math.ceil(seconds / 5) * 5} s left`;
  return `about ${Math.round(seconds / 60)} min left`;
}

function formatBytes(bytes) {
  if (bytes >= 1024 ** 3) return `${(bytes / 1024 ** 3).toFixed(1)} GB`;
  if (bytes >= 1024 ** 2) return `${Math.round(bytes / 1024 ** 2)} MB`;
  return `${Math.max(1, Math.round(bytes / 1024))} KB`;
}

function listWords(words) {
  return words.length > 1 ? `${words.slice(0, -1).join(", ")} or ${words[words.length - 1]}` : words.join("");
}

class ApiError extends Error {
  constructor(code, detail) {
    super(humanError(code, detail));
    this.code = code;
    this.detail = detail;
  }
}

// A server with API keys: the key typed in the page, kept for this tab only (sessionStorage), sent as Bearer.
const KEY_STORE = "animate-api-key";

function authorized(options = {}) {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${key}` } } : options;
}

function askForKey(refused) {
  $("key-form").hidden = false;
  $("key-hint").textContent = refused
    ? "That key was not accepted. Check it and try again."
    : "This server asks for an API key. It stays in this tab only.";
  if (document.activeElement !== $("api-key")) $("api-key").focus();
}

async function api(path, options) {
  let response;
  try {
    response = await fetch(path, authorized(options));
  } catch {
    throw new ApiError("network", "");
  }
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const error = body && body.error ? body.error : { code: "http_error", message: response.statusText };
    if (response.status === 401) askForKey(Boolean(sessionStorage.getItem(KEY_STORE)));
    throw new ApiError(error.code, error.message);
  }
  return body;
}

// A media URL the page can play: as is without a key; with one, fetched with it (a <video> sends no headers).
async function mediaUrl(url) {
  if (!sessionStorage.getItem(KEY_STORE)) return url;
  const response = await fetch(url, authorized());
  if (!response.ok) throw new ApiError(response.status === 401 ? "unauthorized" : "http_error", response.statusText);
  return URL.createObjectURL(await response.blob());
}

// ---------------------------------------------------------------------------------------------- inputs
const state = {
  limits: null,
  files: { reference: null, driving: null },
  urls: new Map(), // job id -> {reference, driving} object URLs of the files sent with it
  current: null,
  samples: [],
};

const KINDS = {
  reference: { noun: "photo", mime: /^image\/(jpeg|png|webp)$/, extensions: [".jpg", ".jpeg", ".png", ".webp"],
    formats: ["JPEG", "PNG", "WebP"], max: null },
  driving: { noun: "video", mime: /^video\//, extensions: [".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"],
    formats: ["MP4", "MOV", "MKV", "WebM", "AVI"], max: null },
};

function defaultHint(kind) {
  const k = KINDS[kind];
  const cap = k.max ? ` · up to ${formatBytes(k.max)}` : "";
  const length = kind === "driving" && state.limits ? ` · up to ${Math.round(state.limits.max_video_seconds / 60)} min` : "";
  return `${listWords(k.formats)}${cap}${length}`;
}

function problemWith(kind, file) {
  const k = KINDS[kind];
  const name = file.name.toLowerCase();
  const known = k.extensions.some((suffix) => name.endsWith(suffix)) || k.mime.test(file.type);
  if (!known) return `“${file.name}” isn't a ${k.noun} this server takes: use ${listWords(k.formats)}.`;
  if (file.size === 0) return `“${file.name}” is empty.`;
  if (k.max && file.size > k.max) return `“${file.name}” is ${formatBytes(file.size)}; the limit is ${formatBytes(k.max)}.`;
  return null;
}

function pick(kind, file) {
  const zone = $(`${kind}-drop`);
  const preview = $(`${kind}-preview`);
  const problem = file ? problemWith(kind, file) : null;
  zone.classList.toggle("invalid", Boolean(problem));
  zone.classList.toggle("filled", Boolean(file) && !problem);
  $(`${kind}-hint`).textContent = problem || defaultHint(kind);
  state.files[kind] = file && !problem ? file : null;
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.removeAttribute("src");
  preview.hidden = !state.files[kind];
  $(`${kind}-call`).hidden = Boolean(state.files[kind]);
  $(`${kind}-name`).textContent = "";
  if (!state.files[kind]) return;
  const url = URL.createObjectURL(file);
  $(`${kind}-name`).textContent = `${file.name} · ${formatBytes(file.size)}`;
  if (kind === "reference") {
    preview.onload = () => {
      $(`${kind}-name`).textContent = `${file.name} · ${preview.naturalWidth}×${preview.naturalHeight} · ${formatBytes(file.size)}`;
    };
    preview.src = url;
  } else {
    preview.onloadedmetadata = () => {
      preview.currentTime = Math.min(0.05, preview.duration / 2 || 0); // shows the first frame
      $(`${kind}-name`).textContent =
        `${file.name} · ${preview.videoWidth}×${preview.videoHeight} · ${preview.duration.toFixed(1)} s · ${formatBytes(file.size)}`;
    };
    preview.src = url;
  }
}

function setUpDropZone(kind) {
  const zone = $(`${kind}-drop`);
  const input = $(`${kind}-input`);
  input.addEventListener("change", () => pick(kind, input.files[0] || null));
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      zone.classList.add("over");
    });
  }
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("over");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (!file) return;
    const transfer = new DataTransfer();
    transfer.items.add(file);
    input.files = transfer.files;
    pick(kind, file);
  });
}

async function loadLimits() {
  try {
    const limits = await api("/v1/limits");
    state.limits = limits;
    KINDS.reference.max = limits.reference_max_bytes;
    KINDS.driving.max = limits.driving_max_bytes;
    KINDS.reference.formats = limits.image_formats;
    KINDS.driving.formats = limits.video_formats;
    KINDS.reference.extensions = limits.image_extensions;
    KINDS.driving.extensions = limits.video_extensions;
    $("reference-input").accept = [...limits.image_extensions, "image/jpeg", "image/png", "image/webp"].join(",");
    $("driving-input").accept = ["video/*", ...limits.video_extensions].join(",");
  } catch {
    // the defaults above stay; the server checks the files anyway
  }
  for (const kind of Object.keys(KINDS)) {
    if (!state.files[kind] && !$(`${kind}-drop`).classList.contains("invalid")) $(`${kind}-hint`).textContent = defaultHint(kind);
  }
}

const ENGINE_WORDS = {
  warp: ["Warp", "moves the photo's pixels with the motion; fast, on the CPU"],
  diffusion: ["Diffusion", "paints every frame with a video diffusion model"],
  wan: ["Wan 2.2 Animate", "a large video model; needs a big GPU"],
};

async function loadEngines() {
  let answer;
  try {
    answer = await api("/v1/engines");
  } catch {
    return; // the static list stays
  }
  const list = $("engine-list");
  list.innerHTML = "";
  const rows = [{ name: "auto", available: true, note: null }, ...answer.engines];
  for (const engine of rows) {
    const label = document.createElement("label");
    label.className = "engine";
    label.dataset.engine = engine.name;
    const input = document.createElement("input");
    Object.assign(input, { type: "radio", name: "engine", value: engine.name, checked: engine.name === "auto" });
    const text = document.createElement("span");
    const title = document.createElement("b");
    const small = document.createElement("small");
    if (engine.name === "auto") {
      const picked = ENGINE_WORDS[answer.auto] ? ENGINE_WORDS[answer.auto][0] : answer.auto;
      title.textContent = "Auto";
      small.textContent = `the best this server can run: ${picked} here`;
    } else {
      const [name, what] = ENGINE_WORDS[engine.name] || [engine.name, ""];
      title.textContent = name;
      small.textContent = engine.note ? `${what} (${engine.note})` : what;
    }
    text.append(title, small);
    if (!engine.available) {
      input.disabled = true;
      label.classList.add("unavailable");
      const reason = document.createElement("small");
      reason.className = "reason";
      reason.id = `engine-${engine.name}-reason`;
      reason.textContent = `Not available here: ${engine.reason.replaceAll("`", "")}`;
      input.setAttribute("aria-describedby", reason.id);
      label.title = reason.textContent;
      text.append(reason);
    }
    label.append(input, text);
    list.append(label);
  }
  // presets reproduce published diffusion systems: pointless where no diffusion engine can run
  const diffusion = answer.engines.find((e) => e.name === "diffusion");
  if (diffusion && !diffusion.available) {
    const preset = document.querySelector("select[name=preset]");
    preset.disabled = true;
    $("preset-hint").textContent = "needs the diffusion engine, which is not available here";
  }
}

// ------------------------------------------------------------------------------------------------ submit
function upload(form) {
  // XMLHttpRequest rather than fetch: it reports upload progress
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", "/v1/jobs");
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) request.setRequestHeader("Authorization", `Bearer ${key}`);
    request.responseType = "json";
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) $("form-hint").textContent = `Uploading… ${Math.round((event.loaded / event.total) * 100)}%`;
    };
    request.onload = () => {
      const body = request.response;
      if (request.status === 202) resolve(body);
      else {
        const error = body && body.error ? body.error : { code: "http_error", message: request.statusText };
        if (request.status === 401) askForKey(Boolean(key));
        reject(new ApiError(error.code, error.message));
      }
    };
    request.onerror = () => reject(new ApiError("network", ""));
    request.send(form);
  });
}

function showError(error) {
  $("error").hidden = !error;
  if (!error) return;
  $("error-text").textContent = humanError(error.code, error.message);
  $("error-details").textContent = error.message && ERROR_MESSAGES[error.code]
    ? `Details: ${error.message} (${error.code})` : `(${error.code})`;
}

$("submit").addEventListener("submit", async (event) => {
  event.preventDefault();
  const missing = Object.keys(KINDS).filter((kind) => !state.files[kind]);
  if (missing.length) {
    $("form-hint").textContent = `Add ${missing.map((k) => `a ${KINDS[k].noun}`).join(" and ")} first.`;
    $(`${missing[0]}-input`).focus();
    return;
  }
  const form = new FormData(event.target);
  for (const [key, value] of [...form.entries()]) if (value === "" || (value instanceof File && !value.name)) form.delete(key);
  form.set("reference", state.files.reference);
  form.set("driving", state.files.driving);
  if (form.has("size")) {
    const [width, height] = form.get("size").split("x");
    form.delete("size");
    form.set("width", width);
    form.set("height", height);
  }
  $("go").disabled = true;
  $("form-hint").textContent = "Uploading…";
  try {
    const job = await upload(form);
    state.urls.set(job.id, {
      reference: URL.createObjectURL(state.files.reference),
      driving: URL.createObjectURL(state.files.driving),
    });
    $("form-hint").textContent = "";
    recent();
    follow(job.id);
    $("job").scrollIntoView({ behavior: "smooth", block: "start" });
  } catch (error) {
    $("form-hint").textContent = "";
    openJobCard(null);
    showError({ code: error.code, message: error.detail });
    $("status").textContent = "Not started";
    $("status").dataset.status = "failed";
    $("progress-box").hidden = true;
    $("stage").textContent = "The job was not started";
  } finally {
    $("go").disabled = false;
  }
});

// --------------------------------------------------------------------------------------------------- job
function openJobCard(id) {
  $("job").hidden = false;
  $("job-id").textContent = id || "";
  $("outcome").hidden = true;
  $("previews").innerHTML = "";
  $("progress-box").hidden = false;
  for (const id of ["stage", "queue", "percent", "eta", "status"]) $(id).textContent = "";
  $("status").dataset.status = "";
  $("bar").value = 0;
  showError(null);
  for (const video of document.querySelectorAll("#outcome video")) {
    video.pause();
    video.removeAttribute("src");
  }
}

function show(job) {
  $("job-id").textContent = job.id;
  $("status").textContent = STATUS_WORDS[job.status] || job.status;
  $("status").dataset.status = job.status;
  const running = job.status === "running";
  const stage = job.progress.stage;
  let words = "";
  if (job.status === "queued") words = "Waiting for a free worker";
  else if (running) words = stage ? STAGE_WORDS[stage] || stage : "Starting";
  else if (job.status === "succeeded") words = "Your animation is ready";
  else if (job.status === "canceled") words = "Canceled";
  else if (job.status === "failed") words = "The job failed";
  if (running && stage && job.progress.total > 1 && ["pose", "render", "encode", "motion", "body"].includes(stage)) {
    words += ` (${job.progress.step} of ${job.progress.total})`;
  }
  $("stage").textContent = words;
  $("queue").textContent = job.status === "queued" && job.queue_position !== null
    ? (job.queue_position === 0 ? "· next in line" : `· ${job.queue_position} ${job.queue_position === 1 ? "job" : "jobs"} ahead of yours`)
    : "";
  $("bar").value = job.progress.fraction;
  $("percent").textContent = running || job.status === "succeeded" ? `${Math.round(job.progress.fraction * 100)}%` : "";
  if (running) {
    state.samples.push({ t: performance.now() / 1000, f: job.progress.fraction });
    $("eta").textContent = formatLeft(timeLeft(state.samples));
  } else {
    $("eta").textContent = "";
  }
  $("cancel").hidden = !["queued", "running"].includes(job.status);
  $("progress-box").hidden = FINISHED.includes(job.status);
  showError(job.error);
  if (job.status === "succeeded" && job.urls.video && $("outcome").hidden) showResult(job);
}

async function follow(id) {
  openJobCard(id);
  state.current = id;
  state.samples = [];
  while (state.current === id) {
    let job;
    try {
      job = await api(`/v1/jobs/${id}`);
    } catch (error) {
      showError({ code: error.code, message: error.detail });
      if (error.code !== "network") break;
      await new Promise((r) => setTimeout(r, 2000));
      continue;
    }
    if (state.current !== id) break;
    show(job);
    if (FINISHED.includes(job.status)) break;
    await new Promise((r) => setTimeout(r, 700));
  }
  recent();
}

// ------------------------------------------------------------------------------------------------ result
// The result leads; the driving video and the previews follow its play, pause, seek and rate, also when they
// become ready after it started.
function matchLeader(video) {
  const leader = $("result");
  if (!video.src || video.readyState < 1 || !leader.src) return;
  const end = Number.isFinite(video.duration) ? video.duration - 0.02 : Infinity;
  const target = Math.min(leader.currentTime, Math.max(0, end));
  if (Math.abs(video.currentTime - target) > 0.12) video.currentTime = target;
  if (video.playbackRate !== leader.playbackRate) video.playbackRate = leader.playbackRate;
  if (leader.paused && !video.paused) video.pause();
  else if (!leader.paused && video.paused && target < end) video.play().catch(() => {});
}

function syncFollowers(leader) {
  for (const type of ["play", "pause", "seeked", "timeupdate", "ratechange"]) {
    leader.addEventListener(type, () => followers().forEach(matchLeader));
  }
  $("driving-view").addEventListener("loadeddata", (event) => matchLeader(event.target));
}

function followers() {
  return [$("driving-view"), ...document.querySelectorAll("#previews video")].filter((v) => v.src && v.isConnected);
}

async function showResult(job) {
  const local = state.urls.get(job.id);
  const result = $("result");
  $("outcome").hidden = false;
  $("reference-figure").hidden = !local;
  $("driving-figure").hidden = !local;
  $("stage-grid").className = local ? "stage-grid" : "stage-grid one";
  if (local) {
    $("reference-view").src = local.reference;
    $("driving-view").src = local.driving;
  }
  const ratio = job.result ? `${job.result.width} / ${job.result.height}` : "9 / 16";
  for (const element of document.querySelectorAll("#stage-grid img, #stage-grid video")) element.style.aspectRatio = ratio;
  let video;
  try {
    video = await mediaUrl(job.urls.video);
  } catch (error) {
    showError({ code: error.code, message: error.detail });
    return;
  }
  result.src = video;
  $("download").href = video;
  $("download").setAttribute("download", `animation-${job.id.slice(0, 8)}.mp4`);
  $("previews").innerHTML = "";
  const names = Object.keys(PREVIEW_WORDS).filter((name) => job.urls.artifacts[name]);
  $("previews-title").hidden = names.length === 0;
  for (const name of names) {
    const figure = document.createElement("figure");
    const video = document.createElement("video");
    Object.assign(video, { muted: true, playsInline: true, preload: "auto", title: name });
    mediaUrl(job.urls.artifacts[name]).then((url) => { video.src = url; }, () => {});
    video.style.aspectRatio = ratio;
    video.setAttribute("aria-label", `${PREVIEW_WORDS[name]} preview`);
    video.addEventListener("loadeddata", () => matchLeader(video));
    const caption = document.createElement("figcaption");
    caption.textContent = PREVIEW_WORDS[name];
    figure.append(video, caption);
    $("previews").append(figure);
  }
  result.play().catch(() => {});
}

// ------------------------------------------------------------------------------------------------ recent
async function recent() {
  let list;
  try {
    list = await api("/v1/jobs?limit=10");
  } catch {
    return;
  }
  $("recent").innerHTML = "";
  $("recent-empty").hidden = list.jobs.length > 0;
  for (const job of list.jobs) {
    const row = document.createElement("tr");
    row.dataset.id = job.id;
    row.classList.toggle("current", job.id === state.current);
    const link = document.createElement("a");
    link.href = `#job-${job.id}`;
    link.textContent = job.id.slice(0, 8);
    link.addEventListener("click", (event) => {
      event.preventDefault();
      follow(job.id);
      $("job").scrollIntoView({ behavior: "smooth", block: "start" });
    });
    const cells = [link, STATUS_WORDS[job.status] || job.status, new Date(job.created_at).toLocaleString()];
    for (const value of cells) {
      const cell = document.createElement("td");
      cell.append(value);
      row.append(cell);
    }
    row.children[1].title = job.status;
    $("recent").append(row);
  }
}

$("cancel").addEventListener("click", async () => {
  if (!state.current) return;
  try {
    show(await api(`/v1/jobs/${state.current}/cancel`, { method: "POST" }));
  } catch (error) {
    showError({ code: error.code, message: error.detail });
  }
});
$("again").addEventListener("click", () => {
  state.current = null;
  $("job").hidden = true;
  $("reference-input").focus();
});

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  $("api-key").value = "";
  $("key-form").hidden = true;
  loadLimits();
  loadEngines();
  recent();
});

setUpDropZone("reference");
setUpDropZone("driving");
syncFollowers($("result"));
loadLimits();
loadEngines();
recent();
window.animatePage = { ERROR_MESSAGES, STAGE_WORDS, humanError, timeLeft, formatLeft };
