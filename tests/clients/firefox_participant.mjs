// A Firefox ESR participant for sfu's tests: the demo page in Debian's firefox-esr,
// driven by puppeteer-core over WebDriver BiDi (no browser download).
//
//   node tests/clients/firefox_participant.mjs 'http://10.77.0.1:8080/?room=R&name=N&autojoin=1&token=T' [screen]
//
// With `screen`, it also shares a "screen" once joined: headless Firefox has no
// getDisplayMedia (NotFoundError whatever the prefs), so a 1280x720 canvas that
// changes every frame stands in for it, published with source `screen`; then prints
// {"screen": track id}.
// Prints JSON lines: {"joined": true, "browser": version} once the page has joined and
// published, then every second {"stats": SfuClient.inboundStats()} (frames decoded per
// participant). Ends, closing Firefox, when its stdin closes.
// Firefox gathers no ICE candidates unless the network namespace has a non-loopback
// interface and a default route (the test makes both).
import puppeteer from 'puppeteer-core';

const pageUrl = process.argv[2];
const host = new URL(pageUrl).hostname;
const browser = await puppeteer.launch({
  browser: 'firefox',
  executablePath: process.env.FIREFOX || '/usr/bin/firefox-esr',
  headless: true,
  extraPrefsFirefox: {
    'media.navigator.streams.fake': true,
    'media.navigator.permission.disabled': true,
    'media.peerconnection.ice.loopback': true,
    'media.peerconnection.ice.obfuscate_host_addresses': false,
    // The page is plain http on a test address: let getUserMedia work there.
    'dom.securecontext.allowlist': host,
    'media.devices.insecure.enabled': true,
    'media.getusermedia.insecure.enabled': true,
  },
});
const close = async () => {
  await browser.close().catch(() => {});
  process.exit(0);
};
process.stdin.on('end', close);
process.stdin.resume();
process.on('SIGTERM', close);

const page = await browser.newPage();
page.on('console', (message) => console.error(`page: ${message.text()}`));
await page.goto(pageUrl);
await page.evaluate(() => window.sfuReady.then(() => true));
console.log(JSON.stringify({ joined: true, browser: await browser.version() }));
if (process.argv[3] === 'screen') {
  const screen = await page.evaluate(async () => {
    const canvas = Object.assign(document.createElement('canvas'), { width: 1280, height: 720 });
    const context = canvas.getContext('2d');
    let frame = 0;
    setInterval(() => {
      context.fillStyle = `hsl(${(frame += 7) % 360} 70% 50%)`;
      context.fillRect(0, 0, canvas.width, canvas.height);
    }, 33);
    const track = canvas.captureStream(30).getVideoTracks()[0];
    const info = await window.sfu.publishTrack(track, { source: 'screen', name: 'canvas', simulcast: false });
    return info.id;
  });
  console.log(JSON.stringify({ screen }));
}
setInterval(async () => {
  try {
    const stats = await page.evaluate(() => window.sfu.inboundStats());
    console.log(JSON.stringify({ stats }));
  } catch (err) {
    console.error(`stats: ${err}`);
  }
}, 1000);
