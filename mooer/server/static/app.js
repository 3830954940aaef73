// The mooer live page: microphone -> /v1/realtime (OpenAI Realtime events, PCM16 at 16 kHz in
// binary frames) -> live captions, translation side by side, or a spoken chat.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  task: $("task"), key: $("key"), toggle: $("toggle"), state: $("state"), speaking: $("speaking"),
  main: $("main"), transcript: $("transcript"), translation: $("translation"), chat: $("chat"),
  transcriptPane: $("transcript-pane"), translationPane: $("translation-pane"), chatPane: $("chat-pane"),
  log: $("log"),
};
window.mooerEvents = []; // every server event type, in order (handy for tests and debugging)

let socket = null;
let audio = null; // { context, stream, node }
let task = ui.task.value;
const lines = new Map(); // `${column}:${item_id}` -> element
const responses = new Map(); // response_id -> element

ui.key.value = localStorage.getItem("mooer.key") || "";
ui.toggle.addEventListener("click", () => (socket ? stop() : start()));
ui.task.addEventListener("change", () => { task = ui.task.value; layout(); if (socket) sendSession(); });
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
  socket.send(JSON.stringify({
    type: "session.update",
    session: {
      type: task === "chat" ? "realtime" : "transcription",
      audio: { input: { format: { type: "audio/pcm", rate: 16000 }, turn_detection: { type: "server_vad" } } },
      mooer: { task },
    },
  }));
}

async function start() {
  setState("connecting");
  ui.toggle.textContent = "Stop";
  ui.toggle.classList.add("running");
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
    case "input_audio_buffer.speech_started":
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
    case "response.output_text.delta": {
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
