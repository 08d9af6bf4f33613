// qwen-serve playground: a file through POST /v1/audio/transcriptions (json, text, srt, vtt,
// verbose_json, SSE), the microphone through the Realtime API (/v1/realtime?intent=transcription).
import { Pcm24kEncoder, base64Pcm16 } from "./pcm.js";

const $ = (id) => document.getElementById(id);
const API = new URL("../v1/", document.baseURI); // the /v1 routes beside this page, whatever the prefix
const KEY_STORAGE = "qwen-serve.apiKey";
const LANGUAGES = [
  ["en", "English"], ["zh", "Chinese"], ["yue", "Cantonese"], ["ar", "Arabic"], ["de", "German"],
  ["fr", "French"], ["es", "Spanish"], ["pt", "Portuguese"], ["id", "Indonesian"], ["it", "Italian"],
  ["ko", "Korean"], ["ru", "Russian"], ["th", "Thai"], ["vi", "Vietnamese"], ["ja", "Japanese"],
  ["tr", "Turkish"], ["hi", "Hindi"], ["ms", "Malay"], ["nl", "Dutch"], ["sv", "Swedish"],
  ["da", "Danish"], ["fi", "Finnish"], ["pl", "Polish"], ["cs", "Czech"], ["fil", "Filipino"],
  ["fa", "Persian"], ["el", "Greek"], ["ro", "Romanian"], ["hu", "Hungarian"], ["mk", "Macedonian"],
];

// ---- shared: key, models, errors ----------------------------------------------------------

function showError(id, message) {
  const el = $(id);
  el.textContent = message;
  el.hidden = !message;
}

function apiKey() {
  const key = $("api-key").value.trim();
  if (!key) throw new Error("Enter the API key first (QWEN_API_TOKEN of this server).");
  return key;
}

function chosenModel() {
  const model = $("model").value;
  if (!model) throw new Error("Load the models and choose one first.");
  return model;
}

/** An HTTP failure as OpenAI's envelope describes it: {"error": {"message", "type", "param", "code"}}. */
async function httpError(response) {
  let detail = response.statusText;
  const body = await response.text();
  try {
    const error = JSON.parse(body).error;
    detail = [error.code || error.type, error.message].filter(Boolean).join(": ");
    if (error.param) detail += ` (param: ${error.param})`;
  } catch {
    if (body) detail = body.slice(0, 500);
  }
  return new Error(`HTTP ${response.status}: ${detail}`);
}

async function loadModels() {
  showError("settings-error", "");
  const select = $("model");
  const previous = select.value;
  try {
    const response = await fetch(new URL("models", API), { headers: { Authorization: `Bearer ${apiKey()}` } });
    if (!response.ok) throw await httpError(response);
    const ids = (await response.json()).data.map((m) => m.id);
    select.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (ids.includes(previous)) select.value = previous;
    if (ids.length === 0) select.replaceChildren(new Option("no models served", ""));
  } catch (e) {
    select.replaceChildren(new Option("enter the key first", ""));
    showError("settings-error", `Could not list the models: ${e.message}`);
  }
}

function initSettings() {
  const key = $("api-key");
  const remember = $("remember");
  const stored = localStorage.getItem(KEY_STORAGE);
  if (stored) {
    key.value = stored;
    remember.checked = true;
  }
  const save = () => {
    if (remember.checked && key.value) localStorage.setItem(KEY_STORAGE, key.value);
    else localStorage.removeItem(KEY_STORAGE);
  };
  key.addEventListener("change", () => {
    save();
    if (key.value) loadModels();
  });
  remember.addEventListener("change", save);
  $("settings").addEventListener("submit", (e) => {
    e.preventDefault();
    loadModels();
  });
  for (const [code, name] of LANGUAGES) $("language").append(new Option(`${name} (${code})`, code));
  if (key.value) loadModels();
}

// ---- confidence: the tokens' log-probabilities shown on the text --------------------------

const UNSURE = 0.5; // a piece of text the model gave less than this probability is marked unsure

/** The pieces of text the tokens ({token, logprob, bytes}) spell, in order, as {text, logprob}: a
 * character cut between tokens goes whole to the piece that completes it, their log-probabilities
 * summed. */
function tokenPieces(logprobs) {
  const decoder = new TextDecoder();
  const pieces = [];
  let logprob = 0;
  for (const token of logprobs) {
    logprob += token.logprob;
    const text = decoder.decode(new Uint8Array(token.bytes), { stream: true });
    if (text) {
      pieces.push({ text, logprob });
      logprob = 0;
    }
  }
  return pieces;
}

/** Fills `element` with `text`, each piece of it that a token spells a span shaded by the model's
 * doubt (1 - its probability) with the probability as its title; what no token spells stays plain
 * (the text is stripped at its edges, long audio's chunks are joined by a space). The element's
 * text is `text` exactly. Returns [pieces shown, pieces marked unsure]. */
export function showConfidence(element, text, logprobs) {
  const nodes = [];
  let at = 0;
  let shown = 0;
  let unsure = 0;
  for (const piece of tokenPieces(logprobs)) {
    const word = piece.text.trim(); // shaded without the spaces around it
    if (!word) continue; // whitespace: nothing to shade
    let start = at; // only whitespace may come between the last piece and this one
    while (start < text.length && /\s/.test(text[start])) start += 1;
    if (!text.startsWith(word, start)) continue; // not in the text here: left out
    if (start > at) nodes.push(text.slice(at, start));
    const p = Math.exp(piece.logprob);
    const span = document.createElement("span");
    span.textContent = word;
    span.title = `p = ${p.toFixed(3)}`;
    span.dataset.logprob = String(piece.logprob);
    span.className = p < UNSURE ? "token unsure" : "token";
    span.style.setProperty("--doubt", (1 - p).toFixed(3));
    nodes.push(span);
    at = start + word.length;
    shown += 1;
    if (p < UNSURE) unsure += 1;
  }
  if (at < text.length) nodes.push(text.slice(at));
  element.replaceChildren(...nodes);
  return [shown, unsure];
}

function confidenceText([shown, unsure]) {
  return `${unsure} of ${shown} tokens below p = ${UNSURE}`;
}

// ---- a file: POST /v1/audio/transcriptions -------------------------------------------------

let fileRequest = null; // the AbortController of the request in flight

function setFileStatus(text, busy) {
  $("file-status").textContent = text;
  $("transcribe").disabled = busy;
  $("cancel").disabled = !busy;
}

function syncFormatOptions() {
  const format = $("format").value;
  $("words").disabled = format !== "verbose_json";
  $("stream").disabled = format !== "json" && format !== "text"; // the server streams only these
  if ($("words").disabled) $("words").checked = false;
  if ($("stream").disabled) $("stream").checked = false;
}

function resetResult() {
  $("file-result").hidden = false;
  $("transcript").textContent = "";
  $("file-meta").textContent = "";
  $("raw").hidden = true;
  $("raw").textContent = "";
  $("word-table").hidden = true;
  $("word-table").tBodies[0].replaceChildren();
  $("player").hidden = true;
}

async function transcribeFile(event) {
  event.preventDefault();
  showError("file-error", "");
  const file = $("file").files[0];
  let key, model;
  try {
    key = apiKey();
    model = chosenModel();
    if (!file) throw new Error("Choose a file first.");
  } catch (e) {
    showError("file-error", e.message);
    return;
  }
  const format = $("format").value;
  const stream = $("stream").checked;
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("model", model);
  form.append("response_format", format);
  if ($("language").value) form.append("language", $("language").value);
  if (stream) form.append("stream", "true");
  if ($("confidence").checked && format === "json") form.append("include[]", "logprobs");
  if ($("words").checked) {
    form.append("timestamp_granularities[]", "word");
    form.append("timestamp_granularities[]", "segment");
  }
  resetResult();
  fileRequest = new AbortController();
  setFileStatus(stream ? "Streaming…" : "Transcribing…", true);
  const started = performance.now();
  try {
    const response = await fetch(new URL("audio/transcriptions", API), {
      method: "POST",
      headers: { Authorization: `Bearer ${key}` },
      body: form,
      signal: fileRequest.signal,
    });
    if (!response.ok) throw await httpError(response);
    if (stream) await readEvents(response);
    else await showResult(response, format, file);
    setFileStatus(`Done in ${((performance.now() - started) / 1000).toFixed(1)} s.`, false);
  } catch (e) {
    const aborted = e.name === "AbortError";
    setFileStatus(aborted ? "Cancelled." : "Failed.", false);
    if (!aborted) showError("file-error", e.message);
  } finally {
    fileRequest = null;
  }
}

/** Server-sent events: `transcript.text.delta` appends, `transcript.text.done` settles, `[DONE]` ends. */
async function readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const transcript = $("transcript");
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += value;
    const lines = pending.split(/\r?\n/);
    pending = lines.pop();
    for (const line of lines) {
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      const event = JSON.parse(data);
      if (event.type === "transcript.text.delta") {
        transcript.textContent += event.delta;
      } else if (event.type === "transcript.text.done") {
        transcript.textContent = event.text;
        const meta = [];
        if (event.usage) meta.push(usageText(event.usage));
        if (event.logprobs) meta.push(confidenceText(showConfidence(transcript, event.text, event.logprobs)));
        $("file-meta").textContent = meta.join(" · ");
      } else if (event.error) {
        const error = event.error;
        throw new Error(`${error.code || error.type}: ${error.message}`);
      }
    }
  }
  throw new Error("The stream ended without [DONE].");
}

function usageText(usage) {
  if (usage.type === "tokens") {
    return `${usage.input_tokens} input tokens (${usage.input_token_details?.audio_tokens ?? "?"} audio), ${usage.output_tokens} output tokens`;
  }
  return usage.seconds !== undefined ? `${usage.seconds} s of audio` : "";
}

async function showResult(response, format, file) {
  if (format === "text" || format === "srt" || format === "vtt") {
    const text = await response.text();
    if (format === "text") $("transcript").textContent = text.trim();
    else {
      $("raw").textContent = text;
      $("raw").hidden = false;
    }
    return;
  }
  const body = await response.json();
  $("transcript").textContent = body.text;
  const meta = [];
  if (body.language) meta.push(`language: ${body.language}`);
  if (body.duration !== undefined) meta.push(`duration: ${Number(body.duration).toFixed(2)} s`);
  if (body.usage) meta.push(usageText(body.usage));
  if (body.logprobs) meta.push(confidenceText(showConfidence($("transcript"), body.text, body.logprobs)));
  $("file-meta").textContent = meta.join(" · ");
  if (Array.isArray(body.words) && body.words.length > 0) showWords(body.words, file);
}

function showWords(words, file) {
  const player = $("player");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(file);
  player.hidden = false;
  const rows = words.map((w, i) => {
    const row = document.createElement("tr");
    row.tabIndex = 0;
    for (const cell of [i + 1, w.start.toFixed(2), w.end.toFixed(2), w.word]) {
      const td = document.createElement("td");
      td.textContent = cell;
      row.append(td);
    }
    const play = () => {
      player.currentTime = w.start;
      player.play().catch(() => {});
    };
    row.addEventListener("click", play);
    row.addEventListener("keydown", (e) => (e.key === "Enter" || e.key === " ") && (e.preventDefault(), play()));
    return row;
  });
  $("word-table").tBodies[0].replaceChildren(...rows);
  $("word-table").hidden = false;
  player.ontimeupdate = () => {
    const t = player.currentTime;
    words.forEach((w, i) => rows[i].classList.toggle("current", t >= w.start && t < w.end));
  };
}

// ---- the microphone: the Realtime API --------------------------------------------------------

let live = null; // the running session (startLive)

function setLiveStatus(text) {
  $("live-status").textContent = text;
}

function setLiveButtons(running) {
  $("mic-start").disabled = running;
  $("mic-stop").disabled = !running;
}

function itemElement(session, itemId) {
  let li = session.items.get(itemId);
  if (!li) {
    li = document.createElement("li");
    li.dataset.itemId = itemId;
    const text = document.createElement("span");
    text.className = "text";
    const state = document.createElement("span");
    state.className = "state";
    li.append(text, state);
    $("items").append(li);
    session.items.set(itemId, li);
  }
  return li;
}

function setItem(session, itemId, { text, append, state, failed, logprobs }) {
  const li = itemElement(session, itemId);
  const span = li.querySelector(".text");
  if (text !== undefined && logprobs) showConfidence(span, text, logprobs);
  else if (text !== undefined) span.textContent = text;
  if (append !== undefined) span.textContent += append;
  if (state !== undefined) li.querySelector(".state").textContent = state;
  li.classList.toggle("failed", Boolean(failed));
  if (state === "done" || failed) li.classList.add("completed");
}

async function openMicrophone() {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error(
      "This page cannot use the microphone here: browsers allow it only on https:// or http://localhost.",
    );
  }
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
    });
  } catch (e) {
    if (e.name === "NotAllowedError" || e.name === "SecurityError") {
      throw new Error("Microphone permission was denied. Allow it for this page (the icon in the address bar) and try again.");
    }
    if (e.name === "NotFoundError" || e.name === "OverconstrainedError") throw new Error("No microphone was found.");
    throw new Error(`The microphone could not be opened: ${e.name}: ${e.message}`);
  }
}

/** Captures `stream` into 24 kHz PCM16 chunks handed to `send`; AudioWorklet, or ScriptProcessor where absent. */
async function startCapture(stream, send) {
  const context = new AudioContext();
  const source = context.createMediaStreamSource(stream);
  const silent = context.createGain();
  silent.gain.value = 0; // the capture node must reach the destination to be pulled; nothing is heard
  silent.connect(context.destination);
  let node;
  let flush;
  if (context.audioWorklet) {
    await context.audioWorklet.addModule(new URL("pcm-worklet.js", document.baseURI));
    node = new AudioWorkletNode(context, "pcm24k-capture", { numberOfOutputs: 1, channelCount: 1 });
    let flushed = null;
    node.port.onmessage = (event) => {
      if (event.data.samples.length > 0) send(event.data.samples);
      if (event.data.last && flushed) flushed();
    };
    flush = () => new Promise((resolve) => {
      flushed = resolve;
      node.port.postMessage("flush");
    });
  } else {
    const encoder = new Pcm24kEncoder(context.sampleRate);
    node = context.createScriptProcessor(2048, 1, 1);
    node.onaudioprocess = (event) => {
      for (const chunk of encoder.push(event.inputBuffer.getChannelData(0))) send(chunk);
    };
    flush = async () => {
      const rest = encoder.flush();
      if (rest.length > 0) send(rest);
    };
  }
  source.connect(node);
  node.connect(silent);
  if (context.state === "suspended") await context.resume();
  return { context, node, flush };
}

async function startLive() {
  showError("live-error", "");
  let key, model;
  try {
    key = apiKey();
    model = chosenModel();
  } catch (e) {
    showError("live-error", e.message);
    return;
  }
  setLiveButtons(true);
  setLiveStatus("Opening the microphone…");
  const session = {
    ws: null, capture: null, stream: null, closeTimer: null,
    items: new Map(), // item_id -> its <li>
    pending: new Set(), // items begun (speech_started) or committed, not yet completed or failed
    speaking: false, // a turn in progress (speech_started without speech_stopped)
    turnItem: null, stopping: false, awaitCommit: false,
  };
  live = session;
  try {
    session.stream = await openMicrophone();
    if (session.stopping) throw new Error(""); // stopped while the permission was asked
  } catch (e) {
    showError("live-error", e.message);
    endLive(session, session.stopping ? "Stopped." : "");
    return;
  }
  setLiveStatus("Connecting…");
  const url = new URL("realtime", API);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = new URLSearchParams({ intent: "transcription", model }).toString();
  let ws;
  try {
    ws = new WebSocket(url, ["realtime", `openai-insecure-api-key.${key}`]);
  } catch (e) {
    showError("live-error", `Could not connect: ${e.message}`);
    endLive(session, "");
    return;
  }
  session.ws = ws;
  ws.onmessage = (message) => onServerEvent(session, JSON.parse(message.data));
  ws.onerror = () => {
    if (!session.stopping) showError("live-error", `The connection to ${url.origin} failed.`);
  };
  ws.onclose = (event) => {
    if (!session.stopping && event.code !== 1000 && $("live-error").hidden) {
      showError("live-error", `The server closed the session (code ${event.code}${event.reason ? `: ${event.reason}` : ""}).`);
    }
    endLive(session, session.stopping ? "Stopped." : "Disconnected.");
  };
  ws.onopen = () => {
    const input = {
      format: { type: "audio/pcm", rate: 24000 },
      transcription: { model },
      turn_detection: { type: $("turns").value },
    };
    if ($("language").value) input.transcription.language = $("language").value;
    const update = { type: "transcription", audio: { input } };
    if ($("confidence").checked) update.include = ["item.input_audio_transcription.logprobs"];
    send(session, { type: "session.update", session: update });
  };
}

/** The session's turn detection as the server took it (session.updated). */
function turnsText(td) {
  if (!td) return "Turns: committed by the page.";
  if (td.type === "semantic_vad") return `Turns: semantic VAD, eagerness ${td.eagerness}.`;
  return `Turns: server VAD, ${td.silence_duration_ms} ms of silence.`;
}

function send(session, event) {
  if (session.ws && session.ws.readyState === WebSocket.OPEN) session.ws.send(JSON.stringify(event));
}

async function onServerEvent(session, event) {
  switch (event.type) {
    case "session.updated":
      if (session.capture || session.stopping) break;
      try {
        const capture = await startCapture(session.stream, (samples) =>
          send(session, { type: "input_audio_buffer.append", audio: base64Pcm16(samples) }),
        );
        if (session.stopping || live !== session) { // stopped while the capture was starting
          capture.context.close().catch(() => {});
          break;
        }
        session.capture = capture;
        setLiveStatus(`Listening — speak. ${turnsText(event.session?.audio?.input?.turn_detection)}`);
      } catch (e) {
        showError("live-error", `The audio capture failed: ${e.message}`);
        stopLive();
      }
      break;
    case "input_audio_buffer.speech_started":
      session.speaking = true;
      session.turnItem = event.item_id;
      session.pending.add(event.item_id); // a turn's item keeps its id through commit and completion
      setItem(session, event.item_id, { state: "speaking…" });
      break;
    case "input_audio_buffer.speech_stopped":
      session.speaking = false;
      setItem(session, event.item_id, { state: "transcribing…" });
      break;
    case "input_audio_buffer.committed":
      session.awaitCommit = false;
      session.pending.add(event.item_id);
      setItem(session, event.item_id, { state: "transcribing…" });
      break;
    case "conversation.item.input_audio_transcription.delta":
      setItem(session, event.item_id, { append: event.delta });
      break;
    case "conversation.item.input_audio_transcription.completed":
      session.pending.delete(event.item_id);
      setItem(session, event.item_id, { text: event.transcript, state: "done", logprobs: event.logprobs });
      maybeClose(session);
      break;
    case "conversation.item.input_audio_transcription.failed":
      session.pending.delete(event.item_id);
      setItem(session, event.item_id, {
        text: `${event.error?.code || "failed"}: ${event.error?.message || ""}`,
        state: "failed",
        failed: true,
      });
      maybeClose(session);
      break;
    case "error": {
      const error = event.error || {};
      showError("live-error", `${error.code || error.type}: ${error.message}${error.param ? ` (param: ${error.param})` : ""}`);
      if (session.awaitCommit) { // e.g. our last commit found the buffer empty: no item will come
        session.awaitCommit = false;
        session.pending.delete(session.turnItem);
        maybeClose(session);
      } else if (!session.capture && !session.stopping) {
        stopLive(); // the session.update was refused: nothing to capture for
      }
      break;
    }
    default:
      break;
  }
}

/** Stop: the rest of the audio goes out, a turn in progress is committed, the open items finish, then close. */
async function stopLive() {
  const session = live;
  if (!session || session.stopping) return;
  session.stopping = true;
  $("mic-stop").disabled = true;
  setLiveStatus("Stopping…");
  for (const track of session.stream?.getTracks() ?? []) track.stop();
  if (session.capture) {
    await Promise.race([session.capture.flush(), new Promise((resolve) => setTimeout(resolve, 500))]);
    session.capture.node.disconnect();
    await session.capture.context.close();
    session.capture = null;
  }
  if (session.speaking) {
    send(session, { type: "input_audio_buffer.commit" });
    session.speaking = false;
    session.awaitCommit = true;
  }
  session.closeTimer = setTimeout(() => closeSocket(session), 15000); // never wait forever
  maybeClose(session);
}

/** Once stopping: close when our commit has its item and every item has completed or failed. */
function maybeClose(session) {
  if (session.stopping && !session.awaitCommit && session.pending.size === 0) closeSocket(session);
}

function closeSocket(session) {
  clearTimeout(session.closeTimer);
  if (session.ws && session.ws.readyState <= WebSocket.OPEN) session.ws.close(1000, "client stopped");
  else endLive(session, "Stopped.");
}

function endLive(session, status) {
  for (const track of session.stream?.getTracks() ?? []) track.stop();
  if (session.capture) session.capture.context.close().catch(() => {});
  session.capture = null;
  clearTimeout(session.closeTimer);
  if (live === session) live = null;
  setLiveButtons(false);
  setLiveStatus(status);
}

// ---- wiring ---------------------------------------------------------------------------------

initSettings();
$("format").addEventListener("change", syncFormatOptions);
syncFormatOptions();
$("file-form").addEventListener("submit", transcribeFile);
$("cancel").addEventListener("click", () => fileRequest?.abort());
$("mic-start").addEventListener("click", startLive);
$("mic-stop").addEventListener("click", stopLive);
