// tests/integration/ws_client.js — a WebSocket client kith did not write
// (Node's `ws`, installed into tests/node_modules by tools/setup), for
// test_ws_echo.py: echo text, binary, a fragmented message and many in
// flight, a ping, then a close whose code must come back. Prints one JSON
// line {"ok": bool, "steps": [...], "error"?: text}; exits 0 when ok.
'use strict';
const WebSocket = require('ws');

const url = process.argv[2];
const steps = [];
const ws = new WebSocket(url, { perMessageDeflate: false });
const fail = (why) => {
  console.log(JSON.stringify({ ok: false, steps, error: String(why) }));
  process.exit(1);
};
setTimeout(() => fail('timed out'), 30000).unref();

const next = () => new Promise((resolve) => ws.once('message', (data, binary) => resolve({ data, binary })));

ws.on('error', fail);
ws.on('open', async () => {
  try {
    ws.send('héllo');
    let m = await next();
    if (m.binary || m.data.toString() !== 'héllo') fail('text echo');
    steps.push('text');

    const bin = Buffer.from([0, 1, 2, 250, 255]);
    ws.send(bin);
    m = await next();
    if (!m.binary || !bin.equals(m.data)) fail('binary echo');
    steps.push('binary');

    ws.send('frag', { fin: false });
    ws.send('mented', { fin: true });
    m = await next();
    if (m.data.toString() !== 'fragmented') fail('fragmented echo: ' + m.data.toString());
    steps.push('fragmented');

    const n = 200;
    const got = [];
    const all = new Promise((resolve) => {
      const on = (data) => { got.push(data.toString()); if (got.length === n) { ws.off('message', on); resolve(); } };
      ws.on('message', on);
    });
    for (let i = 0; i < n; i++) ws.send('m' + i);
    await all;
    for (let i = 0; i < n; i++) if (got[i] !== 'm' + i) fail('order at ' + i);
    steps.push('in_flight');

    const pong = new Promise((resolve) => ws.once('pong', resolve));
    ws.ping('hi');
    const p = await pong;
    if (p.toString() !== 'hi') fail('pong payload');
    steps.push('ping');

    ws.once('close', (code) => {
      if (code !== 4001) fail('close code ' + code);
      steps.push('close');
      console.log(JSON.stringify({ ok: true, steps }));
      process.exit(0);
    });
    ws.close(4001, 'done');
  } catch (e) {
    fail(e);
  }
});
