// The diagnostics page: what a browser can tell about its network with this server.
// 0. How its NAT maps (nat-test.js), when the server names a STUN server with two
//    addresses ([diagnostics] stun) or the page is given one (?stun=A1:P1,A2:P2).
// 1. Joins a room of its own (as any client) for the TURN URLs and credential a
//    joiner gets. 2. Gathers candidates with all of them: which types come (host,
//    srflx, relay). 3. Per TURN URL (UDP, TCP, TLS), a relay-only gathering: a relay
//    candidate means the allocation worked. 4. A loopback through the SFU: a second
//    client of this page receives a canvas video the first publishes; frames, loss and
//    round-trip time. The report is JSON (`window.diagnostics` resolves to it).
// ?token=&token2= when the server asks for tokens (two identities: the loopback's ends).
// `window.natTest` resolves to the NAT test's result alone, as soon as it has one.
import { natTest, stunUrlsOf } from './nat-test.js';
import { SfuClient } from './sfu-client.js';

const params = new URLSearchParams(location.search);
const room = `sfu-diagnostics-${Math.random().toString(36).slice(2, 10)}`;
const GATHER_TIMEOUT_MS = 6000; // a TURN server that has not answered by then: failed
const LOOPBACK_S = 4;
const report = { started: new Date().toISOString(), userAgent: navigator.userAgent, checks: [] };

function row(check, result, detail = '') {
  report.checks.push({ check, result, detail });
  const tr = document.createElement('tr');
  for (const [text, cls] of [[check, ''], [result, result], [detail, '']]) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    tr.append(td);
  }
  document.getElementById('checks').append(tr);
}

// Candidates gathered with `iceServers` (and `policy`), until gathering completes.
async function gather(iceServers, policy = 'all') {
  const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: policy });
  pc.createDataChannel('probe');
  const candidates = [];
  const complete = new Promise((resolve) => {
    pc.onicecandidate = (e) => (e.candidate?.candidate ? candidates.push(e.candidate) : resolve());
    setTimeout(resolve, GATHER_TIMEOUT_MS);
  });
  const started = performance.now();
  await pc.setLocalDescription(await pc.createOffer());
  await complete;
  const ms = performance.now() - started;
  pc.close();
  return { ms, candidates: candidates.map((c) => ({ type: c.type, protocol: c.protocol,
                                                    address: c.address, port: c.port })) };
}

function turnUrls(iceServers) {
  return iceServers.flatMap((s) => [s.urls].flat()
    .filter((url) => url.startsWith('turn'))
    .map((url) => ({ url, username: s.username, credential: s.credential })));
}

async function candidateChecks(iceServers) {
  // All at once: a TURN URL that does not answer costs its timeout once, not once each.
  const turns = turnUrls(iceServers);
  const [all, ...relayOnly] = await Promise.all([
    gather(iceServers),
    ...turns.map(({ url, username, credential }) =>
      gather([{ urls: url, username, credential }], 'relay')),
  ]);
  report.candidates = all.candidates;
  const types = new Set(all.candidates.map((c) => c.type));
  row('host candidates', types.has('host') ? 'ok' : 'failed',
      'this device\'s own addresses (none: the browser hides them or has no network)');
  row('server-reflexive candidates', types.has('srflx') ? 'ok' : 'none',
      'the address a NAT maps this device to, learnt from the TURN servers');
  turns.forEach(({ url }, i) => {
    const relay = relayOnly[i].candidates.find((c) => c.type === 'relay');
    row(`TURN ${url}`, relay ? 'ok' : 'failed',
        relay ? `relay ${relay.address}:${relay.port} in ${Math.round(relayOnly[i].ms)} ms`
              : 'no relay candidate: the allocation failed or was blocked');
  });
  if (!turns.length) row('TURN', 'none', 'the server offers no TURN');
}

// A canvas that changes every frame: an encoder sends every frame of it.
function canvasStream() {
  const canvas = Object.assign(document.createElement('canvas'), { width: 320, height: 180 });
  const ctx = canvas.getContext('2d');
  let n = 0;
  setInterval(() => {
    ctx.fillStyle = `hsl(${(n += 7) % 360} 60% 50%)`;
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = '#fff';
    ctx.fillText(String(n), 10, 20);
  }, 1000 / 15);
  return canvas.captureStream(15);
}

async function candidatePairRtt(pc) {
  for (const s of (await pc.getStats()).values())
    if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded')
      return s.currentRoundTripTime;
  return null;
}

async function loopback() {
  const sender = new SfuClient({ room, name: 'diagnostics-send', token: params.get('token') || undefined });
  const receiver = new SfuClient({ room, name: 'diagnostics-receive',
                                   token: params.get('token2') || params.get('token') || undefined });
  try {
    await sender.join();
    await receiver.join();
    await sender.publish(canvasStream(), { simulcast: false });
    const frames = async () => Object.values(await receiver.inboundStats())
      .reduce((sum, e) => sum + e.video.framesDecoded, 0);
    const deadline = performance.now() + 15000;
    while ((await frames()) === 0) {
      if (performance.now() > deadline) throw new Error('no video came back within 15 s');
      await new Promise((r) => setTimeout(r, 250));
    }
    const before = { frames: await frames(), counts: await receiver.statsByParticipant() };
    await new Promise((r) => setTimeout(r, LOOPBACK_S * 1000));
    const after = { frames: await frames(), counts: await receiver.statsByParticipant() };
    const sum = (c, key) => Object.values(c).reduce((s, e) => s + (e[key] || 0), 0);
    const received = sum(after.counts, 'packetsReceived') - sum(before.counts, 'packetsReceived');
    const lost = sum(after.counts, 'packetsLost') - sum(before.counts, 'packetsLost');
    const rtt = await candidatePairRtt(receiver.subPc);
    const result = { fps: (after.frames - before.frames) / LOOPBACK_S,
                     packets: received, loss: received + lost ? lost / (received + lost) : 0,
                     rttMs: rtt == null ? null : rtt * 1000 };
    report.loopback = result;
    row('video through the SFU', result.fps > 0 ? 'ok' : 'failed',
        `${result.fps.toFixed(1)} frames/s, ${(result.loss * 100).toFixed(1)} % lost, ` +
        `round trip ${result.rttMs == null ? '?' : result.rttMs.toFixed(1) + ' ms'}`);
  } catch (err) {
    report.loopback = { error: String(err?.message || err) };
    row('video through the SFU', 'failed', report.loopback.error);
  } finally {
    sender.close();
    receiver.close();
  }
}

// ?stun=A1:P1,A2:P2 → the URLs the server would name for that pair (server.py).
function stunUrlsFromParams() {
  const [primary, other] = (params.get('stun') || '').split(',');
  if (!primary || !other) return null;
  const port = (hostPort) => hostPort.slice(hostPort.lastIndexOf(':') + 1);
  const host = (hostPort) => hostPort.slice(0, hostPort.lastIndexOf(':'));
  return [`stun:${primary}`, `stun:${host(other)}:${port(primary)}`, `stun:${other}`];
}

async function natCheck() {
  const stun = stunUrlsFromParams() ?? await stunUrlsOf();
  if (!stun.length) {
    row('NAT mapping', 'none', 'the server names no STUN server with two addresses ' +
        '([diagnostics] stun); sfu doctor --stun tests the NAT from the command line');
    return null;
  }
  const result = await natTest(stun);
  report.nat = result;
  const seen = `mapped to ${result.mapped.join(', ') || 'nothing'} by ${stun.join(', ')}`;
  if (result.natType === 'udp_blocked') {
    row('NAT mapping', 'failed', `no answer from the STUN server over UDP (${stun[0]})`);
  } else {
    row('NAT mapping', result.mapping ? 'ok' : 'none',
        `${result.mapping ?? 'cannot tell'} (reported as ${result.natType}): ${seen}`);
  }
  return result;
}

async function run() {
  await window.natTest;
  const probe = new SfuClient({ room, name: 'diagnostics', token: params.get('token') || undefined });
  try {
    await probe.join();
    row('signalling (WebSocket)', 'ok', `joined ${room}`);
  } catch (err) {
    row('signalling (WebSocket)', 'failed', String(err?.message || err));
    return;
  }
  const iceServers = probe.iceServers;
  probe.close();
  await candidateChecks(iceServers);
  await loopback();
}

window.natTest = natCheck().catch((err) => {
  row('NAT mapping', 'failed', String(err?.message || err));
  return null;
});
window.diagnostics = run().then(() => {
  report.finished = new Date().toISOString();
  const text = JSON.stringify(report, null, 2);
  document.getElementById('report').textContent = text;
  const copy = document.getElementById('copy');
  copy.disabled = false;
  copy.onclick = () => navigator.clipboard.writeText(text);
  return report;
});
