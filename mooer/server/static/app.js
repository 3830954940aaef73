// The mooer live page: microphone -> /v1/realtime (OpenAI Realtime events, PCM16 at 16 kHz in
// binary frames) -> live captions, translation side by side, or a chat whose replies are spoken
// (response.output_audio.delta, 24 kHz PCM16, played gap-free and cut off at barge-in).
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  task: $("task"), key: $("key"), speak: $("speak"), toggle: $("toggle"), state: $("state"),
  speaking: $("speaking"),
  main: $("main"), transcript: $("transcript"), translation: $("translation"), chat: $("chat"),
  transcriptPane: $("transcript-pane"), translationPane: $("translation-pane"), chatPane: $("chat-pane"),
  log: $("log"),
};
window.mooerEvents = []; // every server event type, in order (handy for tests and debugging)
window.mooerAudio = { chunks: 0, seconds: 0, cutOff: 0 }; // reply audio scheduled, and barge-ins
const OUTPUT_RATE = 24000; // the PCM16 rate asked for spoken replies
const LEAD_S = 0.05; // how far ahead of now the first chunk of a reply starts

let socket = null;
let audio = null; // { context, stream, node }
let player = null; // { context, next: when the queued audio ends, sources: not yet ended, muted }
let task = ui.task.value;
const lines = new Map(); // `${column}:${item_id}` -> element
const responses = new Map(); // response_id -> element

ui.key.value = localStorage.getItem("mooer.key") || "";
ui.toggle.addEventListener("click", () => (socket ? stop() : start()));
ui.task.addEventListener("change", () => { task = ui.task.value; layout(); if (socket) sendSession(); });
ui.speak.addEventListener("change", () => { if (socket) sendSession(); if (!ui.speak.checked) silence(); });
layout();

function setState(state, text) {
  ui.state.dataset.state = state;
  ui.state.textContent = text || state;
}

function log(text) {
  ui.log.textContent = `${new Date().toLocaleTimeString()} ${text}\n` + ui.log.textContent;
}

function layout() {
  const chat = task === "chat";
  ui.main.classList.toggle("chat", chat);
  ui.chatPane.hidden = !chat;
  ui.transcriptPane.hidden = chat || task === "ast";
  ui.translationPane.hidden = chat || task === "asr";
  ui.speak.disabled = !chat; // only chat replies are spoken
}

function endpoint() {
  const url = new URL("/v1/realtime", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("model", "mooer");
  if (task !== "chat") url.searchParams.set("intent", "transcription");
  const key = ui.key.value.trim();
  localStorage.setItem("mooer.key", key);
  if (key) url.searchParams.set("api_key", key);
  return url.toString();
}

function sendSession() {
  const session = {
    type: task === "chat" ? "realtime" : "transcription",
    audio: { input: { format: { type: "audio/pcm", rate: 16000 }, turn_detection: { type: "server_vad" } } },
    mooer: { task },
  };
  if (task === "chat") {
    session.output_modalities = ui.speak.checked ? ["audio"] : ["text"];
    session.audio.output = { format: { type: "audio/pcm", rate: OUTPUT_RATE } };
  }
  socket.send(JSON.stringify({ type: "session.update", session }));
}

// Each chunk is scheduled to start where the previous one ends, so a reply plays without gaps
// however its chunks were cut; the AudioContext resamples 24 kHz to the device's rate.
function playChunk(event) {
  if (!player || player.muted.has(event.response_id)) return;
  const bytes = Uint8Array.from(atob(event.delta), (c) => c.charCodeAt(0));
  const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
  if (!pcm.length) return;
  const buffer = player.context.createBuffer(1, pcm.length, OUTPUT_RATE);
  const samples = buffer.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
  const source = player.context.createBufferSource();
  source.buffer = buffer;
  source.connect(player.context.destination);
  const at = Math.max(player.next, player.context.currentTime + LEAD_S);
  source.start(at);
  player.next = at + buffer.duration;
  player.sources.add(source);
  source.onended = () => player && player.sources.delete(source);
  window.mooerAudio.chunks += 1;
  window.mooerAudio.seconds += buffer.duration;
}

// Barge-in: what is playing stops now, what is scheduled never starts, and the deltas of the
// replies in progress still on their way are dropped.
function silence() {
  if (!player) return;
  responses.forEach((_, id) => player.muted.add(id));
  if (!player.sources.size) return;
  player.sources.forEach((source) => source.stop());
  player.sources.clear();
  player.next = 0;
  window.mooerAudio.cutOff += 1;
}

async function start() {
  setState("connecting");
  ui.toggle.textContent = "Stop";
  ui.toggle.classList.add("running");
  // Created on the click, so the browser lets it play.
  player = { context: new AudioContext(), next: 0, sources: new Set(), muted: new Set() };
  try {
    audio = await openMicrophone();
  } catch (err) {
    log(`microphone: ${err.message || err}`);
    return stop("error");
  }
  socket = new WebSocket(endpoint(), ["realtime"]);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => { setState("connected"); sendSession(); };
  socket.onmessage = (msg) => handle(JSON.parse(msg.data));
  socket.onerror = () => log("connection error");
  socket.onclose = (e) => {
    if (e.code !== 1000 && e.code !== 1005) log(`connection closed (${e.code}) ${e.reason || ""}`);
    stop(e.code === 1000 || e.code === 1005 ? "disconnected" : "error");
  };
  audio.node.port.onmessage = (e) => {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(e.data);
  };
}

function stop(state = "disconnected") {
  const s = socket;
  socket = null;
  if (s && s.readyState === WebSocket.OPEN) {
    s.send(JSON.stringify({ type: "input_audio_buffer.commit" })); // finish the current utterance
    setTimeout(() => s.close(1000), 1500);
  }
  if (audio) {
    audio.stream.getTracks().forEach((t) => t.stop());
    audio.context.close();
    audio = null;
  }
  if (player) {
    silence();
    player.context.close();
    player = null;
  }
  ui.toggle.textContent = "Start";
  ui.toggle.classList.remove("running");
  setState(state);
}

async function openMicrophone() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
  });
  const context = new AudioContext();
  await context.audioWorklet.addModule("/static/pcm-worklet.js");
  const node = new AudioWorkletNode(context, "pcm-capture");
  context.createMediaStreamSource(stream).connect(node);
  return { context, stream, node };
}

function line(column, itemId) {
  const key = `${column}:${itemId}`;
  if (!lines.has(key)) {
    const el = document.createElement("p");
    el.className = "line partial";
    ui[column].appendChild(el);
    lines.set(key, el);
  }
  return lines.get(key);
}

function bubble(role, text) {
  const el = document.createElement("div");
  el.className = `bubble ${role}`;
  el.textContent = text;
  ui.chat.appendChild(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

function handle(event) {
  window.mooerEvents.push(event.type);
  // In ast sessions the "transcription" is the English translation.
  const textColumn = task === "ast" ? "translation" : "transcript";
  switch (event.type) {
    case "input_audio_buffer.speech_started": // the user talks over the reply: stop it at once
    case "output_audio_buffer.cleared":
      silence();
      if (event.type === "output_audio_buffer.cleared") break;
      ui.speaking.textContent = "speaking";
      ui.speaking.classList.add("on");
      break;
    case "input_audio_buffer.speech_stopped":
      ui.speaking.textContent = "silence";
      ui.speaking.classList.remove("on");
      break;
    case "conversation.item.input_audio_transcription.delta": {
      const el = line(textColumn, event.item_id);
      el.textContent = event.text ?? (el.textContent + (event.delta || ""));
      break;
    }
    case "conversation.item.input_audio_transcription.completed": {
      if (task === "chat") {
        lines.get(`transcript:${event.item_id}`)?.remove();
        if (event.transcript) bubble("user", event.transcript);
        break;
      }
      const el = line(textColumn, event.item_id);
      el.textContent = event.transcript;
      el.classList.remove("partial");
      break;
    }
    case "conversation.item.input_audio_translation.delta": {
      const el = line("translation", event.item_id);
      el.textContent += event.delta;
      break;
    }
    case "conversation.item.input_audio_translation.completed": {
      const el = line("translation", event.item_id);
      el.textContent = event.translation;
      el.classList.remove("partial");
      break;
    }
    case "response.created":
      responses.set(event.response.id, bubble("assistant", ""));
      break;
    case "response.output_audio.delta":
      playChunk(event);
      break;
    case "response.output_text.delta":
    case "response.output_audio_transcript.delta": {
      const el = responses.get(event.response_id);
      if (el) el.textContent += event.delta;
      break;
    }
    case "response.done": {
      const el = responses.get(event.response.id);
      if (el && event.response.status === "cancelled") el.classList.add("cancelled");
      responses.delete(event.response.id);
      break;
    }
    case "error":
      log(`${event.error.code}: ${event.error.message}`);
      break;
  }
}
