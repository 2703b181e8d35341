// The NAT mapping test a browser can run (RFC 5780 §4.3, as far as WebRTC lets a page):
// one peer connection, so one socket per address family, asks a STUN server with two
// addresses for its mapped address three times: at the primary address A1:P1, at the
// other address on the same port A2:P1, and at the other address A2:P2 (the server
// names them: GET /nat-test.json, from the config's [diagnostics] stun).
//
// The browser shows a server-reflexive candidate per distinct mapping and drops a
// mapping it already has, so the count per socket is the answer: one mapping → the NAT
// maps endpoint-independently (a cone NAT, or no NAT); two → address-dependent (A2's
// two ports shared one); three → address-and-port-dependent. Both of the latter are
// RFC 3489's "symmetric". Filtering needs the server to answer from another address
// (CHANGE-REQUEST), which a page cannot ask for: `sfu doctor --stun` tests it.
// Assumes the browser gathers on its default route only (one socket per family), as
// Chromium and Firefox do for a page without camera permission.

export const ENDPOINT_INDEPENDENT = 'endpoint-independent';
export const ADDRESS_DEPENDENT = 'address-dependent';
export const ADDRESS_AND_PORT_DEPENDENT = 'address-and-port-dependent';
const TIMEOUT_MS = 3000; // no answer by then (STUN retries for ~9 s): none will come
const LOOPBACK = /^(127\.|::1$)/;

// The verdict from the distinct mapped addresses one socket got (0..3) out of `asked`
// STUN addresses, and whether every one answered (gathering completed, no error): the
// mapping behaviour (null: cannot tell) and the `nat_type` to report at join
// (docs/protocol.md). Answers and no mapping: each was the socket's own address, which
// the browser drops as a duplicate of its host candidate — no NAT, a mapping that
// trivially depends on nothing.
export function verdict(mappings, asked, allAnswered) {
  if (mappings === 0 && !allAnswered) return { mapping: null, natType: 'udp_blocked' };
  if (asked < 3) return { mapping: null, natType: 'unknown' };
  if (mappings <= 1) return { mapping: ENDPOINT_INDEPENDENT, natType: 'cone' };
  return { mapping: mappings === 2 ? ADDRESS_DEPENDENT : ADDRESS_AND_PORT_DEPENDENT,
           natType: 'symmetric' };
}

// The STUN URLs this server offers for the test ([] when it has none configured).
export async function stunUrlsOf(base = '') {
  try {
    const response = await fetch(`${base}/nat-test.json`);
    return response.ok ? (await response.json()).stun : [];
  } catch {
    return [];
  }
}

// Runs the test: {stun, mapped: ["address:port", ...], unanswered, mapping, natType, ms}.
export async function natTest(stun, timeoutMs = TIMEOUT_MS) {
  const pc = new RTCPeerConnection({ iceServers: stun.map((urls) => ({ urls })) });
  pc.createDataChannel('nat-test');
  const mapped = [];
  let unanswered = 0; // STUN errors (701: no answer), or still waiting at the timeout
  const started = performance.now();
  try {
    const complete = new Promise((resolve) => {
      pc.onicecandidate = (e) => {
        const c = e.candidate;
        if (!c?.candidate) return resolve(true);
        if (c.type === 'srflx' && c.protocol === 'udp') mapped.push({ address: c.address, port: c.port });
      };
      // A loopback socket (Chromium's --allow-loopback-in-peer-connection) reaches no one.
      pc.onicecandidateerror = (e) => { if (!LOOPBACK.test(e.address ?? '')) unanswered += 1; };
      setTimeout(() => resolve(false), timeoutMs);
    });
    await pc.setLocalDescription(await pc.createOffer());
    if (!(await complete)) unanswered = Math.max(unanswered, 1);
  } finally {
    pc.close();
  }
  // One socket per family: the most mappings a family got is one socket's count.
  const inFamily = (v6) => mapped.filter((m) => m.address.includes(':') === v6).length;
  return { stun, mapped: mapped.map((m) => `${m.address}:${m.port}`), unanswered,
           ...verdict(Math.max(inFamily(false), inFamily(true)), stun.length, !unanswered),
           ms: Math.round(performance.now() - started) };
}
