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
const RESIZE_DEBOUNCE_MS = 250; // a window drag resizes every frame: tell the server once it settles
const MAX_SIZE_PX = 16384; // the largest max_width / max_height the server takes
const LAYERS = ['q', 'h', 'f']; // simulcast layers, low to high
const DASH = '–';

roomInput.value = params.get('room') || 'demo';
nameInput.value = params.get('name') || `guest-${Math.floor(1000 + Math.random() * 9000)}`;
preview.muted = true; // the attribute alone only sets defaultMuted; never echo ourselves

// ?max_width=N / ?max_height=N: ask at most that (device px) for every remote video
// instead of what its tile covers; tests use it to pick a layer. Null without them.
function forcedSizeParams() {
  const out = {};
  for (const [param, key] of [['max_width', 'maxWidth'], ['max_height', 'maxHeight']]) {
    const value = Number(params.get(param) || NaN);
    if (Number.isInteger(value) && value >= 0 && value <= MAX_SIZE_PX) out[key] = value;
    else if (params.has(param)) console.warn(`sfu: ignoring ?${param}: not an integer 0..${MAX_SIZE_PX}`);
  }
  return Object.keys(out).length ? out : null;
}
const forcedSize = forcedSizeParams();

let client = null;
let localStream = null;
// participant id -> {figure, video, stream, byMid: mid -> track, stats, and what
// watchTile() keeps: videoIds: mid -> server track id (video only), wanted, sent, visible}
const tiles = new Map();
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
    layer: 'Simulcast layer the server forwards us (q, h, f: low to high)',
    estimate: "The server's estimate of the bandwidth it can send us",
  });
  tile = { figure, video, stream: new MediaStream(), byMid: new Map(), stats };
  watchTile(tile);
  showRemote(tile, {});
  tiles.set(participant, tile);
  return tile;
}

function removeTile(participant) {
  const tile = tiles.get(participant);
  if (!tile) return;
  unwatchTile(tile);
  tile.video.srcObject = null;
  tile.figure.remove();
  tiles.delete(participant);
  lastSample.delete(participant);
}

// --- subscription preferences: each remote tile asks for no more than it shows ---
// The server forwards the highest simulcast layer that fits these (docs/protocol.md).

// Watch the tile's <video>: its size, and whether any of it is on screen.
function watchTile(tile) {
  Object.assign(tile, { videoIds: new Map(), wanted: {}, sent: new Map(), visible: true });
  tile.resizing = new ResizeObserver(() => {
    clearTimeout(tile.resizeTimer);
    tile.resizeTimer = setTimeout(() => {
      measure(tile);
      syncSubscription(tile);
    }, RESIZE_DEBOUNCE_MS);
  });
  tile.resizing.observe(tile.video);
  tile.showing = new IntersectionObserver((entries) => {
    tile.visible = entries.at(-1).isIntersecting;
    syncSubscription(tile);
  });
  tile.showing.observe(tile.video);
}

function unwatchTile(tile) {
  tile.resizing.disconnect();
  tile.showing.disconnect();
  clearTimeout(tile.resizeTimer);
}

// The size to ask for, in device pixels: what the <video> covers on screen.
function measure(tile) {
  if (forcedSize) {
    Object.assign(tile.wanted, forcedSize);
    return;
  }
  const { clientWidth, clientHeight } = tile.video;
  if (!clientWidth || !clientHeight) return; // not laid out: it is paused, keep the last size
  const px = (css) => Math.min(MAX_SIZE_PX, Math.round(css * (window.devicePixelRatio || 1)));
  Object.assign(tile.wanted, { maxWidth: px(clientWidth), maxHeight: px(clientHeight) });
}

// Tell the server, per video track of the tile, only what changed since we last did.
// Audio is never paused: people scrolled out of view are still heard.
function syncSubscription(tile) {
  if (!client) return;
  const wanted = { ...tile.wanted, paused: !tile.visible || document.hidden };
  for (const trackId of tile.videoIds.values()) {
    const sent = tile.sent.get(trackId) ?? {};
    const changed = Object.fromEntries(Object.entries(wanted).filter(([k, v]) => sent[k] !== v));
    if (!Object.keys(changed).length) continue;
    try {
      client.setSubscription(trackId, changed);
      tile.sent.set(trackId, { ...sent, ...changed });
    } catch (err) {
      console.warn('sfu: set_subscription not sent:', err); // socket closing: nothing to tell
    }
  }
}

document.addEventListener('visibilitychange', () => {
  for (const tile of tiles.values()) syncSubscription(tile);
});

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
  layers: 'Simulcast layers we send (q, h, f: low to high): frame size of each',
});

const show = (value, format) => (value == null || !Number.isFinite(value) ? DASH : format(value));

// getStats() of `pc`, or null when there is no open pc.
async function statsOf(pc) {
  if (!pc || pc.signalingState === 'closed') return null;
  return pc.getStats().catch(() => null);
}

// The selected candidate pair in `stats`: {candidateType, rtt (s)}, null fields if unknown.
function selectedPair(stats) {
  const none = { candidateType: null, rtt: null };
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

// The simulcast layers we send (outbound-rtp with a rid), low to high; [] without simulcast.
function outboundLayers(stats) {
  const layers = [];
  stats?.forEach((s) => {
    if (s.type === 'outbound-rtp' && (s.kind ?? s.mediaType) === 'video' && s.rid) layers.push(s);
  });
  return layers.sort((a, b) => LAYERS.indexOf(a.rid) - LAYERS.indexOf(b.rid));
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
  showLayer(tile);
}

// The server's latest `layer` message for the tile's video; hidden until there is one
// (a server without simulcast sends none).
function showLayer(tile) {
  const layer = [...tile.videoIds.values()].map((id) => client?.layers[id]).find(Boolean);
  tile.stats.layer.hidden = tile.stats.estimate.hidden = !layer;
  if (!layer) return;
  tile.stats.layer.textContent = layer.paused ? 'paused' : `layer ${layer.rid ?? DASH}`;
  tile.stats.estimate.textContent = `est ${show(layer.estimate_bps, (v) => Math.round(v / 1000))} kbit/s`;
}

async function updateStats(c) {
  const [byParticipant, pubStats, subStats] = await Promise.all([
    c.statsByParticipant().catch(() => ({})), statsOf(c.pubPc), statsOf(c.subPc),
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
  showLocal(selectedPair(pubStats), selectedPair(subStats), outboundLayers(pubStats));
}

function showLocal(pub, sub, layers = []) {
  localStats.rtt.textContent = `RTT ${show(sub.rtt, (v) => Math.round(v * 1000))} ms`;
  localStats.pub.textContent = `pub ${pub.candidateType ?? DASH}`;
  localStats.sub.textContent = `sub ${sub.candidateType ?? DASH}`;
  // A browser may leave a layer out (Chromium sends no `f` below 960×540): it shows as –.
  localStats.layers.hidden = !layers.length;
  localStats.layers.textContent = `up ${layers.map((l) => `${l.rid} ${
    l.frameWidth ? `${l.frameWidth}×${l.frameHeight}` : DASH}`).join(' ')}`;
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
    if (detail.kind !== 'video') return;
    // A new track, or the same one after a restart: tell the server everything again.
    tile.videoIds.set(detail.mid, detail.trackId);
    tile.sent.delete(detail.trackId);
    measure(tile);
    syncSubscription(tile);
  });
  c.addEventListener('trackended', ({ detail }) => {
    const tile = tiles.get(detail.participant);
    tile?.videoIds.delete(detail.mid);
    tile?.sent.delete(detail.trackId);
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
  c.addEventListener('layer', ({ detail }) => {
    for (const tile of tiles.values()) {
      if ([...tile.videoIds.values()].includes(detail.track)) showLayer(tile);
    }
  });
  c.addEventListener('error', ({ detail }) => {
    // A refused preference (a server without simulcast, a track that just left) changes
    // nothing on screen: not worth the status line.
    if (detail.ref === 'set_subscription') console.warn('sfu: set_subscription refused:', detail.message);
    else setStatus(`Error: ${detail.message}`, true);
  });
  c.addEventListener('close', () => {
    if (client !== c) return; // a deliberate leave already cleaned up
    cleanup();
    setStatus('Disconnected.', true);
  });
  const publishing = params.get('publish') !== '0'; // ?publish=0: watch only
  try {
    if (publishing) {
      setStatus('Opening camera and microphone…');
      localStream = await navigator.mediaDevices.getUserMedia({
        audio: true, video: { width: 640, height: 480 },
      });
      preview.srcObject = localStream;
    }
    $('local').querySelector('figcaption').textContent = `${name} (you)`;
    setStatus(`Joining ${room}…`);
    const joined = await c.join();
    startStats(c);
    if (publishing) {
      setStatus('Publishing…');
      await c.publish(localStream, {
        videoCodec: params.get('codec') || undefined,
        simulcast: params.get('simulcast') === '0' ? false : undefined, // ?simulcast=0: one layer
      });
    }
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
