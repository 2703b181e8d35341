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

roomInput.value = params.get('room') || 'demo';
nameInput.value = params.get('name') || `guest-${Math.floor(1000 + Math.random() * 9000)}`;
preview.muted = true; // the attribute alone only sets defaultMuted; never echo ourselves

let client = null;
let localStream = null;
const tiles = new Map(); // participant id -> {figure, video, stream, byMid: mid -> track}

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
  tile = { figure, video, stream: new MediaStream(), byMid: new Map() };
  tiles.set(participant, tile);
  return tile;
}

function removeTile(participant) {
  const tile = tiles.get(participant);
  if (!tile) return;
  tile.video.srcObject = null;
  tile.figure.remove();
  tiles.delete(participant);
}

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
  const c = (client = window.sfu = new SfuClient({ room, name, token: params.get('token') || undefined }));
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
