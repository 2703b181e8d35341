// Browser client for the sfu control protocol (docs/protocol.md).
// One WebSocket carries JSON requests; media goes over two RTCPeerConnections:
// a send-only "publish" pc we offer, and a receive-only "subscribe" pc the server offers.

const GATHER_TIMEOUT_MS = 3000; // never hang on a slow or broken STUN/TURN server
const LEAVE_TIMEOUT_MS = 2000;
const PING_INTERVAL_MS = 20000; // keeps idle proxies from dropping the socket
// ICE fallback (docs/protocol.md, "Restarting"): a connection not connected this long
// after it was made, or disconnected this long, is rebuilt through TURN.
const CONNECT_TIMEOUT_MS = 10000;
const DISCONNECTED_TIMEOUT_MS = 3000;
const MAX_RESTARTS_UNCONNECTED = 3; // then give up restarting until something connects
const REPLY_TYPES = new Set(['joined', 'answer', 'error', 'pong', 'left', 'restarted']);
// Simulcast (docs/protocol.md, "Simulcast"): three RID layers, low to high. The server
// forwards each subscriber the highest one its bandwidth and requested size allow.
const SIMULCAST_ENCODINGS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];
const QUALITIES = new Set(['low', 'medium', 'high']);
const MAX_SIZE_PX = 16384; // the server refuses larger max_width / max_height

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

function serverError(msg) {
  const err = new Error(msg.message || msg.code || 'server error');
  Object.assign(err, { code: msg.code, field: msg.field, ref: msg.ref });
  return err;
}

export class SfuClient extends EventTarget {
  // `relayFallback` (default true): when a connection fails, does not connect within
  // `connectTimeoutMs` or stays disconnected `disconnectedTimeoutMs`, restart both
  // connections relay-only (TURN) while keeping our place in the room.
  constructor({
    url, room, name, token, iceTransportPolicy, relayFallback = true,
    connectTimeoutMs = CONNECT_TIMEOUT_MS, disconnectedTimeoutMs = DISCONNECTED_TIMEOUT_MS,
  } = {}) {
    super();
    const scheme = globalThis.location?.protocol === 'https:' ? 'wss' : 'ws';
    this.url = url || `${scheme}://${globalThis.location?.host}/ws`;
    Object.assign(this, {
      room, name, token, iceTransportPolicy, relayFallback, connectTimeoutMs, disconnectedTimeoutMs,
    });
    this.ws = null;
    this.pubPc = null;
    this.subPc = null;
    this.joined = null;        // the `joined` payload
    this.self = null;          // {id, name} from `joined`
    this.participants = {};    // the others: id -> {id, name}
    this.iceServers = [];
    this.layers = {};          // subscribed track id -> its latest `layer` message
    this._nextId = 1;
    this._pending = new Map(); // request id -> {resolve, reject}
    this._mids = new Map();    // subscribe mid -> {mid, track, participant, kind}
    this._offers = Promise.resolve(); // server offers are applied strictly in order
    this._pingTimer = null;
    this._published = null;    // {mediaStream, options}: what a restart publishes again
    this._epoch = 0;           // restarts so far: offers from before one are stale
    this._restarting = null;   // the restart under way, if any
    this._restartPending = false; // sent `restart`, `restarted` not yet here
    this._unconnectedRestarts = 0;
    this.restarts = 0;
  }

  async join() {
    if (this.ws) throw new Error('join() already called');
    const ws = (this.ws = new WebSocket(this.url));
    ws.addEventListener('message', (e) => this._onMessage(e));
    ws.addEventListener('close', (e) => this._onClose(e));
    await new Promise((resolve, reject) => {
      ws.addEventListener('open', resolve, { once: true });
      const fail = () => reject(new Error(`cannot connect to ${this.url}`));
      ws.addEventListener('error', fail, { once: true });
    });
    this._pingTimer = setInterval(() => this.ping().catch(() => {}), PING_INTERVAL_MS);
    let joined;
    try {
      joined = await this._request('join', {
        room: this.room, name: this.name, ...(this.token ? { token: this.token } : {}),
      });
    } catch (err) {
      ws.close(); // a session that failed to join is of no further use
      throw err;
    }
    this.joined = joined;
    this.self = joined.participant;
    this.iceServers = joined.ice_servers || [];
    for (const p of joined.participants || []) this.participants[p.id] = { id: p.id, name: p.name };
    return joined;
  }

  // `videoCodec` (e.g. 'H264' or 'VP8') puts that codec first in the offer; the SFU
  // answers with the first codec it supports, and subscribers receive that codec.
  // Video goes out as three simulcast layers when the server takes them (`joined.simulcast`)
  // unless `simulcast: false`; audio is always one stream.
  async publish(mediaStream, { videoCodec, simulcast } = {}) {
    if (!this.joined) throw new Error('publish() before join()');
    if (this.pubPc) throw new Error('already published');
    const options = { videoCodec, simulcast };
    this._published = { mediaStream, options }; // a restart publishes the same way
    return this._publish(mediaStream, options);
  }

  async _publish(mediaStream, { videoCodec, simulcast } = {}) {
    const pc = (this.pubPc = this._newPc());
    const layered = simulcast !== false && this.joined?.simulcast === true;
    for (const track of mediaStream.getTracks()) {
      const init = { direction: 'sendonly', streams: [mediaStream] };
      // Chromium and Firefox both take sendEncodings here, in this (low to high) order.
      // Should the answer refuse simulcast, the browser sends the first encoding alone.
      if (layered && track.kind === 'video') {
        init.sendEncodings = SIMULCAST_ENCODINGS.map((e) => ({ ...e })); // copies: one set per pc
      }
      const transceiver = pc.addTransceiver(track, init);
      if (videoCodec && track.kind === 'video') preferCodec(transceiver, videoCodec);
    }
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringComplete(pc);
    const reply = await this._request('publish', { sdp: pc.localDescription.sdp });
    await pc.setRemoteDescription({ type: 'answer', sdp: reply.sdp });
    return reply;
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
    if (relayOnly) this.iceTransportPolicy = 'relay';
    this._epoch += 1;
    const old = [this.pubPc, this.subPc];
    this.pubPc = this.subPc = null;
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
    if (this._published) await this._publish(this._published.mediaStream, this._published.options);
    this._emit('restarted', { relayOnly });
    return reply;
  }

  async leave() {
    if (this.ws?.readyState === WebSocket.OPEN) {
      const timeout = new Promise((resolve) => setTimeout(resolve, LEAVE_TIMEOUT_MS));
      await Promise.race([this._request('leave').catch(() => {}), timeout]);
    }
    this._teardown();
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

  // --- internals ---

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
    if (!this.relayFallback || this.ws?.readyState !== WebSocket.OPEN) return;
    if (this._unconnectedRestarts >= MAX_RESTARTS_UNCONNECTED) return;
    this.restart({ relayOnly: true }).catch((err) => {
      this._emit('error', { type: 'error', code: 'restart_failed', message: String(err), local: true });
    });
  }

  _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  _send(msg) {
    if (this.ws?.readyState !== WebSocket.OPEN) throw new Error('socket is not open');
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
          if (this.ws?.readyState !== WebSocket.OPEN) return; // torn down mid-negotiation
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
        this.participants[msg.participant.id] = { id: msg.participant.id, name: msg.participant.name };
        break;
      case 'participant_left':
        delete this.participants[msg.participant];
        break;
      case 'layer':
        this.layers[msg.track] = msg;
        break;
      case 'track_unpublished':
        delete this.layers[msg.track];
        break;
      // An `error` here answers nothing we wait for, e.g. a refused `set_subscription`
      // (`ref` says which): an event, not a failure.
      case 'track_published': case 'error': case 'subscription_failed':
        break;
      default:
        return; // replies nobody waits for (e.g. a late `pong`) and unknown types
    }
    this._emit(msg.type, msg);
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
    this._emit('track', {
      participant: info.participant, trackId: info.track, kind: info.kind, track: event.track, mid,
    });
  }

  _onClose(event) {
    this._teardown();
    for (const { reject } of this._pending.values()) reject(new Error('socket closed'));
    this._pending.clear();
    this._emit('close', { code: event.code, reason: event.reason, wasClean: event.wasClean });
  }

  // The server forgets the session with the socket, so the pcs are useless without it.
  _teardown() {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    this.pubPc?.close();
    this.subPc?.close();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close();
  }
}

function preferCodec(transceiver, name) {
  const wanted = `video/${name}`.toLowerCase();
  const codecs = RTCRtpSender.getCapabilities('video').codecs;
  const first = codecs.filter((c) => c.mimeType.toLowerCase() === wanted);
  if (!first.length) throw new Error(`this browser cannot send ${name}`);
  transceiver.setCodecPreferences([...first, ...codecs.filter((c) => !first.includes(c))]);
}
