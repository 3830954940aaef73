// The mooer meetings page: the kept meetings (GET /v1/meetings, with search), one meeting's
// segments with times, speakers and translation side by side, a segment's audio, a speaker
// renamed (PATCH .../speakers) and an export downloaded. Every request carries the API key the
// live page keeps. Names and texts are data: they are only ever set as text, never as markup.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  key: $("key"), searchForm: $("search-form"), search: $("search"), meetings: $("meetings"),
  none: $("none"), meeting: $("meeting"), title: $("title"), status: $("status"),
  format: $("format"), exportButton: $("export"), renameForm: $("rename-form"),
  speaker: $("speaker"), newName: $("new-name"), segments: $("segments"), log: $("log"),
};
window.mooerPlayed = []; // { item, status, type, bytes } per play (handy for tests)
let current = null; // the meeting shown, as GET /v1/meetings/{id} returns it
let playing = null; // { audio, url }

ui.key.value = localStorage.getItem("mooer.key") || "";
// A key typed in and then left (the click on a meeting blurs the field) fires "change" again:
// listing again then would replace the entry under the pointer and lose the click.
ui.key.addEventListener("change", () => {
  const key = ui.key.value.trim();
  if (key === (localStorage.getItem("mooer.key") || "")) return;
  localStorage.setItem("mooer.key", key);
  list();
});
ui.searchForm.addEventListener("submit", (e) => { e.preventDefault(); list(); });
ui.exportButton.addEventListener("click", () => download(ui.format.value));
ui.renameForm.addEventListener("submit", (e) => { e.preventDefault(); rename(); });
list();

function log(text) {
  ui.log.textContent = `${new Date().toLocaleTimeString()} ${text}\n` + ui.log.textContent;
}

// fetch with the key; an error body's message becomes the thrown error
async function api(path, options = {}) {
  const key = ui.key.value.trim();
  const headers = { ...(options.headers || {}) };
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

const clock = (ms) => new Date(ms).toISOString().slice(11, 23); // HH:MM:SS.mmm of stream time
const wall = (s) => new Date(s * 1000).toLocaleString();

async function list() {
  const query = new URLSearchParams();
  if (ui.search.value.trim()) query.set("search", ui.search.value.trim());
  try {
    const found = (await (await api(`/v1/meetings?${query}`)).json()).data;
    ui.meetings.replaceChildren(...found.map(entry));
    ui.none.hidden = found.length > 0;
  } catch (err) {
    log(`meetings: ${err.message}`);
  }
}

function entry(m) {
  const li = document.createElement("li");
  li.dataset.id = m.id;
  li.classList.toggle("selected", current !== null && current.id === m.id);
  const name = document.createElement("div");
  name.textContent = m.id;
  const when = document.createElement("div");
  when.className = "when";
  const status = m.in_progress ? "in progress" : "ended";
  when.textContent = `${wall(m.started_at)} · ${m.protocol} · ${m.segment_count} segments · ${status}`;
  li.append(name, when);
  li.addEventListener("click", () => show(m.id));
  return li;
}

async function show(id) {
  try {
    current = await (await api(`/v1/meetings/${encodeURIComponent(id)}`)).json();
  } catch (err) {
    return log(`meeting ${id}: ${err.message}`);
  }
  ui.meetings.querySelectorAll("li").forEach((li) => li.classList.toggle("selected", li.dataset.id === id));
  ui.meeting.hidden = false;
  ui.title.textContent = `Meeting ${current.id}`;
  ui.status.textContent = `${current.protocol}, started ${wall(current.started_at)}; ` +
    (current.in_progress ? "in progress" : `ended ${wall(current.ended_at)}`);
  ui.segments.replaceChildren(...current.segments.map(row));
  const speakers = [...new Set(current.segments.map((s) => s.speaker).filter(Boolean))];
  ui.speaker.replaceChildren(...speakers.map((name) => new Option(name, name)));
  ui.renameForm.hidden = speakers.length === 0;
}

function row(s) {
  const tr = document.createElement("tr");
  tr.dataset.item = s.item_id;
  const cell = (className, text, title) => {
    const td = document.createElement("td");
    td.className = className;
    td.textContent = text || "";
    if (title) td.title = title;
    tr.appendChild(td);
    return td;
  };
  cell("time", `${clock(s.start_ms)} – ${clock(s.end_ms)}`, `${wall(s.wall_start)} – ${wall(s.wall_end)}`);
  cell("speaker", s.speaker);
  cell("transcript", s.transcript);
  cell("translation", s.translation);
  const play = document.createElement("button");
  play.textContent = "▶";
  play.title = "play this segment";
  play.className = "play";
  play.addEventListener("click", () => playSegment(s.item_id));
  cell("actions").appendChild(play);
  return tr;
}

async function playSegment(item) {
  const path = `/v1/meetings/${current.id}/segments/${encodeURIComponent(item)}/audio`;
  let response;
  try {
    response = await api(path);
  } catch (err) {
    window.mooerPlayed.push({ item, status: "error", message: err.message });
    return log(`audio of ${item}: ${err.message}`);
  }
  const blob = await response.blob();
  window.mooerPlayed.push({ item, status: response.status, type: blob.type, bytes: blob.size });
  if (playing) { playing.audio.pause(); URL.revokeObjectURL(playing.url); }
  const url = URL.createObjectURL(blob);
  playing = { audio: new Audio(url), url };
  playing.audio.play().catch((err) => log(`audio of ${item}: ${err.message}`));
}

async function rename() {
  const old = ui.speaker.value;
  const name = ui.newName.value.trim();
  if (!old || !name) return;
  try {
    await api(`/v1/meetings/${current.id}/speakers`, {
      method: "PATCH",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ old, new: name }),
    });
  } catch (err) {
    return log(`rename: ${err.message}`);
  }
  ui.newName.value = "";
  await show(current.id);
}

async function download(format) {
  let response;
  try {
    response = await api(`/v1/meetings/${current.id}/export?format=${encodeURIComponent(format)}`);
  } catch (err) {
    return log(`export: ${err.message}`);
  }
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = `${current.id}.${format}`;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
