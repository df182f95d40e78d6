// tests/integration/console_e2e.mjs — drives kith's web console in Debian's
// headless Chromium (playwright-core, tests/node_modules) as a new user
// would: opens http://127.0.0.1:PORT/, is refused a wrong code, pairs with
// the right one, chats with the scripted agent, sees the turn on the events
// panel, reloads (the token and the session are kept), lists the session,
// a canvas and no nodes, trusts a peer and removes it, lists its own
// token, mints a node token and revokes it, and forgets the token (which
// revokes it). Prints one JSON line {ok, steps, failed?, …};
// exit 0 only when every step passed. Used by test_console.py.
//
//   node console_e2e.mjs http://127.0.0.1:PORT PAIRING_CODE PEER_PUBKEY
import { chromium } from 'playwright-core';

const [base, code, peerKey] = process.argv.slice(2);
const TIMEOUT = 30000;
const steps = [];
const seen = { urls: [], sockets: [], problems: [] };

function check(cond, what) {
  if (!cond) throw new Error(what);
}

const browser = await chromium.launch({
  executablePath: process.env.KITH_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let result;
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('request', (r) => seen.urls.push(r.url()));
  page.on('websocket', (w) => seen.sockets.push(w.url()));
  page.on('console', (m) => { if (m.type() === 'error') seen.problems.push(m.text()); });
  page.on('pageerror', (e) => seen.problems.push(String(e)));
  const step = async (name, fn) => { await fn(); steps.push(name); };

  await step('loads', async () => {
    const r = await page.goto(base + '/');
    check(r.status() === 200, 'GET / answered ' + r.status());
    await page.waitForFunction(() => document.getElementById('health').textContent === 'healthy');
    check(await page.isVisible('#pair-form'), 'no pairing form');
    check(!(await page.isVisible('#chat')), 'chat shown before pairing');
  });
  await step('wrong_code_refused', async () => {
    await page.fill('#pair-code', code === '000000' ? '111111' : '000000');
    await page.click('#pair');
    await page.waitForFunction(() => document.getElementById('auth-error').textContent !== '');
    const text = await page.textContent('#auth-error');
    check(/code/i.test(text), 'refusal says ' + text);
  });
  await step('pairs', async () => {
    await page.fill('#pair-code', code);
    await page.click('#pair');
    await page.waitForSelector('#chat', { state: 'visible' });
    check((await page.textContent('#who')) === 'paired', 'not shown as paired');
    const token = await page.evaluate(() => localStorage.getItem('kith.token'));
    check(/^kith_[0-9a-f]{64}$/.test(token || ''), 'token kept: ' + token);
  });
  await step('chats', async () => {
    await page.waitForFunction(() => document.getElementById('session').textContent.includes('(new)'));
    await page.fill('#chat-input', 'hello console');
    await page.press('#chat-input', 'Enter');
    await page.waitForFunction(() => [...document.querySelectorAll('.msg.agent')]
      .some((m) => m.textContent === 'echo: hello console'));
    check((await page.textContent('.msg.user')) === 'hello console', 'the user line');
  });
  await step('events_shown', async () => {
    await page.waitForFunction(() => [...document.querySelectorAll('#event-list li')]
      .some((li) => li.textContent.startsWith('agent_end')));
  });
  await step('reload_keeps_token_and_session', async () => {
    await page.reload();
    await page.waitForSelector('#chat', { state: 'visible' });
    await page.waitForFunction(() =>
      document.getElementById('session').textContent.includes('(resumed, 2 messages)'));
  });
  await step('lists_session', async () => {
    const sid = await page.evaluate(() => localStorage.getItem('kith.session'));
    // A canvas to list, posted with the token the page holds.
    const posted = await page.evaluate(async () => (await fetch('/api/canvas/status', {
      method: 'POST', body: '<b>ok</b>',
      headers: { Authorization: 'Bearer ' + localStorage.getItem('kith.token'),
                 'Content-Type': 'text/html' } })).status);
    check(posted === 200, 'canvas post ' + posted);
    await page.click('#refresh');
    await page.waitForSelector(`#sessions li[data-session="${sid}"]`);
    check((await page.textContent('#peers')).includes('no trusted peers'), 'peers list');
    check((await page.textContent('#nodes')).includes('no nodes connected'), 'nodes list');
    await page.waitForFunction(() =>
      document.getElementById('canvases').textContent.includes('status — text/html, version 1'));
  });
  await step('peer_trusted_then_removed', async () => {
    await page.fill('#peer-name', 'e2e-peer');
    await page.fill('#peer-pubkey', 'ed25519:AAAA');
    await page.fill('#peer-addr', 'tcp://127.0.0.1:9');
    await page.click('#peer-add');
    await page.waitForFunction(() => /pubkey/.test(document.getElementById('peer-status').textContent));
    await page.fill('#peer-pubkey', peerKey);
    await page.click('#peer-add');
    await page.waitForFunction(() =>
      document.getElementById('peer-status').textContent.startsWith('trusted e2e-peer') &&
      document.getElementById('peers').textContent.includes('e2e-peer — tcp://127.0.0.1:9'));
    const listed = await page.evaluate(async () => (await (await fetch('/api/peers', {
      headers: { Authorization: 'Bearer ' + localStorage.getItem('kith.token') } })).json()).peers);
    check(listed.length === 1 && listed[0].pubkey === peerKey, 'GET /api/peers ' + JSON.stringify(listed));
    await page.click('#peers button.revoke');
    await page.waitForFunction(() =>
      document.getElementById('peer-status').textContent === 'removed e2e-peer' &&
      document.getElementById('peers').textContent.includes('no trusted peers'));
  });
  await step('tokens_minted_revoked', async () => {
    await page.waitForFunction(() =>
      document.getElementById('tokens').textContent.includes('web console — operator — ') &&
      document.getElementById('tokens').textContent.includes('(this browser)'));
    check((await page.$$('#tokens button.revoke')).length === 0, 'own token has a revoke button');
    await page.fill('#mint-name', 'e2e tablet');
    await page.click('#mint');
    await page.waitForFunction(() => /kith_[0-9a-f]{64}$/.test(
      document.getElementById('minted').textContent));
    const minted = (await page.textContent('#minted')).match(/kith_[0-9a-f]{64}$/)[0];
    await page.waitForFunction(() =>
      document.getElementById('tokens').textContent.includes('e2e tablet — node — '));
    // The node token opens /ws/nodes only: any other route answers 403.
    const other = await page.evaluate(async (t) => (await fetch('/api/peers', {
      headers: { Authorization: 'Bearer ' + t } })).status, minted);
    check(other === 403, 'a node token read /api/peers: ' + other);
    await page.click('#tokens button.revoke');
    await page.waitForFunction(() =>
      !document.getElementById('tokens').textContent.includes('e2e tablet'));
    const after = await page.evaluate(async (t) => (await fetch('/api/peers', {
      headers: { Authorization: 'Bearer ' + t } })).status, minted);
    check(after === 401, 'a revoked token answered ' + after);
  });
  await step('stop_without_turn', async () => {
    await page.click('#stop');
    await page.waitForFunction(() =>
      document.getElementById('chat-status').textContent === 'no active turn');
  });
  await step('forgets_and_revokes', async () => {
    const held = await page.evaluate(() => localStorage.getItem('kith.token'));
    await page.click('#forget');
    await page.waitForSelector('#pair-form', { state: 'visible' });
    check(await page.evaluate(() => localStorage.getItem('kith.token')) === null, 'token kept');
    const st = await page.evaluate(async (t) => (await fetch('/api/peers', {
      headers: { Authorization: 'Bearer ' + t } })).status, held);
    check(st === 401, 'a forgotten token still answers ' + st);
  });
  await step('no_token_in_urls_no_errors', async () => {
    const leaks = [...seen.urls, ...seen.sockets].filter((u) => /token=|kith_[0-9a-f]/.test(u));
    check(leaks.length === 0, 'a token in a URL: ' + leaks.join(' '));
    check(seen.sockets.some((u) => u.includes('/ws/chat')), 'no chat socket');
    // The browser logs the wrong code's 401, the bad key's 400, the node
    // token's 403 (and the revoked tokens' 401s) on its own.
    const other = seen.problems.filter((p) => !/40[013]/.test(p));
    check(other.length === 0, 'page errors: ' + other.join(' | '));
  });
  result = { ok: true, steps };
} catch (e) {
  result = { ok: false, steps, failed: String(e && e.message || e), problems: seen.problems };
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
