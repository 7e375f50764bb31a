// The run's live page: joins the run's stream (a WebSocket on the page's own address), schedules each
// slot's notes on the AudioContext clock through a SoundFont synthesiser, and draws the piano roll
// and the norms. The server sends every slot with the notes it sounds (the same Arrangement that
// writes the .mid file), so this page plays the file's notes without a copy of the mapping.
import { WorkletSynthesizer } from "./vendor/spessasynth_lib.js";

const LATENCY = 0.25; // seconds between a slot's arrival and its sound: room for the network's jitter
const NEXT_RUN_SECONDS = 2; // after a run ends, how often to look for the next one on this address (a sweep)
const MAX_AHEAD = 4; // seconds of music queued at most: a run faster than its tempo is not queued without bound
const WINDOW = 96; // slots shown
const DRUMS = 9;
const PLAYING_VOLUME = 100; // CC 7 (channel volume) of a voice that is heard; 0 when muted
const KINDS = {
  nan: ["NaN", "#d62728"], inf: ["Inf", "#9467bd"], spike: ["spike", "#ff7f0e"],
  loss_spike: ["loss spike", "#c07a5a"], skipped: ["skipped", "#17becf"],
};
const COLOURS = ["#4e9cf5", "#f5a04e", "#5cc97b", "#e35d6a", "#a98bf0", "#d8c35a", "#4fd1c5", "#f27fbf",
  "#9fb0c0", "#c9e06b", "#f0865a", "#6fa8dc", "#b4a7d6", "#93c47d", "#e6b8af"];

const $ = (id) => document.getElementById(id);
const state = { connected: false, slots: 0, notes: 0, voices: [], level: 0 };
// Read-only for tests and debugging: the page's own counters, never a handle on its internals.
window.gradmidi = Object.freeze({
  get connected() { return state.connected; },
  get slots() { return state.slots; },
  get notes() { return state.notes; },
  get voices() { return state.voices.slice(); },
  get level() { return state.level; },
});

const params = new URLSearchParams(location.search);
const token = params.get("token");
if (token !== null) {
  params.delete("token"); // kept in an HttpOnly cookie by the server; out of the address bar and history
  history.replaceState(null, "", location.pathname + (params.size ? `?${params}` : ""));
}

// -- sound ---------------------------------------------------------------------------------------
const audio = new AudioContext({ latencyHint: "interactive" });
const output = audio.createGain();
const analyser = audio.createAnalyser();
analyser.fftSize = 2048;
output.connect(analyser).connect(audio.destination);
output.gain.value = Number($("volume").value);
let synth = null;

async function startSynth() {
  await audio.audioWorklet.addModule(new URL("vendor/spessasynth_processor.min.js", location.href));
  const made = new WorkletSynthesizer(audio);
  made.connect(output);
  const font = await fetch(new URL("soundfont.sf2", location.href));
  if (!font.ok) throw new Error(`the SoundFont: HTTP ${font.status}`);
  await made.soundBankManager.addSoundBank(await font.arrayBuffer(), "gradmidi");
  await made.isReady;
  synth = made;
}

function showStart() {
  $("start").hidden = audio.state === "running";
  if (state.connected && audio.state === "running") status("playing live", "on"); // after the click
}
audio.addEventListener("statechange", showStart);
$("start").addEventListener("click", () => audio.resume());
$("volume").addEventListener("input", (e) => output.gain.setTargetAtTime(Number(e.target.value), audio.currentTime, 0.02));

// The output's RMS over the last second, from 20 windows of the analyser 50 ms apart.
const squares = [];
const samples = new Float32Array(analyser.fftSize);
setInterval(() => {
  analyser.getFloatTimeDomainData(samples);
  let sum = 0;
  for (const x of samples) sum += x * x;
  squares.push(sum / samples.length);
  if (squares.length > 20) squares.shift();
  state.level = Math.sqrt(squares.reduce((a, b) => a + b, 0) / squares.length);
}, 50);

// -- the run ---------------------------------------------------------------------------------------
let run = null; // {id, header, instruments, tick, slotSeconds, low, high}
let skipped = 0; // slots not sounded because the run outpaced its tempo by more than MAX_AHEAD
let next = null; // the audio time the next slot sounds at: the end of the last one scheduled
const recent = []; // the last WINDOW slots: {index, norms, notes, events, range}
const muted = new Set();
const soloed = new Set();

function welcome(message) {
  const header = message.header;
  const clock = header.clock;
  const tick = 60 / (clock.bpm * clock.ticks_per_beat);
  if (!run || run.id !== message.run) {
    recent.length = 0;
    next = null;
  }
  run = {
    id: message.run, header, instruments: message.instruments || [], tick, slotSeconds: tick * Math.round(clock.slot_beats * clock.ticks_per_beat),
    low: header.mapping.low_note ?? 36, high: header.mapping.high_note ?? 96,
  };
  state.voices = header.voices.map((v) => v.name);
  $("title").textContent = header.title || "";
  document.title = `gradmidi: ${header.title || "live"}`;
  if (synth) for (const v of header.voices) synth.programChange(v.channel, v.program);
  buildVoices();
  buildEvents();
  applyMutes();
}

function slot(message) {
  state.slots += 1;
  const events = [...new Set(message.events.map((e) => e.kind))];
  recent.push({ index: message.index, step: message.first_step, norms: message.norms, notes: message.notes, events,
    range: message.log_range });
  if (recent.length > WINDOW) recent.shift();
  for (const kind of events) flash(kind);
  $("step").textContent = `step ${message.first_step + Math.max(message.steps, 1) - 1}`;
  message.norms.forEach((norm, v) => {
    const cell = document.querySelector(`#voices tr[data-voice="${v}"] td.norm`);
    if (cell) cell.textContent = typeof norm === "number" ? norm.toExponential(2) : norm;
  });
  schedule(message);
}

function schedule(message) {
  if (!synth || audio.state !== "running") return; // silent until sound starts; the roll still draws
  const now = audio.currentTime;
  let start = next ?? -Infinity; // slots follow one another on the score's grid
  if (start < now + 0.02) { // the first slot, or the stream fell behind the clock: start again from now
    start = now + LATENCY;
  } else if (start > now + MAX_AHEAD) { // training outruns the tempo: drawn, not sounded
    skipped += 1;
    status(`training runs faster than the tempo: ${skipped} slots drawn but not sounded`, "off");
    return;
  }
  for (const [channel, key, velocity, onset, length] of message.notes) {
    const on = start + onset * run.tick;
    synth.noteOn(channel, key, velocity, { time: on });
    synth.noteOff(channel, key, { time: on + length * run.tick });
    state.notes += 1;
  }
  next = start + run.slotSeconds;
}

// -- the stream ------------------------------------------------------------------------------------
let socket = null;
let retries = 0;
let ended = false; // the run said it ended: look for the next one, slowly
let refused = false; // retrying cannot help

function connect() {
  const url = new URL("stream", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  socket = new WebSocket(url);
  socket.onopen = () => socket.send(JSON.stringify({ type: "hello", protocol: 2, token }));
  socket.onmessage = (e) => {
    const message = JSON.parse(e.data);
    if (message.type === "welcome") {
      state.connected = true;
      retries = 0;
      ended = false;
      status(`playing live${audio.state === "running" ? "" : " (sound off until you click)"}`, "on");
      welcome(message);
    } else if (message.type === "slot" && run) {
      slot(message);
    } else if (message.type === "end") {
      ended = true;
      status("the run has ended", "");
    } else if (message.type === "refused") {
      status(`refused: ${message.reason}`, "off");
      refused = message.reason.includes("token");
    }
  };
  socket.onclose = () => {
    state.connected = false;
    if (refused) return;
    if (ended) {
      setTimeout(connect, NEXT_RUN_SECONDS * 1000); // quietly: the status still says the run ended
      return;
    }
    const wait = Math.min(5, 0.5 * 2 ** retries++);
    status(`the stream dropped: reconnecting in ${wait} s`, "off");
    setTimeout(connect, wait * 1000);
  };
}

function status(text, kind) {
  $("status").textContent = text;
  $("status").className = `status ${kind}`;
}

// -- voices, mute and solo -----------------------------------------------------------------------------
function rows() {
  const voices = run.header.voices.map((v, i) => ({ index: v.index, name: v.name, channel: v.channel,
    detail: run.instruments[i] || `program ${v.program}` }));
  voices.push({ index: "drums", name: "events", channel: DRUMS, detail: "drums, channel 10" });
  return voices;
}

function buildVoices() {
  const body = document.querySelector("#voices tbody");
  body.replaceChildren();
  for (const row of rows()) {
    const tr = document.createElement("tr");
    tr.dataset.voice = row.index;
    const colour = row.channel === DRUMS ? "#ddd" : COLOURS[row.index % COLOURS.length];
    tr.innerHTML = `<td><span class="swatch"></span></td><td></td><td></td>` +
      `<td class="norm"></td><td><input type="checkbox" class="mute"></td><td><input type="checkbox" class="solo"></td>`;
    tr.querySelector(".swatch").style.background = colour; // through the CSSOM: the page allows no inline styles
    tr.children[1].textContent = row.name;
    tr.children[2].textContent = row.detail;
    const mute = tr.querySelector(".mute");
    const solo = tr.querySelector(".solo");
    mute.checked = muted.has(row.channel);
    solo.checked = soloed.has(row.channel);
    mute.addEventListener("change", () => { toggle(muted, row.channel, mute.checked); applyMutes(); });
    solo.addEventListener("change", () => { toggle(soloed, row.channel, solo.checked); applyMutes(); });
    body.append(tr);
  }
}

function toggle(set, channel, on) {
  if (on) set.add(channel); else set.delete(channel);
}

function applyMutes() {
  if (!synth || !run) return;
  for (const row of rows()) {
    const silent = muted.has(row.channel) || (soloed.size > 0 && !soloed.has(row.channel));
    synth.controllerChange(row.channel, 7, silent ? 0 : PLAYING_VOLUME);
  }
}

function buildEvents() {
  const bar = $("events");
  bar.replaceChildren();
  for (const kind of Object.keys(run.header.drums)) {
    const [label, colour] = KINDS[kind] || [kind, "#bbb"];
    const span = document.createElement("span");
    span.className = "event";
    span.dataset.kind = kind;
    span.dataset.count = "0";
    span.style.setProperty("--c", colour);
    span.textContent = label;
    span.append(document.createElement("b"));
    bar.append(span);
  }
}

function flash(kind) {
  const span = document.querySelector(`#events .event[data-kind="${CSS.escape(kind)}"]`);
  if (!span) return;
  span.dataset.count = String(Number(span.dataset.count) + 1);
  span.querySelector("b").textContent = span.dataset.count;
  span.classList.remove("flash");
  void span.offsetWidth; // restarts the animation
  span.classList.add("flash");
}

// -- drawing ---------------------------------------------------------------------------------------
function colourOf(channel) {
  if (channel === DRUMS) return "#e6e6e6";
  const voice = run.header.voices.find((v) => v.channel === channel);
  return COLOURS[(voice ? voice.index : 0) % COLOURS.length];
}

function draw() {
  requestAnimationFrame(draw);
  if (!run) return;
  drawRoll($("roll"));
  drawNorms($("norms"));
}

function drawRoll(canvas) {
  const g = canvas.getContext("2d");
  const { width, height } = canvas;
  g.clearRect(0, 0, width, height);
  const first = recent.length ? recent[recent.length - 1].index - WINDOW + 1 : 0;
  const slotWidth = width / WINDOW;
  const drumLane = 18;
  const span = run.high - run.low + 1;
  const keyHeight = (height - drumLane) / span;
  g.fillStyle = "#1b1f25";
  for (let key = run.low; key <= run.high; key++) {
    if ([1, 3, 6, 8, 10].includes(key % 12)) g.fillRect(0, (run.high - key) * keyHeight, width, keyHeight);
  }
  const slotTicks = run.slotSeconds / run.tick;
  for (const s of recent) {
    const x = (s.index - first) * slotWidth;
    for (const kind of s.events) {
      g.fillStyle = (KINDS[kind] || [kind, "#bbb"])[1] + "55";
      g.fillRect(x, 0, slotWidth, height);
    }
    for (const [channel, key, , onset, length] of s.notes) {
      g.fillStyle = colourOf(channel);
      const nx = x + (onset / slotTicks) * slotWidth;
      const w = Math.max(1, (length / slotTicks) * slotWidth);
      if (channel === DRUMS) g.fillRect(nx, height - drumLane + 3, w, drumLane - 6);
      else g.fillRect(nx, (run.high - key) * keyHeight, w, Math.max(2, keyHeight));
    }
  }
}

function drawNorms(canvas) {
  const g = canvas.getContext("2d");
  const { width, height } = canvas;
  g.clearRect(0, 0, width, height);
  if (!recent.length) return;
  const finite = recent.flatMap((s) => s.norms.filter((n) => typeof n === "number" && n > 0));
  const ranges = recent.flatMap((s) => s.range);
  let lo = Math.floor(Math.min(...finite.map(Math.log10), ...ranges));
  let hi = Math.ceil(Math.max(...finite.map(Math.log10), ...ranges));
  if (!(hi > lo)) { lo -= 1; hi += 1; }
  const top = 12;
  const y = (log) => top + (hi - log) / (hi - lo) * (height - top - 16);
  const first = recent[recent.length - 1].index - WINDOW + 1;
  const slotWidth = width / WINDOW;
  g.font = "11px system-ui, sans-serif";
  for (let d = lo; d <= hi; d++) { // decades: the log axis
    g.strokeStyle = "#262b33";
    g.beginPath(); g.moveTo(0, y(d)); g.lineTo(width, y(d)); g.stroke();
    g.fillStyle = "#6d7580";
    g.fillText(`1e${d}`, 4, y(d) - 2);
  }
  g.fillStyle = "#ffffff0d"; // the norms mapped onto the register (the pitch range in force)
  for (const s of recent) {
    const x = (s.index - first) * slotWidth;
    g.fillRect(x, y(s.range[1]), slotWidth, y(s.range[0]) - y(s.range[1]));
  }
  run.header.voices.forEach((voice, v) => {
    g.strokeStyle = COLOURS[voice.index % COLOURS.length];
    g.lineWidth = 1.5;
    g.beginPath();
    let drawing = false;
    for (const s of recent) {
      const norm = s.norms[v];
      const x = (s.index - first + 0.5) * slotWidth;
      if (typeof norm !== "number" || !(norm > 0)) {
        if (typeof norm === "string") { // NaN or Inf: a mark at the top, in the event's colour
          g.fillStyle = norm === "NaN" ? KINDS.nan[1] : KINDS.inf[1];
          g.fillRect(x - 2, 2, 4, 8);
        }
        drawing = false;
        continue;
      }
      if (drawing) g.lineTo(x, y(Math.log10(norm))); else g.moveTo(x, y(Math.log10(norm)));
      drawing = true;
    }
    g.stroke();
  });
}

// -- start ---------------------------------------------------------------------------------------
showStart();
requestAnimationFrame(draw);
startSynth().catch((error) => {
  console.error(error);
  status(`no sound: ${error.message}`, "off");
}).finally(connect); // after the synthesiser: the welcome's programs and every slot find it ready
