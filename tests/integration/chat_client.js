// tests/integration/chat_client.js — a /ws/chat client kith did not write
// (Node's `ws`, installed into tests/node_modules by tools/setup), for
// test_chat.py: the token as a `bearer.` subprotocol next to kith.v1,
// session_start first, a message answered by chunks and done, a bad JSON
// frame answered INVALID_JSON on a socket that stays usable, a steer with no
// turn answered NO_ACTIVE_TURN. Usage: node chat_client.js URL TOKEN.
// Prints one JSON line {"ok": bool, "steps": [...], "error"?: text}.
'use strict';
const WebSocket = require('ws');

const [url, token] = process.argv.slice(2);
const steps = [];
const fail = (why) => {
  console.log(JSON.stringify({ ok: false, steps, error: String(why) }));
  process.exit(1);
};
setTimeout(() => fail('timed out'), 100000).unref();

const ws = new WebSocket(url, ['kith.v1', 'bearer.' + token], { perMessageDeflate: false });
const queue = [];
let waiting = null;
ws.on('message', (data, binary) => {
  if (binary) fail('binary frame from the server');
  const f = JSON.parse(data.toString());
  if (waiting) { const w = waiting; waiting = null; w(f); } else queue.push(f);
});
const next = () => queue.length ? Promise.resolve(queue.shift())
                                : new Promise((resolve) => { waiting = resolve; });

ws.on('error', fail);
ws.on('open', async () => {
  try {
    if (ws.protocol !== 'kith.v1') fail('protocol ' + ws.protocol);
    let f = await next();
    if (f.type !== 'session_start' || !f.session_id || f.resumed !== false) fail('start ' + JSON.stringify(f));
    steps.push('session_start');

    ws.send(JSON.stringify({ type: 'message', content: 'from node' }));
    let text = '';
    for (;;) {
      f = await next();
      if (f.type === 'chunk') text += f.content;
      else if (f.type === 'done') break;
      else if (f.type === 'error' || f.type === 'stopped') fail('turn ' + JSON.stringify(f));
    }
    if (f.full_response !== 'echo: from node' || text !== f.full_response) fail('answer ' + JSON.stringify(f));
    steps.push('chunks_done');

    ws.send('{"type":"message",');
    f = await next();
    if (f.type !== 'error' || f.code !== 'INVALID_JSON') fail('bad json ' + JSON.stringify(f));
    steps.push('invalid_json');

    ws.send(JSON.stringify({ type: 'steer', content: 'left' }));
    f = await next();
    if (f.type !== 'error' || f.code !== 'NO_ACTIVE_TURN') fail('steer ' + JSON.stringify(f));
    steps.push('no_active_turn');

    ws.send(JSON.stringify({ type: 'message', content: 'again' }));
    do { f = await next(); } while (f.type !== 'done' && f.type !== 'error');
    if (f.full_response !== 'echo: again') fail('after errors ' + JSON.stringify(f));
    steps.push('still_usable');

    ws.close(1000);
    ws.on('close', (code) => {
      if (code !== 1000) fail('close ' + code);
      console.log(JSON.stringify({ ok: true, steps }));
      process.exit(0);
    });
  } catch (e) {
    fail(e && e.stack || e);
  }
});
