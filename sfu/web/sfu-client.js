// Browser client for the sfu control protocol (docs/protocol.md).
// One WebSocket carries JSON requests; media goes over two RTCPeerConnections:
// a send-only "publish" pc we offer, and a receive-only "subscribe" pc the server offers.
// The publish pc also carries our data channels, so it exists as soon as either media
// or data is wanted, and every change to what it carries is a new `publish` offer.

const GATHER_TIMEOUT_MS = 3000; // never hang on a slow or broken STUN/TURN server
const LEAVE_TIMEOUT_MS = 2000;
const PING_INTERVAL_MS = 20000; // keeps idle proxies from dropping the socket
// A phone that changes networks can leave a socket that neither works nor closes: no
// pong this long after a ping counts as a drop, so we resume instead of hanging.
const PONG_TIMEOUT_MS = 15000;
// Resuming (docs/protocol.md, "Identity, replacement and resuming"): after an unasked-for
// close, rejoin with the resume token, waiting 0.5, 1, 2, 4, 5, 5… s between attempts
// (at most 5 s, so several attempts land within the server's reconnect_grace_s, 20 s by
// default) until RESUME_TIMEOUT_MS have passed.
const RESUME_TIMEOUT_MS = 30000;
const RESUME_FIRST_DELAY_MS = 500;
const RESUME_MAX_DELAY_MS = 5000;
const RESUME_ATTEMPT_TIMEOUT_MS = 8000; // a socket that neither opens nor fails
const OPEN_TIMEOUT_MS = 15000; // the first socket: past this, the server is unreachable
// Errors after which the server closes the socket and the session is over for good:
// resuming would fight the other tab (`replaced`) or come back against the admin's will.
// room_moved: the room's worker stopped (sfu serve --workers): join again, not resume.
const FINAL_ERRORS = new Set(['replaced', 'kicked', 'room_closed', 'room_moved']);
// ICE fallback (docs/protocol.md, "Restarting"): a connection not connected this long
// after it was made, or disconnected this long, is rebuilt through TURN.
const CONNECT_TIMEOUT_MS = 10000;
const DISCONNECTED_TIMEOUT_MS = 3000;
const MAX_RESTARTS_UNCONNECTED = 3; // then give up restarting until something connects
const REPLY_TYPES = new Set([
  'joined', 'answer', 'error', 'pong', 'left', 'restarted', 'unpublished', 'metadata_set',
]);
// Simulcast (docs/protocol.md, "Simulcast"): three RID layers, low to high. The server
// forwards each subscriber the highest one its bandwidth and requested size allow.
const SIMULCAST_ENCODINGS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];
const QUALITIES = new Set(['low', 'medium', 'high']);
const MAX_SIZE_PX = 16384; // the server refuses larger max_width / max_height
const KINDS = new Set(['audio', 'video']);
// Track sources (docs/protocol.md, "Track sources and screen share"): source -> kind.
const SOURCES = { camera: 'video', microphone: 'audio', screen: 'video', screen_audio: 'audio' };
const DEFAULT_SOURCES = { audio: 'microphone', video: 'camera' };
// setMuted() and the mute buttons are about the devices, never a screen share.
const DEVICE_SOURCES = new Set(['camera', 'microphone']);
const MAX_LABEL_CHARS = 64; // a track's name, a data topic
// Data channels (docs/protocol.md, "Data channels"), both on the publish pc.
const DATA_CHANNELS = { reliable: { ordered: true }, lossy: { ordered: false, maxRetransmits: 0 } };

// The protocol is non-trickle: the SDP we send must already hold every candidate.
function gatheringComplete(pc, timeoutMs = GATHER_TIMEOUT_MS) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => { if (pc.iceGatheringState === 'complete') done(); };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

// Mids whose m-line is rejected (port 0) or inactive: their track is gone even if listed.
function inactiveMids(sdp) {
  const mids = new Set();
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const mid = /\na=mid:(\S+)/.exec(section)?.[1];
    if (mid && (section.split(' ')[1] === '0' || /\na=inactive\b/.test(section))) mids.add(mid);
  }
  return mids;
}

// Whether an answer kept the m=application section (port 0 rejects it).
function acceptsData(sdp) {
  return sdp.split(/\r?\nm=/).slice(1).some((s) => s.startsWith('application ') && s.split(' ')[1] !== '0');
}

// A string of 1..max characters (code points, as the server counts them).
function isLabel(value, max = MAX_LABEL_CHARS) {
  return typeof value === 'string' && value.length > 0 && [...value].length <= max;
}

function isPlainObject(value) {
  return value !== null && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype;
}

// A participant as we keep it: what the server said, `metadata` always an object.
function participantEntry(p) {
  return { id: p.id, name: p.name, metadata: isPlainObject(p.metadata) ? p.metadata : {} };
}

// A promise with its settlers; its rejection is never "unhandled" (callers may not await).
function deferred() {
  const out = {};
  out.promise = new Promise((resolve, reject) => Object.assign(out, { resolve, reject }));
  out.promise.catch(() => {});
  return out;
}

function serverError(msg) {
  const err = new Error(msg.message || msg.code || 'server error');
  Object.assign(err, { code: msg.code, field: msg.field, ref: msg.ref });
  return err;
}

// Errors of our own making carry a `code` too, so callers can tell them from the server's.
function localError(code, message) {
  return Object.assign(new Error(message), { code });
}

// What _renegotiate() resolves to when it cannot offer now (a restart or resume will).
const LATER = Symbol('later');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

export class SfuClient extends EventTarget {
  // `relayFallback` (default true): when a connection fails, does not connect within
  // `connectTimeoutMs` or stays disconnected `disconnectedTimeoutMs`, restart both
  // connections relay-only (TURN) while keeping our place in the room.
  // `resumeTimeoutMs` (default 30 s; 0: never): how long to try to resume after the
  // WebSocket drops, keeping both peer connections, before giving up with `close`.
  constructor({
    url, room, name, token, natType, iceTransportPolicy, relayFallback = true,
    connectTimeoutMs = CONNECT_TIMEOUT_MS, disconnectedTimeoutMs = DISCONNECTED_TIMEOUT_MS,
    resumeTimeoutMs = RESUME_TIMEOUT_MS,
  } = {}) {
    super();
    const scheme = globalThis.location?.protocol === 'https:' ? 'wss' : 'ws';
    this.url = url || `${scheme}://${globalThis.location?.host}/ws`;
    Object.assign(this, {
      room, name, token, natType, iceTransportPolicy, relayFallback, connectTimeoutMs,
      disconnectedTimeoutMs,
      resumeTimeoutMs,
    });
    this.ws = null;
    this.pubPc = null;
    this.subPc = null;
    this.joined = null;        // the `joined` payload
    this.self = null;          // {id, name, metadata} from `joined`, kept up to date
    this.participants = {};    // the others: id -> {id, name, metadata}
    this.iceServers = [];
    this.layers = {};          // subscribed track id -> its latest `layer` message
    this.speakers = [];        // from `active_speakers`: loudest first
    // Every track in the room, ours too: id -> {id, participant, kind, source, name}.
    this.tracks = {};
    this.muted = {};           // track id -> bool, from `track_muted` (server-side mute)
    this.localTracks = [];     // ours, as the server published them: [{id, kind, source, name}]
    this._nextId = 1;
    this._pending = new Map(); // request id -> {resolve, reject}
    this._mids = new Map();    // subscribe mid -> {mid, track, participant, kind}
    this._offers = Promise.resolve(); // server offers are applied strictly in order
    this._pingTimer = null;
    this._published = null;    // {mediaStream, options} of publish(): the camera and microphone
    // What we publish, in the order we asked (a restart's offer must keep it: the server
    // maps tracks back by kind in order): {track, kind, source, name, stream, simulcast,
    // videoCodec, transceiver (on this.pubPc), pc (the one it was published on), info
    // (the server's description), ready (settles with info)}.
    this._pubs = [];
    this._negotiation = Promise.resolve(); // publish offers, strictly one at a time
    this._dirty = false;       // the publish pc carries something its last offer did not
    this._dataWanted = false;  // enableData() asked: every publish pc gets the channels
    this._dataReady = null;    // enableData()'s deferred
    this._dataPc = null;       // the publish pc whose answer took the channels
    this._channels = {};       // label -> our RTCDataChannel on this.pubPc
    this._dataQueue = { reliable: [], lossy: [] }; // envelopes waiting for an open channel
    this._epoch = 0;           // restarts so far: offers from before one are stale
    this._restarting = null;   // the restart under way, if any
    this._restartPending = false; // sent `restart`, `restarted` not yet here
    this._unconnectedRestarts = 0;
    this.restarts = 0;
    this._started = false;     // join() called: a client joins once
    this._closing = false;     // leave()/close() asked for the end: no resuming
    this._finished = false;    // `close` emitted
    this._finalError = null;   // the `error` that ended the session (FINAL_ERRORS)
    this._resuming = false;    // a resume is under way
    this._resumeToken = null;  // from the last `joined`: what `join.resume` presents
    this._restartLost = null;  // relayOnly of a restart the drop interrupted: redo it
    this._mutedKinds = {};     // kind -> what setMuted() asked last (or the server said)
    this._replacing = Promise.resolve(); // replaceTrack() calls, one at a time
  }

  // Rejects with `code: 'unreachable'` when the WebSocket cannot be opened, with the
  // server's error (its `code`) when the join is refused.
  async join() {
    if (this._started) throw new Error('join() already called');
    this._started = true;
    await this._open(OPEN_TIMEOUT_MS);
    this._startPing();
    let joined;
    try {
      joined = await this._request('join', this._joinFields());
    } catch (err) {
      this._closing = true; // a session that failed to join is of no further use
      this.ws?.close();
      throw err;
    }
    this.joined = joined;
    this._resumeToken = joined.resume_token ?? null;
    this.iceServers = joined.ice_servers || [];
    this.self = participantEntry(joined.participant);
    for (const p of joined.participants || []) this.participants[p.id] = participantEntry(p);
    for (const t of joined.tracks || []) this._addTrack(t);
    return joined;
  }

  _joinFields() {
    // natType: what a NAT test found (docs/protocol.md, `join`), for traversal statistics.
    return { room: this.room, name: this.name, ...(this.token ? { token: this.token } : {}),
             ...(this.natType ? { nat_type: this.natType } : {}) };
  }

  // A new WebSocket as `this.ws`; resolves once open, rejects (code 'unreachable') if it
  // fails or has not opened within `timeoutMs`. Events of a socket we have replaced or
  // dropped are ignored: only `this.ws` speaks for the session.
  _open(timeoutMs = 0) {
    const ws = (this.ws = new WebSocket(this.url));
    ws.addEventListener('message', (e) => { if (ws === this.ws) this._onMessage(e); });
    ws.addEventListener('close', (e) => { if (ws === this.ws) this._onClose(e); });
    return new Promise((resolve, reject) => {
      const fail = () => {
        clearTimeout(timer);
        reject(localError('unreachable', `cannot connect to ${this.url}`));
      };
      const timer = timeoutMs ? setTimeout(() => { ws.close(); fail(); }, timeoutMs) : null;
      ws.addEventListener('open', () => { clearTimeout(timer); resolve(); }, { once: true });
      ws.addEventListener('error', fail, { once: true });
    });
  }

  // Publish the camera and microphone: every track of `mediaStream`, audio as the
  // `microphone` source, video as `camera`. `videoCodec` (e.g. 'H264' or 'VP8') puts that
  // codec first in the offer; the SFU answers with the first codec it supports, and
  // subscribers receive that codec. Video goes out as three simulcast layers when the
  // server takes them (`joined.simulcast`) unless `simulcast: false`; audio is always one
  // stream. Resolves to {tracks: [the server's description of each]}.
  async publish(mediaStream, { videoCodec, simulcast } = {}) {
    if (!this.joined) throw new Error('publish() before join()');
    if (this._published) throw new Error('already published');
    if (videoCodec) codecsFirst(videoCodec); // throws now rather than mid-negotiation
    const options = { videoCodec, simulcast };
    this._published = { mediaStream, options }; // setMuted() and replaceTrack() act on it
    const pubs = mediaStream.getTracks().map((track) => {
      this._applyEnabled(track); // muted before publishing
      return this._addPub(track, { stream: mediaStream, videoCodec, simulcast });
    });
    this._renegotiate().catch(() => {}); // each publication's `ready` tells how it went
    return { type: 'answer', tracks: await Promise.all(pubs.map((p) => p.ready.promise)) };
  }

  // Publish one more track, e.g. a screen share: `source` ('camera', 'microphone',
  // 'screen' or 'screen_audio'; by default the track's kind says camera or microphone),
  // `name` (1..64 characters, shown by others), `simulcast`, `videoCodec` as publish(),
  // `stream` (the MediaStream subscribers see it in; a new one by default). The publish
  // pc is made if there is none and renegotiated. Resolves to the server's description
  // {id, participant, kind, muted, source, name}; rejects if the server refuses it.
  // A dropped socket delays it: the track is published once the session resumes.
  async publishTrack(track, { source, name, simulcast, videoCodec, stream } = {}) {
    if (!this.joined) throw new Error('publishTrack() before join()');
    if (!KINDS.has(track?.kind)) throw new TypeError('publishTrack() needs an audio or video MediaStreamTrack');
    source ??= DEFAULT_SOURCES[track.kind];
    if (SOURCES[source] !== track.kind) {
      const fits = Object.keys(SOURCES).filter((s) => SOURCES[s] === track.kind);
      throw new RangeError(`the source of a ${track.kind} track must be ${fits.join(' or ')}`);
    }
    if (name != null && !isLabel(name)) throw new RangeError(`name must be 1..${MAX_LABEL_CHARS} characters`);
    if (this._pubs.some((p) => p.track === track)) throw new Error('that track is published already');
    if (videoCodec && track.kind === 'video') codecsFirst(videoCodec);
    const pub = this._addPub(track, { source, name, stream, simulcast, videoCodec });
    this._renegotiate().catch(() => {});
    return pub.ready.promise;
  }

  // Stop publishing one of our tracks (by the server's id): the server unpublishes it
  // (`track_unpublished` to the others), and its m-line goes inactive in a new offer.
  // The MediaStreamTrack is the caller's, left running.
  async unpublishTrack(trackId) {
    const pub = this._pubs.find((p) => p.info?.id === trackId);
    if (!pub) throw new Error(`we publish no track ${trackId}`);
    try {
      await this._request('unpublish', { track: trackId });
    } catch (err) {
      if (err.code !== 'unknown_track') throw err; // gone already: drop it here too
    }
    this._removePub(pub);
    this._dropTrack(trackId);
    await this._renegotiate();
  }

  // Data channels on the publish pc (docs/protocol.md, "Data channels"): `reliable`
  // (ordered) and `lossy` (unordered, no retransmissions). Idempotent; resolves once the
  // server's answer has taken them (they open a moment later: sendData() waits). Works
  // without publishing media: the offer is then an m=application section alone.
  enableData() {
    if (!this.joined) return Promise.reject(new Error('enableData() before join()'));
    if (!this._dataReady) {
      this._dataReady = deferred();
      this._dataWanted = this._dirty = true;
      this._renegotiate().catch(() => {});
    }
    return this._dataReady.promise;
  }

  // Send `payload` (any JSON value) to everyone else in the room, or only to the
  // participant ids in `to`, with an optional `topic` (1..64 characters); over the
  // `reliable` channel unless `reliable: false`. Messages wait (in order) for the
  // channel to open, enableData() being called if it was not. Throws, code
  // 'data_too_large', when the envelope is over `joined.data_limits.max_message_bytes`.
  // The server's refusals come later as `error` events (`data_too_large`,
  // `data_rate_limited`, `bad_data`, `forbidden`).
  sendData(payload, { to, topic, reliable = true } = {}) {
    if (!this.joined) throw new Error('sendData() before join()');
    if (payload === undefined || typeof payload === 'function') throw new TypeError('payload must be a JSON value');
    const envelope = { payload };
    if (to != null) {
      if (!Array.isArray(to) || !to.length || !to.every((id) => typeof id === 'string' && id)) {
        throw new TypeError('`to` must be a non-empty list of participant ids');
      }
      envelope.to = to;
    }
    if (topic != null) {
      if (!isLabel(topic)) throw new RangeError(`topic must be 1..${MAX_LABEL_CHARS} characters`);
      envelope.topic = topic;
    }
    const text = JSON.stringify(envelope);
    const limit = this.joined.data_limits?.max_message_bytes;
    const bytes = new TextEncoder().encode(text).length;
    if (limit && bytes > limit) {
      throw localError('data_too_large', `the message is ${bytes} bytes as JSON, over the server's limit of ${limit}`);
    }
    if (!this._dataReady) this.enableData();
    else if (!this._dataWanted) throw localError('data_unavailable', 'the server did not take our data channels');
    const label = reliable ? 'reliable' : 'lossy';
    this._dataQueue[label].push(text);
    this._flushData(label);
  }

  // Set our metadata (a JSON object, replacing the last): everyone, us included, gets
  // `participant_updated`. Rejects with the server's `forbidden` or `bad_field`.
  async setMetadata(metadata) {
    if (!isPlainObject(metadata)) throw new TypeError('metadata must be a plain object');
    if (this.joined?.can_update_metadata === false) {
      throw localError('forbidden', 'the token does not allow updating metadata');
    }
    return this._request('set_metadata', { metadata });
  }

  // Mute or unmute our microphone ('audio') or camera ('video'), for everyone: the
  // server stops forwarding it (no packets reach anyone) and tells the room with
  // `track_muted`; the local track is disabled too. Remembered, so a mute asked before
  // publishing or while the socket is down is sent once it can be. A screen share is
  // not a camera: it is left alone.
  setMuted(kind, muted) {
    if (!KINDS.has(kind)) throw new TypeError("kind must be 'audio' or 'video'");
    this._mutedKinds[kind] = Boolean(muted);
    for (const track of this._published?.mediaStream.getTracks() ?? []) this._applyEnabled(track);
    if (!this._canSend()) return; // _syncMutes() sends it after the publish or the resume
    for (const t of this.localTracks) {
      if (t.kind === kind && DEVICE_SOURCES.has(t.source)) this._send({ type: 'mute', track: t.id, muted: Boolean(muted) });
    }
  }

  // Send `track` instead of our published track of its kind, e.g. another camera: the
  // sender's track is swapped in place (RTCRtpSender.replaceTrack), so there is no
  // renegotiation, the server sees the same track id and subscribers the same stream.
  // The published stream gets `track` in place of the old one (a restart publishes it);
  // the old track is returned, still live, for the caller to stop.
  replaceTrack(kind, track) {
    const run = this._replacing.then(() => this._replaceTrack(kind, track));
    this._replacing = run.catch(() => {});
    return run;
  }

  async _replaceTrack(kind, track) {
    if (track?.kind !== kind) throw new TypeError(`replaceTrack() needs a ${kind} track`);
    const stream = this._published?.mediaStream;
    const old = stream?.getTracks().find((t) => t.kind === kind);
    if (!old) throw new Error(`no published ${kind} track to replace`);
    this._applyEnabled(track);
    for (const transceiver of this.pubPc?.getTransceivers() ?? []) {
      if (transceiver.sender.track === old) await transceiver.sender.replaceTrack(track);
    }
    for (const pub of this._pubs) if (pub.track === old) pub.track = track; // for a restart
    stream.removeTrack(old);
    stream.addTrack(track);
    return old;
  }

  _applyEnabled(track) {
    if (this._mutedKinds[track.kind] != null) track.enabled = !this._mutedKinds[track.kind];
  }

  // Tell the server what was asked for each of our tracks that it may not know: after
  // a publish, and after a resume (a mute sent while the socket was down never left).
  _syncMutes() {
    if (!this._canSend()) return;
    for (const t of this.localTracks) {
      if (!DEVICE_SOURCES.has(t.source)) continue;
      const want = this._mutedKinds[t.kind];
      if (want == null || Boolean(this.muted[t.id]) === want) continue;
      this._send({ type: 'mute', track: t.id, muted: want });
    }
  }

  // Subscription changes come back as a new server `offer`, so there is nothing to await.
  subscribe(trackIds) { this._send({ type: 'subscribe', tracks: trackIds }); }
  unsubscribe(trackIds) { this._send({ type: 'unsubscribe', tracks: trackIds }); }

  // What this client needs of a subscribed track: `maxWidth`/`maxHeight` (device px,
  // 0 = no limit), `quality` ('low' | 'medium' | 'high'), `paused`. Only the fields given
  // are sent; the server keeps the others. Nothing comes back but `layer` events when
  // the forwarded layer changes (an `error` if the server refuses it).
  setSubscription(trackId, { maxWidth, maxHeight, quality, paused } = {}) {
    const fields = {};
    for (const [key, value] of [['max_width', maxWidth], ['max_height', maxHeight]]) {
      if (value == null) continue;
      if (!Number.isInteger(value) || value < 0 || value > MAX_SIZE_PX) {
        throw new RangeError(`${key} must be an integer 0..${MAX_SIZE_PX}`);
      }
      fields[key] = value;
    }
    if (quality != null) {
      if (!QUALITIES.has(quality)) throw new RangeError('quality must be low, medium or high');
      fields.quality = quality;
    }
    if (paused != null) fields.paused = Boolean(paused);
    if (!Object.keys(fields).length) throw new Error('setSubscription() needs at least one field');
    this._send({ type: 'set_subscription', track: trackId, ...fields });
  }

  ping() { return this._request('ping'); }

  // Replace both connections, keeping our tracks, subscriptions and place in the room
  // (the server carries them over; nobody else sees a leave or a join). With
  // `relayOnly` the new connections use TURN only. Called by the fallback; callable too.
  restart({ relayOnly = true } = {}) {
    if (!this._restarting) {
      this._restarting = this._restart(relayOnly).finally(() => { this._restarting = null; });
    }
    return this._restarting;
  }

  async _restart(relayOnly) {
    try {
      return await this._restartOnce(relayOnly);
    } catch (err) {
      // The socket dropped mid-restart: our connections are gone, so once resumed we
      // must restart again (the server takes a second `restart` as it took the first).
      if (this._resuming) this._restartLost = relayOnly;
      throw err;
    }
  }

  async _restartOnce(relayOnly) {
    if (relayOnly) this.iceTransportPolicy = 'relay';
    this._epoch += 1;
    const old = [this.pubPc, this.subPc];
    this._forgetPubPc();
    this.subPc = null;
    for (const pc of old) pc?.close();
    for (const t of this._mids.values()) {
      this._emit('trackended', { participant: t.participant, trackId: t.track, mid: t.mid });
    }
    this._mids = new Map();
    this._unconnectedRestarts += 1;
    this._restartPending = true;
    let reply;
    try {
      reply = await this._request('restart', { relay_only: relayOnly });
    } finally {
      this._restartPending = false;
    }
    this.iceServers = reply.ice_servers || this.iceServers;
    this.restarts += 1;
    // Everything again on a new publish pc: our tracks in their order, the data channels.
    if (this._pubs.length || this._dataWanted) {
      this._dirty = true;
      // Put off: the socket dropped meanwhile. _restart() has us restart again on resuming.
      if (await this._renegotiate() === LATER) throw localError('socket_closed', 'socket closed during the restart');
    }
    this._emit('restarted', { relayOnly });
    return reply;
  }

  async leave() {
    this._closing = true;
    if (this.ws?.readyState === WebSocket.OPEN) {
      const timeout = new Promise((resolve) => setTimeout(resolve, LEAVE_TIMEOUT_MS));
      await Promise.race([this._request('leave').catch(() => {}), timeout]);
    }
    this._teardown();
    // Mid-resume no socket of ours will report a close: say it here.
    if (this._resuming) this._finish({ code: 1000, reason: 'left', wasClean: true });
  }

  // End the session at once, without `leave` (the server keeps us reconnect_grace_s).
  close() {
    this._closing = true;
    this._teardown();
    this._finish({ code: 1000, reason: 'closed', wasClean: true });
  }

  async inboundStats() {
    const out = {};
    const entry = (pid) => (out[pid] ??= {
      name: this.participants[pid]?.name ?? '',
      video: { framesDecoded: 0, framesPerSecond: 0, frameWidth: 0, frameHeight: 0, bytesReceived: 0 },
      audio: { packetsReceived: 0, totalSamplesReceived: 0, bytesReceived: 0 },
    });
    for (const info of this._mids.values()) entry(info.participant);
    for (const [info, s] of await this._inboundRtp()) {
      const e = entry(info.participant);
      const kind = s.kind ?? s.mediaType;
      if (kind === 'video') {
        e.video.framesDecoded += s.framesDecoded || 0;
        e.video.bytesReceived += s.bytesReceived || 0;
        e.video.framesPerSecond = Math.max(e.video.framesPerSecond, s.framesPerSecond || 0);
        e.video.frameWidth = Math.max(e.video.frameWidth, s.frameWidth || 0);
        e.video.frameHeight = Math.max(e.video.frameHeight, s.frameHeight || 0);
      } else if (kind === 'audio') {
        e.audio.packetsReceived += s.packetsReceived || 0;
        e.audio.totalSamplesReceived += s.totalSamplesReceived || 0;
        e.audio.bytesReceived += s.bytesReceived || 0;
      }
    }
    return out;
  }

  // Cumulative receive counters per participant (video + audio), for the caller to turn
  // into rates: id -> {bytesReceived, packetsReceived, packetsLost, frameWidth,
  // frameHeight, framesPerSecond}; the video fields are null until a frame has arrived.
  async statsByParticipant() {
    const out = {};
    for (const [info, s] of await this._inboundRtp()) {
      const e = (out[info.participant] ??= {
        bytesReceived: 0, packetsReceived: 0, packetsLost: 0,
        frameWidth: null, frameHeight: null, framesPerSecond: null,
      });
      e.bytesReceived += s.bytesReceived || 0;
      e.packetsReceived += s.packetsReceived || 0;
      e.packetsLost += s.packetsLost || 0;
      // With several video tracks, report the largest one.
      if ((s.kind ?? s.mediaType) === 'video' && s.frameWidth
          && s.frameWidth * s.frameHeight >= (e.frameWidth ?? 0) * (e.frameHeight ?? 0)) {
        Object.assign(e, { frameWidth: s.frameWidth, frameHeight: s.frameHeight,
          framesPerSecond: s.framesPerSecond ?? null });
      }
    }
    return out;
  }

  // The same counters per received track: track id -> {participant, kind, source,
  // bytesReceived, packetsReceived, packetsLost, frameWidth, frameHeight, framesPerSecond}
  // (the video fields null for audio, and until a frame has arrived).
  async statsByTrack() {
    const out = {};
    for (const [info, s] of await this._inboundRtp()) {
      out[info.track] = {
        participant: info.participant, kind: info.kind,
        source: this.tracks[info.track]?.source ?? DEFAULT_SOURCES[info.kind],
        bytesReceived: s.bytesReceived || 0, packetsReceived: s.packetsReceived || 0,
        packetsLost: s.packetsLost || 0, frameWidth: s.frameWidth || null,
        frameHeight: s.frameHeight || null, framesPerSecond: s.framesPerSecond ?? null,
      };
    }
    return out;
  }

  // --- internals ---

  // --- the publish pc: our tracks and data channels, offered one change at a time ---

  _addPub(track, { source, name, stream, simulcast, videoCodec }) {
    const pub = {
      track, kind: track.kind, source: source ?? DEFAULT_SOURCES[track.kind], name: name ?? '',
      stream: stream ?? new MediaStream([track]), simulcast, videoCodec,
      transceiver: null, pc: null, info: null, ready: deferred(),
    };
    this._pubs.push(pub);
    this._dirty = true;
    return pub;
  }

  // Unpublished: stop sending it, and let the next offer say so (the m-line goes inactive).
  _removePub(pub) {
    this._pubs = this._pubs.filter((p) => p !== pub);
    const sender = pub.transceiver?.sender;
    if (sender && this.pubPc && this.pubPc.signalingState !== 'closed') {
      this.pubPc.removeTrack(sender);
      this._dirty = true;
    }
    pub.transceiver = null;
    this._updateLocalTracks();
  }

  // Refused, or the session is over: whoever awaits it hears why.
  _dropPub(pub, err) {
    this._pubs = this._pubs.filter((p) => p !== pub);
    pub.ready.reject(err);
    // Never agreed on, its m-line vanishes; else the next offer rejects it.
    try { pub.transceiver?.stop(); } catch { /* the pc is closed */ }
    pub.transceiver = null;
    this._updateLocalTracks();
  }

  _updateLocalTracks() {
    this.localTracks = this._pubs.filter((p) => p.info)
      .map((p) => ({ id: p.info.id, kind: p.kind, source: p.source, name: p.name }));
  }

  // The publish pc is gone (restart, or refused before anything was agreed): the next
  // one gets every track and channel afresh.
  _forgetPubPc() {
    this.pubPc = null;
    for (const pub of this._pubs) pub.transceiver = null;
    this._channels = {};
  }

  // This.pubPc, made if need be, with a transceiver for each track and the channels.
  _ensurePubPc() {
    let pc = this.pubPc;
    if (!pc) {
      pc = this.pubPc = this._newPc();
      // Should the server open a channel of its own, we hear it too.
      pc.addEventListener('datachannel', (e) => this._listen(e.channel));
    }
    for (const pub of this._pubs) pub.transceiver ??= this._addTransceiver(pc, pub);
    if (this._dataWanted && !this._channels.reliable) {
      for (const [label, init] of Object.entries(DATA_CHANNELS)) {
        const channel = (this._channels[label] = pc.createDataChannel(label, init));
        this._listen(channel);
        channel.addEventListener('open', () => this._flushData(label));
      }
    }
    return pc;
  }

  _addTransceiver(pc, pub) {
    const init = { direction: 'sendonly', streams: [pub.stream] };
    // Chromium and Firefox both take sendEncodings here, in this (low to high) order.
    // Should the answer refuse simulcast, the browser sends the first encoding alone.
    if (pub.kind === 'video' && pub.simulcast !== false && this.joined?.simulcast === true) {
      init.sendEncodings = SIMULCAST_ENCODINGS.map((e) => ({ ...e })); // copies: one set per pc
    }
    const transceiver = pc.addTransceiver(pub.track, init);
    if (pub.videoCodec && pub.kind === 'video') transceiver.setCodecPreferences(codecsFirst(pub.videoCodec));
    return transceiver;
  }

  // Offer what the publish pc now carries, after any offer under way. Resolves to the
  // `answer`, null when there was nothing new, or LATER when it cannot be sent now.
  _renegotiate() {
    const run = this._negotiation.then(() => this._negotiateOnce());
    this._negotiation = run.catch(() => {});
    return run;
  }

  async _negotiateOnce() {
    if (!this._dirty) return null;
    // A restart sends its own offer once `restarted` is here, a resume once rejoined.
    if (this._restartPending || !this._canSend()) return LATER;
    this._dirty = false;
    const pc = this._ensurePubPc();
    const offered = this._pubs.filter((p) => p.pc !== pc); // not yet published on this pc
    const dataOffered = this._dataWanted && this._dataPc !== pc;
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gatheringComplete(pc);
      if (pc !== this.pubPc) return LATER; // replaced by a restart meanwhile
      // Each m-line's source, by mid; one we give none of is the kind's default.
      const tracks = this._pubs.filter((p) => p.transceiver?.mid != null).map((p) => ({
        mid: p.transceiver.mid, source: p.source, ...(p.name ? { name: p.name } : {}),
      }));
      // The server takes 1..n entries: an offer of data channels alone has none.
      const reply = await this._request('publish', {
        sdp: pc.localDescription.sdp, ...(tracks.length ? { tracks } : {}),
      });
      if (pc !== this.pubPc) return LATER;
      await pc.setRemoteDescription({ type: 'answer', sdp: reply.sdp });
      this._adoptAnswer(pc, reply, offered, dataOffered);
      return reply;
    } catch (err) {
      await this._negotiationFailed(pc, err, offered, dataOffered);
      throw err;
    }
  }

  // The answer's `tracks` are those this offer newly published (all of them after a
  // restart, with their old ids): each goes to the first offered track of its kind (and
  // source), in m-line order, as the server matched them.
  _adoptAnswer(pc, reply, offered, dataOffered) {
    const waiting = [...offered];
    for (const t of reply.tracks || []) {
      this._addTrack(t);
      const i = waiting.findIndex((p) => p.kind === t.kind && (t.source == null || t.source === p.source));
      if (i < 0) continue;
      const [pub] = waiting.splice(i, 1);
      Object.assign(pub, { pc, info: { ...this.tracks[t.id], muted: Boolean(t.muted) } });
      pub.ready.resolve(pub.info);
    }
    for (const pub of waiting) {
      this._dropPub(pub, localError('not_published', `the server did not publish our ${pub.source} track`));
    }
    if (dataOffered) {
      if (acceptsData(reply.sdp)) {
        this._dataPc = pc;
        this._dataReady?.resolve();
      } else {
        this._dataRefused(localError('data_refused', 'the server did not take our data channels'));
      }
    }
    this._updateLocalTracks();
    this._syncMutes();
  }

  // A refused offer takes back what it offered for the first time; one the socket or a
  // restart cut short stays wanted, to be offered again.
  async _negotiationFailed(pc, err, offered, dataOffered) {
    if (pc !== this.pubPc) return;
    const retry = this._restartPending || !this._canSend() || err.code === 'socket_closed';
    if (pc.signalingState === 'have-local-offer') {
      await pc.setLocalDescription({ type: 'rollback' }).catch(() => {});
    }
    if (retry) {
      this._dirty = true;
      return;
    }
    for (const pub of offered) if (!pub.info) this._dropPub(pub, err);
    if (dataOffered) this._dataRefused(err);
    if (!pc.currentRemoteDescription) { // nothing was ever agreed on it: do not keep it
      this._forgetPubPc();
      pc.close();
    }
  }

  _dataRefused(err) {
    this._dataWanted = false;
    for (const channel of Object.values(this._channels)) channel.close();
    this._channels = {};
    this._dataQueue = { reliable: [], lossy: [] };
    this._dataReady?.reject(err); // stays rejected: enableData() answers the same from now on
  }

  _flushData(label) {
    const channel = this._channels[label];
    const queue = this._dataQueue[label];
    while (queue.length && channel?.readyState === 'open') channel.send(queue.shift());
  }

  _listen(channel) {
    const reliable = channel.label !== 'lossy';
    channel.addEventListener('message', (event) => {
      if (typeof event.data !== 'string') return; // the server sends text frames only
      let msg;
      try { msg = JSON.parse(event.data); } catch { return; }
      if (!isPlainObject(msg) || !('payload' in msg)) return;
      this._emit('data', { from: msg.from ?? null, payload: msg.payload, topic: msg.topic ?? null, reliable });
    });
  }

  // [mid info, inbound-rtp stats] for each received track we know the sender of.
  async _inboundRtp() {
    if (!this.subPc) return [];
    // Older browsers omit `mid` on inbound-rtp; fall back to the receiver's track id.
    const midByTrackId = new Map(this.subPc.getTransceivers()
      .filter((t) => t.mid).map((t) => [t.receiver.track.id, t.mid]));
    const out = [];
    (await this.subPc.getStats()).forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      const info = this._mids.get(s.mid ?? midByTrackId.get(s.trackIdentifier));
      if (info) out.push([info, s]);
    });
    return out;
  }

  _newPc() {
    const config = { iceServers: this.iceServers };
    if (this.iceTransportPolicy) config.iceTransportPolicy = this.iceTransportPolicy;
    const pc = new RTCPeerConnection(config);
    this._watch(pc);
    return pc;
  }

  // The fallback's eyes: a connection that fails, is slow to connect, or stays
  // disconnected makes us restart relay-only (a few times at most while nothing
  // connects; after that a failure is only reported).
  _watch(pc) {
    let disconnected = null;
    const connecting = setTimeout(() => this._trouble(pc, 'timeout'), this.connectTimeoutMs);
    pc.addEventListener('connectionstatechange', () => {
      const state = pc.connectionState;
      if (state !== 'disconnected') clearTimeout(disconnected);
      if (state === 'connected') {
        clearTimeout(connecting);
        this._unconnectedRestarts = 0;
      }
      else if (state === 'failed') this._trouble(pc, 'failed');
      else if (state === 'disconnected') {
        disconnected = setTimeout(() => this._trouble(pc, 'disconnected'), this.disconnectedTimeoutMs);
      } else if (state === 'closed') clearTimeout(connecting);
    });
  }

  _trouble(pc, reason) {
    if (pc !== this.pubPc && pc !== this.subPc) return; // replaced or closed already
    if (reason === 'timeout' && pc.connectionState === 'connected') return;
    const which = pc === this.pubPc ? 'publish' : 'subscribe';
    this._emit('connectiontrouble', { pc: which, reason });
    if (!this.relayFallback || !this._canSend()) return; // resuming: _resumed() looks again
    if (this._unconnectedRestarts >= MAX_RESTARTS_UNCONNECTED) return;
    this.restart({ relayOnly: true }).catch((err) => {
      if (this._restartLost != null) return; // the socket dropped: redone once resumed
      this._emit('error', { type: 'error', code: 'restart_failed', message: String(err), local: true });
    });
  }

  _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  _canSend() {
    return Boolean(this.joined) && !this._resuming && this.ws?.readyState === WebSocket.OPEN;
  }

  _send(msg) {
    const closed = () => localError('socket_closed', 'socket is not open');
    if (this.ws?.readyState !== WebSocket.OPEN) throw closed();
    // A resume attempt's socket is not joined yet: anything but the join (and a leave)
    // would be refused, and the caller would think it sent.
    if (this._resuming && msg.type !== 'join' && msg.type !== 'leave') throw closed();
    this.ws.send(JSON.stringify(msg));
  }

  _request(type, fields = {}) {
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject });
      try {
        this._send({ ...fields, type, id });
      } catch (err) {
        this._pending.delete(id);
        reject(err);
      }
    });
  }

  _onMessage(event) {
    if (typeof event.data !== 'string') return; // we only speak JSON, so never msgpack
    let msg;
    try { msg = JSON.parse(event.data); } catch { return; }
    if (msg.type === 'restarted') this._restartPending = false; // offers from here are new
    const pending = REPLY_TYPES.has(msg.type) && this._pending.get(msg.id);
    if (pending) {
      this._pending.delete(msg.id);
      if (msg.type === 'error') pending.reject(serverError(msg));
      else pending.resolve(msg);
      return;
    }
    switch (msg.type) {
      case 'offer': {
        if (this._restartPending) return; // for the connections the restart replaces
        const epoch = this._epoch;
        this._offers = this._offers.then(() => this._applyOffer(msg, epoch)).catch((err) => {
          // Torn down mid-negotiation, or the socket dropped: a resume sends the offer again.
          if (this._resuming || this.ws?.readyState !== WebSocket.OPEN) return;
          this._emit('error', {
            type: 'error', code: 'negotiation_failed', message: String(err), ref: 'offer', local: true,
          });
        });
        return;
      }
      case 'connection_failed': { // the server saw it fail first
        const pc = msg.pc === 'publish' ? this.pubPc : this.subPc;
        if (pc) this._trouble(pc, 'failed');
        break;
      }
      case 'participant_joined':
        this.participants[msg.participant.id] = participantEntry(msg.participant);
        break;
      case 'participant_updated': // anyone's name or metadata, ours included
        this._updateParticipant(msg.participant);
        break;
      case 'participant_left':
        delete this.participants[msg.participant];
        break;
      case 'layer':
        this.layers[msg.track] = msg;
        break;
      case 'active_speakers': // [{participant, level}], loudest first; [] when nobody
        this.speakers = msg.speakers;
        break;
      case 'track_published':
        this._addTrack(msg.track);
        break;
      case 'track_unpublished': {
        // Ours, unpublished by someone else (the backend): stop sending it too.
        const pub = this._pubs.find((p) => p.info?.id === msg.track);
        if (pub) {
          this._removePub(pub);
          this._renegotiate().catch(() => {});
        }
        this._dropTrack(msg.track);
        break;
      }
      case 'track_muted':
        this._onMuted(msg);
        return;
      // An `error` here answers nothing we wait for, e.g. a refused `set_subscription`
      // (`ref` says which): an event, not a failure. Some end the session: the server
      // closes the socket next, and that close must not be resumed.
      case 'error':
        if (this._resuming) return; // to a resume attempt (say, too many connections): we retry
        if (FINAL_ERRORS.has(msg.code)) {
          this._closing = true;
          this._finalError = msg;
        }
        break;
      case 'subscription_failed':
        break;
      default:
        return; // replies nobody waits for (e.g. a late `pong`) and unknown types
    }
    this._emit(msg.type, msg);
  }

  _addTrack(t) {
    if (!t?.id) return;
    this.tracks[t.id] = {
      id: t.id, participant: t.participant ?? this.self?.id, kind: t.kind,
      source: t.source ?? DEFAULT_SOURCES[t.kind] ?? null, name: t.name ?? '',
    };
    if (typeof t.muted === 'boolean') this.muted[t.id] = t.muted; // should the server say
  }

  _updateParticipant(p) {
    if (!p?.id) return;
    if (p.id === this.self?.id) this.self = participantEntry({ ...this.self, ...p });
    else this.participants[p.id] = participantEntry({ ...this.participants[p.id], ...p });
  }

  _dropTrack(id) {
    delete this.tracks[id];
    delete this.layers[id];
    delete this.muted[id];
  }

  // Anyone's track, ours included: the server echoes our own `mute` back to us too.
  _onMuted(msg) {
    this.muted[msg.track] = msg.muted;
    const track = this.tracks[msg.track];
    const own = this.localTracks.find((t) => t.id === msg.track);
    // Muted by someone else (the admin API): our button and local track follow.
    if (own && DEVICE_SOURCES.has(own.source) && this._mutedKinds[own.kind] !== msg.muted) {
      this._mutedKinds[own.kind] = msg.muted;
      for (const t of this._published?.mediaStream.getTracks() ?? []) this._applyEnabled(t);
    }
    this._emit('track_muted', {
      type: 'track_muted', track: msg.track, muted: msg.muted,
      participant: own ? this.self?.id : track?.participant ?? null, kind: own?.kind ?? track?.kind ?? null,
      source: own?.source ?? track?.source ?? null,
    });
  }

  async _applyOffer(msg, epoch) {
    if (epoch !== this._epoch) return; // a restart came in between
    if (!this.subPc) {
      this.subPc = this._newPc();
      this.subPc.addEventListener('track', (e) => this._onTrack(e));
    }
    const pc = this.subPc;
    // Update the map before setRemoteDescription: `track` events fire while it runs.
    const dead = inactiveMids(msg.sdp);
    const next = new Map();
    for (const t of msg.tracks || []) if (!dead.has(t.mid)) next.set(t.mid, t);
    const ended = [...this._mids.values()].filter((t) => !next.has(t.mid));
    this._mids = next;
    await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    for (const t of ended) {
      delete this.layers[t.track]; // no longer forwarded to us; a restart's tracks keep theirs
      this._emit('trackended', { participant: t.participant, trackId: t.track, mid: t.mid });
    }
    await gatheringComplete(pc);
    if (epoch !== this._epoch) return;
    this._send({ type: 'answer', sdp: pc.localDescription.sdp });
  }

  _onTrack(event) {
    const mid = event.transceiver?.mid;
    const info = this._mids.get(mid);
    if (!info) {
      console.warn('sfu: track on unknown mid', mid);
      return;
    }
    const known = this.tracks[info.track];
    this._emit('track', {
      participant: info.participant, trackId: info.track, kind: info.kind, track: event.track, mid,
      source: known?.source ?? info.source ?? DEFAULT_SOURCES[info.kind], name: known?.name ?? info.name ?? '',
    });
  }

  _startPing() {
    clearInterval(this._pingTimer);
    this._pingTimer = setInterval(() => this._pingOrDrop(), PING_INTERVAL_MS);
  }

  _pingOrDrop() {
    const ws = this.ws;
    const timer = setTimeout(() => this._drop(ws, 'no pong from the server'), PONG_TIMEOUT_MS);
    this.ping().catch(() => {}).finally(() => clearTimeout(timer));
  }

  // Give up on a socket that stays open but silent: its own close event may take
  // minutes (a dead TCP connection), so we stop listening to it and act on it now.
  _drop(ws, reason) {
    if (ws !== this.ws || ws.readyState !== WebSocket.OPEN) return;
    this.ws = null;
    ws.close();
    this._onClose({ code: 4000, reason, wasClean: false });
  }

  _rejectPending() {
    for (const { reject } of this._pending.values()) reject(localError('socket_closed', 'socket closed'));
    this._pending.clear();
  }

  // The socket closed. Unasked for, after a join: resume (the server keeps us for
  // reconnect_grace_s, peer connections and all), else it is over.
  _onClose(event) {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    this._rejectPending();
    if (this._finished || this._resuming) return; // over already; or one attempt's socket
    if (this._closing || !this.joined || !this._resumeToken || !(this.resumeTimeoutMs > 0)) {
      this._finish(event);
      return;
    }
    this._resume(event);
  }

  async _resume(event) {
    this._resuming = true;
    this._emit('reconnecting', { code: event.code, reason: event.reason });
    const deadline = Date.now() + this.resumeTimeoutMs;
    let delay = RESUME_FIRST_DELAY_MS;
    let outcome = 'timeout';
    while (!this._closing && Date.now() + delay < deadline) {
      await sleep(delay);
      delay = Math.min(delay * 2, RESUME_MAX_DELAY_MS);
      if (this._closing) break;
      outcome = await this._tryResume(Math.max(1, Math.min(RESUME_ATTEMPT_TIMEOUT_MS, deadline - Date.now())));
      if (outcome !== 'retry') break;
    }
    this._resuming = false;
    if (this._finished) return; // leave() or close() while we tried
    if (outcome === 'resumed' && !this._closing) {
      this._resumed();
      return;
    }
    this._finish({
      code: event.code, reason: event.reason, wasClean: false, resumeFailed: true, outcome,
    });
  }

  // One attempt: 'resumed', 'retry' (no socket, or it closed), 'expired' (the server no
  // longer knew us: grace over) or 'refused' (the join was refused, e.g. a stale token).
  async _tryResume(timeoutMs) {
    try {
      await this._open(timeoutMs);
    } catch {
      return 'retry';
    }
    const ws = this.ws;
    const timer = setTimeout(() => ws.close(), timeoutMs); // a `joined` that never comes
    try {
      const joined = await this._request('join', { ...this._joinFields(), resume: this._resumeToken });
      if (this._closing) return 'closed'; // leave() or close() meanwhile
      if (!joined.resumed) {
        // A fresh participant: the old one is gone. Leave at once rather than haunt the
        // room for reconnect_grace_s.
        this._send({ type: 'leave' });
        return 'expired';
      }
      this._adoptResumed(joined);
      return 'resumed';
    } catch (err) {
      return err.code && err.code !== 'socket_closed' ? 'refused' : 'retry';
    } finally {
      clearTimeout(timer);
    }
  }

  _adoptResumed(joined) {
    this.joined = joined;
    // Who speaks now follows `joined` when anyone does: what we knew may be stale.
    if (this.speakers.length) {
      this.speakers = [];
      this._emit('active_speakers', { type: 'active_speakers', speakers: [] });
    }
    const before = this.self;
    this.self = participantEntry(joined.participant);
    if (JSON.stringify(before) !== JSON.stringify(this.self)) {
      this._emit('participant_updated', { type: 'participant_updated', participant: this.self });
    }
    this._resumeToken = joined.resume_token ?? null;
    this.iceServers = joined.ice_servers || this.iceServers;
    this._reconcile(joined);
  }

  // What happened while we were away reached us only as `joined`: tell our listeners
  // the differences as the events they missed.
  _reconcile(joined) {
    const participants = new Map((joined.participants || []).map((p) => [p.id, p]));
    for (const id of Object.keys(this.participants)) {
      if (participants.has(id)) continue;
      delete this.participants[id];
      this._emit('participant_left', { type: 'participant_left', participant: id });
    }
    for (const p of participants.values()) {
      const known = this.participants[p.id];
      const participant = (this.participants[p.id] = participantEntry(p));
      if (!known) this._emit('participant_joined', { type: 'participant_joined', participant });
      else if (JSON.stringify(known) !== JSON.stringify(participant)) {
        this._emit('participant_updated', { type: 'participant_updated', participant });
      }
    }
    const tracks = new Map((joined.tracks || []).map((t) => [t.id, t]));
    for (const id of Object.keys(this.tracks)) {
      if (tracks.has(id)) continue;
      this._dropTrack(id);
      this._emit('track_unpublished', { type: 'track_unpublished', track: id });
    }
    for (const t of tracks.values()) {
      const known = this.tracks[t.id];
      this._addTrack(t);
      if (!known) this._emit('track_published', { type: 'track_published', track: t });
    }
  }

  _resumed() {
    this._startPing();
    this._emit('reconnected', { joined: this.joined });
    this._syncMutes();
    if (this._dirty) this._renegotiate().catch(() => {}); // an offer the drop put off
    if (this._restartLost != null) {
      const relayOnly = this._restartLost;
      this._restartLost = null;
      this.restart({ relayOnly }).catch((err) => {
        this._emit('error', { type: 'error', code: 'restart_failed', message: String(err), local: true });
      });
      return;
    }
    // A connection that failed while the socket was down was not restarted: now it can be.
    for (const pc of [this.pubPc, this.subPc]) {
      if (pc?.connectionState === 'failed') this._trouble(pc, 'failed');
    }
  }

  _finish(event) {
    if (this._finished) return;
    this._finished = true;
    this._teardown();
    const over = localError('closed', 'the session is over');
    for (const pub of this._pubs) if (!pub.info) pub.ready.reject(over);
    this._dataReady?.reject(over); // a no-op once it has resolved
    this._emit('close', {
      code: event.code, reason: event.reason, wasClean: event.wasClean,
      left: this._closing && !this._finalError, // leave() or close() asked for it
      resumeFailed: Boolean(event.resumeFailed),
      ...(this._finalError ? { error: { code: this._finalError.code, message: this._finalError.message } } : {}),
    });
  }

  // Without its socket the session is over (once resuming is given up), so are the pcs.
  _teardown() {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    this.pubPc?.close();
    this.subPc?.close();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close();
  }
}

// The browser's video codecs with `name` first, for setCodecPreferences().
function codecsFirst(name) {
  const wanted = `video/${name}`.toLowerCase();
  const codecs = RTCRtpSender.getCapabilities('video').codecs;
  const first = codecs.filter((c) => c.mimeType.toLowerCase() === wanted);
  if (!first.length) throw new Error(`this browser cannot send ${name}`);
  return [...first, ...codecs.filter((c) => !first.includes(c))];
}
