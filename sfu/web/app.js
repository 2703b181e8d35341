// Demo page: join a room, publish camera + microphone (and a screen share), show one tile
// per remote participant and one per remote screen share, chat over the data channel.
import { natTest, stunUrlsOf } from './nat-test.js';
import { SfuClient } from './sfu-client.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const roomInput = $('room');
const nameInput = $('name');
const joinButton = $('join');
const leaveButton = $('leave');
const micButton = $('mic');
const cameraButton = $('camera');
const screenButton = $('screen');
const micSelect = $('mic-select');
const cameraSelect = $('camera-select');
const preview = $('preview');
const grid = $('grid');
const chatLog = $('chat-log');
const chatInput = $('chat-input');
const STATS_INTERVAL_MS = 1000;
// How this browser's NAT maps (nat-test.js), tested as the page loads when the server
// names a STUN server for it ([diagnostics] stun); the verdict goes with the join for
// the server's traversal statistics, unless ?nat= names one.
const natFound = window.sfuNat = stunUrlsOf()
  .then((stun) => (stun.length ? natTest(stun) : null)).catch(() => null);
const RECONNECTED_NOTICE_MS = 3000; // "Reconnected" is news for a moment, then clutter
const VIDEO = { width: 640, height: 480 };
const RESIZE_DEBOUNCE_MS = 250; // a window drag resizes every frame: tell the server once it settles
const MAX_SIZE_PX = 16384; // the largest max_width / max_height the server takes
const LAYERS = ['q', 'h', 'f']; // simulcast layers, low to high
const DASH = '–';
const SCREEN_SOURCES = new Set(['screen', 'screen_audio']); // what goes on a screen tile
const CHAT_TOPIC = 'chat';
const MAX_CHAT_MESSAGES = 200; // older ones scroll away for good

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

// getUserMedia exists only in a secure context (HTTPS, or localhost): elsewhere
// navigator.mediaDevices is undefined, and the page can only watch and listen.
const canCapture = Boolean(window.isSecureContext && navigator.mediaDevices?.getUserMedia);
const canShareScreen = Boolean(window.isSecureContext && navigator.mediaDevices?.getDisplayMedia);
const publishWanted = params.get('publish') !== '0'; // ?publish=0: watch only
// What the mic and camera buttons ask (true: off). Kept across joins, and settable
// before joining, so one can come in muted.
const muted = { audio: false, video: false };

let client = null;
let localStream = null;
let viewerOnly = false;   // joined as a viewer (the insecure notice's offer): no screen share
let sharing = null;       // our screen share: {track, id (the server's, once published)}
// Remote tiles: a participant's camera and microphone under their id, their screen share
// under `${id}/screen` (tileKey()). Each: {figure, video, caption, stream, screen,
// participant, byMid: mid -> MediaStreamTrack, trackIds: mid -> server track id, stats,
// and what watchTile() keeps: videoIds: mid -> server track id (video only), wanted,
// sent, visible}.
const tiles = new Map();
let statsTimer = null;
const lastSample = new Map(); // tile key -> {t, bytes, received, lost}

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

// --- the notice: one banner saying what is wrong and what can be done about it ---
// #notice[data-kind]: insecure | permission | no-camera | unreachable | reconnecting |
// reconnected | error. A newer notice replaces an older one.

let noticeTimer = null;

// `actions`: [{id, label, onClick}] buttons, or [{id, label, href}] links.
function notify(kind, text, actions = []) {
  clearTimeout(noticeTimer);
  const notice = $('notice');
  notice.dataset.kind = kind;
  $('notice-text').textContent = text;
  $('notice-actions').replaceChildren(...actions.map(actionElement));
  notice.hidden = false;
}

function actionElement({ id, label, href, onClick }) {
  const el = document.createElement(href ? 'a' : 'button');
  Object.assign(el, { id, textContent: label });
  if (href) el.href = href;
  else {
    el.type = 'button';
    el.addEventListener('click', onClick);
  }
  return el;
}

// Back to the standing notice, if the page has one: the insecure one never goes away.
function resetNotice() {
  clearTimeout(noticeTimer);
  if (!canCapture && publishWanted) {
    showInsecure();
    return;
  }
  $('notice').hidden = true;
  delete $('notice').dataset.kind;
}

// The https:// address of this very page (the server serves HTTPS on its own port when
// configured with [server] tls_cert / tls_key, or tls_self_signed).
function httpsUrl() {
  return `https://${location.host}${location.pathname}${location.search}${location.hash}`;
}

function showInsecure() {
  const joinedAlready = Boolean(client);
  const viewer = joinedAlready ? 'For now you are in as a viewer.'
    : 'Or join as a viewer: you see and hear the others, they do not see or hear you.';
  const actions = joinedAlready ? []
    : [{ id: 'notice-viewer', label: 'Join as a viewer', onClick: () => join({ viewer: true }) }];
  // A secure page in a browser without getUserMedia (some in-app browsers): HTTPS won't help.
  if (window.isSecureContext) {
    notify('insecure', `This browser cannot use the camera and microphone here. ${viewer}`, actions);
    return;
  }
  notify('insecure', 'The camera and microphone need HTTPS (or localhost), and this page came over plain '
    + `HTTP. Open https://${location.host}/ to be seen and heard. ${viewer}`, // no token shown
  [{ id: 'notice-https', label: 'Open the HTTPS page', href: httpsUrl() }, ...actions]);
}

function showReconnected() {
  notify('reconnected', 'Reconnected.');
  noticeTimer = setTimeout(resetNotice, RECONNECTED_NOTICE_MS);
}

// Why the call ended, for a close nobody here asked for.
function endedText({ error, resumeFailed }) {
  if (error?.code === 'replaced') return 'You joined this room from another tab or device, so this one left the call.';
  if (error?.code === 'kicked') return 'You were removed from the room.';
  if (error?.code === 'room_closed') return 'The room was closed.';
  if (error?.code === 'room_moved') return 'The server moved the room too often: join again.';
  if (resumeFailed) return 'The connection to the server was lost and could not be resumed: the call has ended.';
  return 'Disconnected from the server: the call has ended.';
}

// --- camera and microphone: never throws; whatever fails, one can still join and watch ---

const denied = (err) => err?.name === 'NotAllowedError' || err?.name === 'SecurityError';
// Errors that say "not this device" rather than "not allowed" or a bug: try with less.
const MISSING = new Set(['NotFoundError', 'OverconstrainedError', 'NotReadableError', 'AbortError']);

function cameraProblem(err) {
  if (err.name === 'NotFoundError') return 'No camera found';
  if (err.name === 'OverconstrainedError') return 'The chosen camera is not available';
  return 'The camera could not be started (is another app using it?)';
}

const PERMISSION = ['permission', 'Camera and microphone access was denied, so you are in as a viewer: '
  + 'the others cannot see or hear you. To be seen and heard, allow them in the browser\'s site '
  + 'settings, then leave and join again.'];

// {stream, problem: [kind, text] | undefined}: both if we can, else the microphone alone
// (no camera), else nothing (a viewer).
async function openMedia() {
  const audio = deviceConstraint(micSelect.value, {}, 'ideal');
  const video = deviceConstraint(cameraSelect.value, VIDEO, 'ideal');
  let first;
  try {
    return { stream: await navigator.mediaDevices.getUserMedia({ audio, video }) };
  } catch (err) {
    first = err;
  }
  if (denied(first)) return { stream: null, problem: PERMISSION };
  if (!MISSING.has(first.name)) {
    return { stream: null, problem: ['error', `Cannot open the camera and microphone (${first.name}: `
      + `${first.message}), so you are in as a viewer.`] };
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio });
    return { stream, problem: ['no-camera', `${cameraProblem(first)}: you are in with your microphone only.`] };
  } catch (err) {
    if (denied(err)) return { stream: null, problem: PERMISSION };
    const mic = err.name === 'NotFoundError' ? 'no microphone either' : 'the microphone could not be started either';
    return { stream: null, problem: ['no-camera', `${cameraProblem(first)}, and ${mic}: you are in as a viewer `
      + '(you see and hear the others, they do not see or hear you).'] };
  }
}

// getUserMedia constraints for a picked device ('' = the browser's choice). At join a
// vanished device must not cost us the camera ('ideal'); a switch asks for that one ('exact').
function deviceConstraint(deviceId, base, how) {
  return deviceId ? { ...base, deviceId: { [how]: deviceId } } : { ...base };
}

const localTrack = (kind) => localStream?.getTracks().find((t) => t.kind === kind);

// --- the controls: mute buttons, device pickers, the participant count ---

// Buttons and pickers work before joining (what to join with) and, once in, for what we
// publish; without a camera or microphone (or on an insecure page) there is nothing to set.
function showControls() {
  for (const [kind, button, select] of [['audio', micButton, micSelect], ['video', cameraButton, cameraSelect]]) {
    const has = Boolean(localTrack(kind));
    const usable = canCapture && publishWanted && (!client || has);
    button.disabled = !usable;
    // Nothing sent is as good as muted, for the others and so for the button.
    button.setAttribute('aria-pressed', String(muted[kind] || (Boolean(client?.joined) && !has)));
    select.disabled = !usable || !select.options[0]?.value;
  }
  // Our own tile says what the others get of us.
  const joined = Boolean(client?.joined);
  const cameraOff = $('local-camera-off');
  cameraOff.hidden = !joined || (Boolean(localTrack('video')) && !muted.video);
  if (!localStream) cameraOff.textContent = 'Watching only';
  else cameraOff.textContent = localTrack('video') ? 'Camera off' : 'No camera';
  $('local-mic-off').hidden = !joined || (Boolean(localTrack('audio')) && !muted.audio);
  // Screen sharing: once in, for anyone who may publish (stopping always works).
  screenButton.disabled = !sharing && !(joined && canShareScreen && publishWanted && !viewerOnly);
  screenButton.setAttribute('aria-pressed', String(Boolean(sharing)));
  screenButton.textContent = sharing ? 'Stop sharing' : 'Share screen';
  chatInput.disabled = $('chat-send').disabled = !joined;
}

function toggleMute(kind) {
  muted[kind] = !muted[kind];
  client?.setMuted(kind, muted[kind]); // the client remembers it if not publishing yet
  showControls();
}

function showCount() {
  const count = $('count');
  const joined = Boolean(client?.joined);
  count.hidden = !joined;
  count.textContent = joined ? `${1 + Object.keys(client.participants).length} in the room` : '';
}

// Device names come with permission (before it, a browser lists few devices, or no ids),
// and devices come and go: fill the pickers again whenever either may have changed.
async function fillDevicePickers() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices().catch(() => []);
  fillPicker(cameraSelect, devices.filter((d) => d.kind === 'videoinput'), 'Camera', 'video');
  fillPicker(micSelect, devices.filter((d) => d.kind === 'audioinput'), 'Microphone', 'audio');
  showControls();
}

function fillPicker(select, devices, noun, kind) {
  const chosen = localTrack(kind)?.getSettings().deviceId || select.value;
  const usable = devices.filter((d) => d.deviceId);
  select.replaceChildren(...usable.map((d, i) => new Option(d.label || `${noun} ${i + 1}`, d.deviceId)));
  if (!usable.length) select.append(new Option(`Default ${noun.toLowerCase()}`, ''));
  if (usable.some((d) => d.deviceId === chosen)) select.value = chosen;
}

// Picked while publishing: send the new device's track in place of the old one. Picked
// before joining: the next join opens it.
async function switchDevice(kind, select) {
  const old = localTrack(kind);
  const deviceId = select.value;
  if (!client || !old || old.getSettings().deviceId === deviceId) return;
  const c = client;
  const constraint = deviceConstraint(deviceId, kind === 'video' ? VIDEO : {}, 'exact');
  let fresh;
  try {
    fresh = await openDevice(kind, constraint);
    if (client !== c) { // left meanwhile
      fresh.stop();
      return;
    }
    (await c.replaceTrack(kind, fresh)).stop();
  } catch (err) {
    fresh?.stop();
    const name = select.selectedOptions[0]?.textContent ?? 'that device';
    notify('error', `Cannot switch to ${name}: ${err.message || err.name}.`);
    select.value = localTrack(kind)?.getSettings().deviceId ?? select.value;
    return;
  }
  preview.srcObject = localStream; // it holds the new track now; re-assigning reloads
  fillDevicePickers();
}

// A track of that device. A phone may not run two cameras at once: if the new one
// cannot start next to the old, stop the old one and try again.
async function openDevice(kind, constraint) {
  const open = async () => (await navigator.mediaDevices.getUserMedia({ [kind]: constraint })).getTracks()[0];
  try {
    return await open();
  } catch (err) {
    if (err.name !== 'NotReadableError' && err.name !== 'AbortError') throw err;
    localTrack(kind)?.stop();
    return open();
  }
}

function setTitle(room) { document.title = `sfu · ${room}`; }
setTitle(roomInput.value);

function setJoined(joined) {
  joinButton.disabled = joined;
  leaveButton.disabled = !joined;
  roomInput.disabled = nameInput.disabled = joined;
}

const tileKey = (participant, source) => (SCREEN_SOURCES.has(source) ? `${participant}/screen` : participant);

function captionText(tile) {
  const name = client?.participants[tile.participant]?.name ?? tile.participant;
  return tile.screen ? `${name} · screen` : name;
}

// The tile for a participant's camera and microphone, or for their screen share: a
// figure of its own, never shrunk to the size of a camera tile.
function tileFor(participant, source = 'camera') {
  const key = tileKey(participant, source);
  let tile = tiles.get(key);
  if (tile) return tile;
  const screen = key !== participant;
  const figure = document.createElement('figure');
  const video = document.createElement('video');
  const caption = document.createElement('figcaption');
  video.autoplay = video.playsInline = true; // not muted: this element also plays their audio
  figure.dataset.participant = participant;
  figure.append(video);
  tile = {
    figure, video, caption, screen, participant, stream: new MediaStream(), byMid: new Map(),
    trackIds: new Map(),
  };
  if (screen) {
    figure.classList.add('screen');
    figure.dataset.source = 'screen';
    figure.append(caption);
  } else {
    // Their own mute, as the server tells it (`track_muted`): shown over the last frame.
    tile.cameraOff = Object.assign(document.createElement('div'), {
      className: 'overlay muted-video', textContent: 'Camera off', hidden: true,
    });
    tile.micOff = Object.assign(document.createElement('span'), {
      className: 'badge muted-audio', textContent: 'Mic off', hidden: true,
    });
    figure.append(tile.cameraOff, caption, tile.micOff);
  }
  caption.textContent = captionText(tile);
  // A screen share goes first, where there is room for it to be read.
  if (screen) grid.prepend(figure);
  else grid.append(figure);
  tile.stats = statsStrip(figure, {
    bitrate: 'Received bitrate, video + audio', loss: 'Packet loss over the last second',
    resolution: 'Received video resolution', fps: 'Received frames per second',
    layer: 'Simulcast layer the server forwards us (q, h, f: low to high)',
    estimate: "The server's estimate of the bandwidth it can send us",
  });
  watchTile(tile);
  showRemote(tile, {});
  showMuted(tile);
  // A tile made after `active_speakers` (its media came later) is outlined too.
  if (!screen) figure.classList.toggle('speaking', client?.speakers?.[0]?.participant === participant);
  tiles.set(key, tile);
  return tile;
}

// A kind counts as muted when a camera or microphone track of that kind of theirs is.
function showMuted(tile) {
  if (tile.screen) return;
  const off = { audio: false, video: false };
  for (const t of Object.values(client?.tracks ?? {})) {
    if (t.participant === tile.participant && !SCREEN_SOURCES.has(t.source) && client.muted[t.id]) off[t.kind] = true;
  }
  tile.cameraOff.hidden = !off.video;
  tile.micOff.hidden = !off.audio;
}

function removeTile(key) {
  const tile = tiles.get(key);
  if (!tile) return;
  unwatchTile(tile);
  tile.video.srcObject = null;
  tile.figure.remove();
  tiles.delete(key);
  lastSample.delete(key);
}

function removeTilesOf(participant) {
  for (const [key, tile] of [...tiles]) if (tile.participant === participant) removeTile(key);
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

// The size to ask for, in device pixels: what the <video> covers on screen. Never for a
// screen share, whose text must stay sharp however small its tile (it is sent without
// simulcast anyway, so the server has nothing smaller to send).
function measure(tile) {
  if (tile.screen) return;
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

// A tile's counters: the sum over its tracks, the video fields of its largest video.
function tileSample(tile, byTrack, t) {
  const tracks = [...tile.trackIds.values()].map((id) => byTrack[id]).filter(Boolean);
  if (!tracks.length) return { t };
  const now = { t, bytes: 0, received: 0, lost: 0, width: null, height: null, fps: null };
  for (const s of tracks) {
    now.bytes += s.bytesReceived;
    now.received += s.packetsReceived;
    now.lost += s.packetsLost;
    if (s.frameWidth && s.frameWidth * s.frameHeight >= (now.width ?? 0) * (now.height ?? 0)) {
      Object.assign(now, { width: s.frameWidth, height: s.frameHeight, fps: s.framesPerSecond });
    }
  }
  return now;
}

async function updateStats(c) {
  const [byTrack, pubStats, subStats] = await Promise.all([
    c.statsByTrack().catch(() => ({})), statsOf(c.pubPc), statsOf(c.subPc),
  ]);
  if (client !== c) return; // left while waiting
  const t = performance.now();
  for (const [key, tile] of tiles) {
    const now = tileSample(tile, byTrack, t);
    showRemote(tile, now, lastSample.get(key));
    lastSample.set(key, now);
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
  stopScreen({ unpublish: false }); // the session goes, and the track with it
  for (const key of [...tiles.keys()]) removeTile(key);
  localStream?.getTracks().forEach((t) => t.stop());
  localStream = null;
  preview.srcObject = null;
  client = null;
  setJoined(false);
  showCount();
  showControls();
}

// Everything the page shows of a client's events.
function listen(c, room, name) {
  const on = (type, handler) => c.addEventListener(type, ({ detail }) => handler(detail));
  on('connectiontrouble', (detail) => {
    setStatus(`The ${detail.pc} connection ${detail.reason === 'timeout' ? 'is slow to connect' : detail.reason}; `
      + (c.relayFallback ? 'reconnecting through TURN…' : 'no fallback.'), true);
  });
  on('restarted', (detail) => {
    setStatus(`Reconnected${detail.relayOnly ? ' through TURN' : ''}: in room ${room} as ${name}.`);
  });
  on('track', (detail) => {
    const tile = tileFor(detail.participant, detail.source);
    tile.byMid.set(detail.mid, detail.track);
    tile.trackIds.set(detail.mid, detail.trackId);
    tile.stream.addTrack(detail.track);
    tile.video.srcObject = tile.stream; // re-assigning reloads, so a late video track shows too
    play(tile.video);
    showMuted(tile);
    if (detail.kind !== 'video') return;
    // A new track, or the same one after a restart: tell the server everything again.
    tile.videoIds.set(detail.mid, detail.trackId);
    tile.sent.delete(detail.trackId);
    measure(tile);
    syncSubscription(tile);
  });
  on('trackended', (detail) => {
    const [key, tile] = [...tiles].find(([, t]) => t.trackIds.has(detail.mid)) ?? [];
    if (!tile) return;
    tile.videoIds.delete(detail.mid);
    tile.sent.delete(detail.trackId);
    tile.trackIds.delete(detail.mid);
    const track = tile.byMid.get(detail.mid);
    tile.byMid.delete(detail.mid);
    if (track) tile.stream.removeTrack(track);
    // A camera tile stays while its participant does; a screen share ends with its tracks.
    if (tile.screen && !tile.trackIds.size) removeTile(key);
  });
  on('participant_joined', showCount);
  on('participant_left', (detail) => {
    removeTilesOf(detail.participant);
    showCount();
  });
  on('participant_updated', (detail) => {
    for (const tile of tiles.values()) {
      if (tile.participant === detail.participant.id) tile.caption.textContent = captionText(tile);
    }
  });
  // The dominant speaker's tile is outlined: the first of the server's active speakers.
  on('active_speakers', (detail) => {
    const dominant = detail.speakers[0]?.participant;
    for (const tile of document.querySelectorAll('figure[data-participant]:not(.screen)')) {
      tile.classList.toggle('speaking', tile.dataset.participant === dominant);
    }
  });
  on('track_muted', (detail) => {
    if (SCREEN_SOURCES.has(detail.source)) return; // no mute button or overlay for those
    if (detail.participant === c.self?.id) { // ours, maybe muted by the admin: follow it
      if (detail.kind) muted[detail.kind] = detail.muted;
      showControls();
      return;
    }
    const tile = tiles.get(detail.participant);
    if (tile) showMuted(tile);
  });
  on('data', (detail) => {
    if (detail.topic !== CHAT_TOPIC || typeof detail.payload?.text !== 'string') return;
    const from = detail.from;
    const name = from == null ? 'Server'
      : (from === c.self?.id ? c.self.name : c.participants[from]?.name ?? from);
    addChat(from, name, detail.payload.text);
  });
  on('subscription_failed', (detail) => {
    const who = c.participants[detail.participant]?.name ?? detail.participant;
    setStatus(`Cannot show ${who}'s ${detail.kind}: this browser cannot decode ${detail.codec}.`, true);
  });
  on('layer', (detail) => {
    for (const tile of tiles.values()) {
      if ([...tile.videoIds.values()].includes(detail.track)) showLayer(tile);
    }
  });
  on('error', (detail) => {
    // A refused preference (a server without simulcast, a track that just left) changes
    // nothing on screen: not worth the status line.
    if (detail.ref === 'set_subscription') {
      console.warn('sfu: set_subscription refused:', detail.message);
      return;
    }
    if (CHAT_ERRORS[detail.code]) { // about a message we sent: said by the chat box
      showChatProblem(CHAT_ERRORS[detail.code]);
      return;
    }
    setStatus(`Error: ${detail.message}`, true);
    notify('error', `Error: ${detail.message}`);
  });
  // The WebSocket dropped: the client rejoins by itself, media keeps flowing meanwhile.
  on('reconnecting', () => {
    notify('reconnecting', 'The connection to the server was lost. Reconnecting…');
    setStatus('Reconnecting…', true);
  });
  on('reconnected', () => {
    showReconnected();
    setStatus(`In room ${room} as ${name}.`);
    showCount();
    // Preferences that could not be sent while the socket was down go now.
    for (const tile of tiles.values()) {
      syncSubscription(tile);
      showMuted(tile);
    }
  });
  on('close', (detail) => {
    // Left on purpose (the page cleaned up already), or join() failed and reports it.
    if (client !== c || !c.joined) return;
    cleanup();
    if (detail.left) { // window.sfu.leave() called directly
      resetNotice();
      setStatus('Left the room.');
      return;
    }
    if (detail.error?.code === 'room_moved' && rejoinAllowed()) {
      // The room's worker stopped; the room goes on elsewhere once someone joins it.
      setStatus('The server moved the room: joining again…');
      setTimeout(() => { if (!client) join({ viewer: viewerOnly }); }, REJOIN_DELAY_MS);
      return;
    }
    notify('error', endedText(detail), [{ id: 'notice-retry', label: 'Join again', onClick: () => join() }]);
    setStatus('Disconnected.', true);
  });
}

// At most REJOIN_LIMIT automatic rejoins a minute: a room that keeps moving is a fault
// for the person to see.
const REJOIN_DELAY_MS = 500;
const REJOIN_LIMIT = 5;
const rejoins = [];
function rejoinAllowed() {
  const now = Date.now();
  while (rejoins.length && now - rejoins[0] > 60_000) rejoins.shift();
  if (rejoins.length >= REJOIN_LIMIT) return false;
  rejoins.push(now);
  return true;
}

// `viewer`: publish nothing, as ?publish=0 does (the insecure notice offers it).
async function join({ viewer = false } = {}) {
  if (client) return window.sfuReady;
  newReady();
  const settle = ready; // this attempt's; a later Join gets its own
  const room = roomInput.value.trim();
  const name = nameInput.value.trim();
  setTitle(room);
  setJoined(true);
  viewerOnly = viewer;
  resetNotice(); // an earlier attempt's problem is not this one's
  const c = (client = window.sfu = new SfuClient({
    room, name, token: params.get('token') || undefined,
    natType: params.get('nat') || undefined, // ?nat=symmetric: what a NAT test found
    // ?relay=1 uses TURN from the start; ?fallback=0 turns the automatic TURN restart off.
    iceTransportPolicy: params.get('relay') === '1' ? 'relay' : undefined,
    relayFallback: params.get('fallback') !== '0',
    ...(params.get('connect_timeout_ms') ? { connectTimeoutMs: Number(params.get('connect_timeout_ms')) } : {}),
  }));
  listen(c, room, name);
  showControls();
  try {
    if (publishWanted && !viewer && canCapture) {
      setStatus('Opening camera and microphone…');
      const { stream, problem } = await openMedia();
      if (client !== c) { // left while the browser asked for permission
        stream?.getTracks().forEach((t) => t.stop());
        throw Object.assign(new Error('left before joining'), { code: 'left' });
      }
      localStream = stream;
      preview.srcObject = localStream;
      if (problem) notify(...problem);
      fillDevicePickers(); // names come with the permission
    }
    $('local').querySelector('figcaption').textContent = `${name} (you)`;
    setStatus(`Joining ${room}…`);
    c.natType ??= (await natFound)?.natType;
    const joined = await c.join();
    startStats(c);
    showCount();
    showChatProblem(null);
    // Chat for everyone, viewers too: data alone needs no publish grant.
    c.enableData().catch((err) => {
      if (client === c) showChatProblem(`Chat is not available: ${err.message || err}.`);
    });
    if (localStream) {
      for (const kind of ['audio', 'video']) c.setMuted(kind, muted[kind]); // as the buttons say
      setStatus('Publishing…');
      await c.publish(localStream, {
        videoCodec: params.get('codec') || undefined,
        simulcast: params.get('simulcast') === '0' ? false : undefined, // ?simulcast=0: one layer
      });
    }
    showControls();
    if (!canCapture && publishWanted) showInsecure(); // now without its "join as a viewer"
    setStatus(`In room ${room} as ${joined.participant.name}${localStream ? '' : ', watching only'}.`);
    settle.resolve(c);
  } catch (err) {
    settle.reject(err);
    if (client !== c) return; // left meanwhile: nothing went wrong
    c.leave().catch(() => {});
    cleanup();
    const retry = { id: 'notice-retry', label: 'Retry', onClick: () => join({ viewer }) };
    if (err.code === 'unreachable') {
      notify('unreachable', `Cannot reach the server at ${c.url}. Check the network connection, `
        + 'then try again.', [retry]);
    } else {
      notify('error', `Could not join: ${err.message || err}`, [retry]);
    }
    setStatus(`Failed: ${err.message || err}`, true);
  }
  return window.sfuReady;
}

// --- screen sharing: one screen at a time, without simulcast, its own tile everywhere ---

async function startScreen() {
  const c = client;
  if (!c?.joined || sharing) return;
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({ video: true });
  } catch (err) {
    if (!denied(err)) notify('error', `Cannot share the screen: ${err.message || err.name}.`);
    return; // cancelled in the browser's picker: nothing to say
  }
  const track = stream.getVideoTracks()[0];
  if (client !== c || sharing || !track) { // left, or pressed twice, meanwhile
    stream.getTracks().forEach((t) => t.stop());
    return;
  }
  if ('contentHint' in track) track.contentHint = 'detail'; // keep resolution over frame rate
  const share = (sharing = { track, id: null });
  // The browser's own "Stop sharing" ends the track.
  track.addEventListener('ended', () => { if (sharing === share) stopScreen(); });
  showLocalScreen(stream);
  showControls();
  try {
    share.id = (await c.publishTrack(track, { source: 'screen', simulcast: false, stream })).id;
    if (sharing !== share) c.unpublishTrack(share.id).catch(() => {}); // stopped meanwhile
  } catch (err) {
    if (sharing !== share) return;
    stopScreen({ unpublish: false });
    notify('error', `Cannot share the screen: ${err.message || err}.`);
  }
}

function stopScreen({ unpublish = true } = {}) {
  const share = sharing;
  if (!share) return;
  sharing = null;
  share.track.stop();
  if (unpublish && share.id && client) {
    client.unpublishTrack(share.id).catch((err) => console.warn('sfu: unpublish of the screen failed:', err));
  }
  showLocalScreen(null);
  showControls();
}

function showLocalScreen(stream) {
  const figure = $('local-screen');
  figure.hidden = !stream;
  figure.querySelector('figcaption').textContent = `${client?.self?.name ?? 'You'} (you) · screen`;
  $('screen-preview').srcObject = stream;
}

// --- chat: text over the reliable data channel, topic "chat", payload {text} ---

// Errors the server sends about data we sent, as the chat box says them.
const CHAT_ERRORS = {
  data_too_large: 'A message was too large for the server and was not delivered.',
  data_rate_limited: 'Messages are going out too fast: some were dropped.',
  bad_data: 'The server could not read a message.',
};

function addChat(from, name, text, own = false) {
  const item = document.createElement('li');
  item.dataset.from = from ?? '';
  item.classList.toggle('own', own);
  item.append(Object.assign(document.createElement('span'), { className: 'from', textContent: name }),
    Object.assign(document.createElement('span'), { className: 'text', textContent: text }));
  chatLog.append(item);
  while (chatLog.children.length > MAX_CHAT_MESSAGES) chatLog.firstElementChild.remove();
  chatLog.scrollTop = chatLog.scrollHeight;
}

function showChatProblem(text) {
  $('chat-error').hidden = !text;
  $('chat-error').textContent = text ?? '';
}

function sendChat() {
  const text = chatInput.value.trim();
  const c = client;
  if (!text || !c?.joined) return;
  try {
    c.sendData({ text }, { topic: CHAT_TOPIC });
  } catch (err) {
    showChatProblem(err.code === 'data_too_large' ? 'That message is too long to send.'
      : `Not sent: ${err.message || err}.`);
    return;
  }
  showChatProblem(null);
  addChat(c.self.id, c.self.name, text, true);
  chatInput.value = '';
}

async function leave() {
  const c = client;
  if (!c) return;
  cleanup(); // first, so the socket's close event is not reported as a disconnect
  resetNotice();
  await c.leave();
  setStatus('Left the room.');
}

$('controls').addEventListener('submit', (e) => {
  e.preventDefault();
  join();
});
leaveButton.addEventListener('click', () => leave());
micButton.addEventListener('click', () => toggleMute('audio'));
cameraButton.addEventListener('click', () => toggleMute('video'));
screenButton.addEventListener('click', () => (sharing ? stopScreen() : startScreen()));
$('chat-form').addEventListener('submit', (e) => {
  e.preventDefault();
  sendChat();
});
micSelect.addEventListener('change', () => switchDevice('audio', micSelect));
cameraSelect.addEventListener('change', () => switchDevice('video', cameraSelect));
navigator.mediaDevices?.addEventListener?.('devicechange', () => fillDevicePickers());

resetNotice(); // on an insecure page, say so before anyone clicks Join
fillDevicePickers();
showControls();
if (params.get('autojoin') === '1') join(); // on an insecure page: as a viewer, with the notice
