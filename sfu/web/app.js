// Demo page: join a room, publish camera + microphone, show one tile per remote participant.
import { SfuClient } from './sfu-client.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const roomInput = $('room');
const nameInput = $('name');
const joinButton = $('join');
const leaveButton = $('leave');
const preview = $('preview');
const grid = $('grid');
const STATS_INTERVAL_MS = 1000;
const DASH = '–';

roomInput.value = params.get('room') || 'demo';
nameInput.value = params.get('name') || `guest-${Math.floor(1000 + Math.random() * 9000)}`;
preview.muted = true; // the attribute alone only sets defaultMuted; never echo ourselves

let client = null;
let localStream = null;
const tiles = new Map(); // participant id -> {figure, video, stream, byMid: mid -> track, stats}
let statsTimer = null;
const lastSample = new Map(); // participant id -> {t, bytes, received, lost}

// window.sfuReady settles once per join attempt; tests may grab it before clicking Join.
let ready;
function newReady() {
  ready = {};
  window.sfuReady = new Promise((resolve, reject) => Object.assign(ready, { resolve, reject }));
  window.sfuReady.catch(() => {}); // failures are reported in the status line instead
}
newReady();

function setStatus(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

function setTitle(room) { document.title = `sfu · ${room}`; }
setTitle(roomInput.value);

function setJoined(joined) {
  joinButton.disabled = joined;
  leaveButton.disabled = !joined;
  roomInput.disabled = nameInput.disabled = joined;
}

function tileFor(participant) {
  let tile = tiles.get(participant);
  if (tile) return tile;
  const figure = document.createElement('figure');
  const video = document.createElement('video');
  const caption = document.createElement('figcaption');
  video.autoplay = video.playsInline = true; // not muted: this element also plays their audio
  caption.textContent = client?.participants[participant]?.name ?? participant;
  figure.dataset.participant = participant;
  figure.append(video, caption);
  grid.append(figure);
  const stats = statsStrip(figure, {
    bitrate: 'Received bitrate, video + audio', loss: 'Packet loss over the last second',
    resolution: 'Received video resolution', fps: 'Received frames per second',
  });
  tile = { figure, video, stream: new MediaStream(), byMid: new Map(), stats };
  showRemote(tile, {});
  tiles.set(participant, tile);
  return tile;
}

function removeTile(participant) {
  const tile = tiles.get(participant);
  if (!tile) return;
  tile.video.srcObject = null;
  tile.figure.remove();
  tiles.delete(participant);
  lastSample.delete(participant);
}

// --- live stats: a strip at the top of each tile, refreshed once a second ---

// Spans keyed like `fields` (key -> tooltip), in a translucent strip over the tile.
function statsStrip(figure, fields) {
  const strip = document.createElement('div');
  strip.className = 'stats';
  const spans = {};
  for (const [key, title] of Object.entries(fields)) {
    spans[key] = Object.assign(document.createElement('span'), { title, textContent: DASH });
    strip.append(spans[key]);
  }
  figure.append(strip);
  return spans;
}

const localStats = statsStrip($('local'), {
  rtt: 'Round-trip time to the server (subscribe connection)',
  pub: 'Publish connection: type of our selected ICE candidate',
  sub: 'Subscribe connection: type of our selected ICE candidate',
});

const show = (value, format) => (value == null || !Number.isFinite(value) ? DASH : format(value));

// The selected candidate pair of `pc`: {candidateType, rtt (s)}, null fields if unknown.
async function selectedPair(pc) {
  const none = { candidateType: null, rtt: null };
  if (!pc || pc.signalingState === 'closed') return none;
  const stats = await pc.getStats().catch(() => null);
  if (!stats) return none;
  let pair = null;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair ??= stats.get(s.selectedCandidatePairId);
  });
  if (!pair) { // no transport stats (Firefox): take the pair flagged as selected or nominated
    const pairs = [...stats.values()].filter((s) => s.type === 'candidate-pair' && s.state === 'succeeded');
    pair = pairs.find((s) => s.selected) ?? pairs.find((s) => s.nominated);
  }
  if (!pair) return none;
  return {
    candidateType: stats.get(pair.localCandidateId)?.candidateType ?? null,
    rtt: pair.currentRoundTripTime ?? null,
  };
}

function showRemote(tile, now, prev) {
  const dt = prev && (now.t - prev.t) / 1000;
  const bytes = now.bytes - prev?.bytes;
  const received = now.received - prev?.received;
  const lost = Math.max(0, now.lost - prev?.lost); // duplicates can make packetsLost shrink
  // Counters shrink when a track goes away: show nothing for that interval.
  const ok = dt > 0 && bytes >= 0 && received >= 0;
  const loss = ok && received + lost > 0 ? (100 * lost) / (received + lost) : null;
  tile.stats.bitrate.textContent = `${show(ok ? (bytes * 8) / dt / 1000 : null, Math.round)} kbit/s`;
  tile.stats.loss.textContent = `${show(loss, (v) => v.toFixed(1))} % loss`;
  tile.stats.loss.classList.toggle('warn', loss > 2 && loss <= 5);
  tile.stats.loss.classList.toggle('bad', loss > 5);
  tile.stats.resolution.textContent = now.width ? `${now.width}×${now.height}` : DASH;
  tile.stats.fps.textContent = `${show(now.fps, Math.round)} fps`;
}

async function updateStats(c) {
  const [byParticipant, pub, sub] = await Promise.all([
    c.statsByParticipant().catch(() => ({})), selectedPair(c.pubPc), selectedPair(c.subPc),
  ]);
  if (client !== c) return; // left while waiting
  const t = performance.now();
  for (const [id, tile] of tiles) {
    const s = byParticipant[id];
    const now = s ? {
      t, bytes: s.bytesReceived, received: s.packetsReceived, lost: s.packetsLost,
      width: s.frameWidth, height: s.frameHeight, fps: s.framesPerSecond,
    } : { t };
    showRemote(tile, now, lastSample.get(id));
    lastSample.set(id, now);
  }
  showLocal(pub, sub);
}

function showLocal(pub, sub) {
  localStats.rtt.textContent = `RTT ${show(sub.rtt, (v) => Math.round(v * 1000))} ms`;
  localStats.pub.textContent = `pub ${pub.candidateType ?? DASH}`;
  localStats.sub.textContent = `sub ${sub.candidateType ?? DASH}`;
}

function startStats(c) {
  stopStats();
  let busy = false; // a slow getStats() must not pile up
  statsTimer = setInterval(() => {
    if (busy || client !== c) return;
    busy = true;
    updateStats(c).catch(() => {}).finally(() => { busy = false; });
  }, STATS_INTERVAL_MS);
  localStats.rtt.parentElement.hidden = false;
}

function stopStats() {
  clearInterval(statsTimer);
  statsTimer = null;
  lastSample.clear();
  localStats.rtt.parentElement.hidden = true;
  showLocal({}, {});
}

stopStats(); // the local strip stays hidden until joined

// Autoplay with sound can be blocked without a user gesture (e.g. autojoin): retry on a click.
function play(video) {
  video.play().catch((err) => {
    if (err.name !== 'NotAllowedError') return;
    setStatus('Click anywhere to enable remote playback.');
    document.addEventListener('click', () => {
      for (const t of tiles.values()) t.video.play().catch(() => {});
    }, { once: true });
  });
}

function cleanup() {
  stopStats();
  for (const id of [...tiles.keys()]) removeTile(id);
  localStream?.getTracks().forEach((t) => t.stop());
  localStream = null;
  preview.srcObject = null;
  client = null;
  setJoined(false);
}

async function join() {
  if (client) return window.sfuReady;
  newReady();
  const settle = ready; // this attempt's; a later Join gets its own
  const room = roomInput.value.trim();
  const name = nameInput.value.trim();
  setTitle(room);
  setJoined(true);
  const c = (client = window.sfu = new SfuClient({
    room, name, token: params.get('token') || undefined,
    // ?relay=1 uses TURN from the start; ?fallback=0 turns the automatic TURN restart off.
    iceTransportPolicy: params.get('relay') === '1' ? 'relay' : undefined,
    relayFallback: params.get('fallback') !== '0',
    ...(params.get('connect_timeout_ms') ? { connectTimeoutMs: Number(params.get('connect_timeout_ms')) } : {}),
  }));
  c.addEventListener('connectiontrouble', ({ detail }) => {
    setStatus(`The ${detail.pc} connection ${detail.reason === 'timeout' ? 'is slow to connect' : detail.reason}; `
      + (c.relayFallback ? 'reconnecting through TURN…' : 'no fallback.'), true);
  });
  c.addEventListener('restarted', ({ detail }) => {
    setStatus(`Reconnected${detail.relayOnly ? ' through TURN' : ''}: in room ${room} as ${name}.`);
  });
  c.addEventListener('track', ({ detail }) => {
    const tile = tileFor(detail.participant);
    tile.byMid.set(detail.mid, detail.track);
    tile.stream.addTrack(detail.track);
    tile.video.srcObject = tile.stream; // re-assigning reloads, so a late video track shows too
    play(tile.video);
  });
  c.addEventListener('trackended', ({ detail }) => {
    const tile = tiles.get(detail.participant);
    const track = tile?.byMid.get(detail.mid);
    if (!track) return;
    tile.byMid.delete(detail.mid);
    tile.stream.removeTrack(track);
  });
  c.addEventListener('participant_left', ({ detail }) => removeTile(detail.participant));
  c.addEventListener('subscription_failed', ({ detail }) => {
    const who = c.participants[detail.participant]?.name ?? detail.participant;
    setStatus(`Cannot show ${who}'s ${detail.kind}: this browser cannot decode ${detail.codec}.`, true);
  });
  c.addEventListener('error', ({ detail }) => setStatus(`Error: ${detail.message}`, true));
  c.addEventListener('close', () => {
    if (client !== c) return; // a deliberate leave already cleaned up
    cleanup();
    setStatus('Disconnected.', true);
  });
  try {
    setStatus('Opening camera and microphone…');
    localStream = await navigator.mediaDevices.getUserMedia({
      audio: true, video: { width: 640, height: 480 },
    });
    preview.srcObject = localStream;
    $('local').querySelector('figcaption').textContent = `${name} (you)`;
    setStatus(`Joining ${room}…`);
    const joined = await c.join();
    startStats(c);
    setStatus('Publishing…');
    await c.publish(localStream, { videoCodec: params.get('codec') || undefined });
    setStatus(`In room ${room} as ${joined.participant.name}.`);
    settle.resolve(c);
  } catch (err) {
    if (client === c) {
      c.leave().catch(() => {});
      cleanup();
    }
    setStatus(`Failed: ${err.message || err}`, true);
    settle.reject(err);
  }
  return window.sfuReady;
}

async function leave() {
  const c = client;
  if (!c) return;
  cleanup(); // first, so the socket's close event is not reported as a disconnect
  await c.leave();
  setStatus('Left the room.');
}

$('controls').addEventListener('submit', (e) => {
  e.preventDefault();
  join();
});
leaveButton.addEventListener('click', () => leave());

if (params.get('autojoin') === '1') join();
