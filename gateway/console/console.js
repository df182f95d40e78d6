// gateway/console/console.js — kith's web console. Pairs the browser
// (POST /pair; the token is kept in localStorage and sent only in the
// Authorization header or the `bearer.` WebSocket subprotocol, never in a
// URL), chats over /ws/chat (spec/WIRE.md §24), follows /api/events (SSE,
// read with fetch so the token stays in a header) and lists peers,
// sessions, nodes and canvases. Every text from the server goes into the page as textContent.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN = 'kith.token';
  const SESSION = 'kith.session';
  const EVENTS_KEPT = 200;
  let open = false;          // paired (or pairing off) and running
  let ws = null;             // the chat socket
  let answer = null;         // the agent's message being streamed
  let eventsAbort = null;    // stops the /api/events reader

  const token = () => localStorage.getItem(TOKEN) || '';
  const authed = (init = {}) => {
    const headers = Object.assign({}, init.headers);
    if (token()) headers.Authorization = 'Bearer ' + token();
    return Object.assign({}, init, { headers });
  };
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const status = (text) => { $('chat-status').textContent = text; };

  async function health() {
    try {
      const r = await fetch('/health');
      $('health').textContent = r.ok ? 'healthy' : 'unhealthy (' + r.status + ')';
    } catch (e) {
      $('health').textContent = 'unreachable';
    }
  }

  function show(on) {
    open = on;
    $('auth').hidden = on;
    for (const id of ['chat', 'events', 'lists']) $(id).hidden = !on;
    $('forget').hidden = !on || !token();
    $('who').textContent = on ? (token() ? 'paired' : 'pairing off') : 'not paired';
  }

  // ---------------------------------------------------------------- pairing

  async function pair(ev) {
    ev.preventDefault();
    $('auth-error').textContent = '';
    let r, body = {};
    try {
      r = await fetch('/pair', { method: 'POST',
                                 headers: { 'X-Pairing-Code': $('pair-code').value.trim(),
                                            'X-Token-Name': 'web console' } });
      body = await r.json().catch(() => ({}));
    } catch (e) {
      $('auth-error').textContent = 'the daemon cannot be reached';
      return;
    }
    if (!r.ok || !body.token) {
      const wait = r.headers.get('Retry-After');
      $('auth-error').textContent = (body.error || 'pairing failed (' + r.status + ')') +
                                    (wait ? ' — try again in ' + wait + ' s' : '');
      return;
    }
    localStorage.setItem(TOKEN, body.token);
    $('pair-code').value = '';
    start();
  }

  function useToken(ev) {
    ev.preventDefault();
    localStorage.setItem(TOKEN, $('token-input').value.trim());
    $('token-input').value = '';
    start();
  }

  function stop(reason) {
    if (ws) { ws.onclose = null; ws.close(1000); ws = null; }
    if (eventsAbort) { eventsAbort.abort(); eventsAbort = null; }
    show(false);
    if (reason) $('auth-error').textContent = reason;
  }

  // Forgetting revokes the token too (WIRE §28), so a copy left elsewhere
  // is worth nothing; the browser forgets it even when the daemon is away.
  async function forget() {
    try {
      const r = await fetch('/api/tokens', authed());
      const mine = r.ok ? ((await r.json()).tokens || []).find((t) => t.current) : null;
      if (mine) await fetch('/api/tokens/' + mine.id, authed({ method: 'DELETE' }));
    } catch (e) {
      // unreachable: forget locally all the same
    }
    localStorage.removeItem(TOKEN);
    localStorage.removeItem(SESSION);
    stop('');
  }

  // Checks the token (or that pairing is off) with a cheap authenticated
  // read, then opens everything.
  async function start() {
    let r;
    try {
      r = await fetch('/api/sessions?limit=1', authed());
    } catch (e) {
      stop('the daemon cannot be reached');
      return;
    }
    if (r.status === 401) {
      const had = token();
      localStorage.removeItem(TOKEN);
      stop(had ? 'the daemon refused this token: pair again' : '');
      return;
    }
    show(true);
    connectChat();
    followEvents();
    refreshLists();
  }

  // ---------------------------------------------------------------- chat

  function line(cls, text) {
    const d = el('div', 'msg ' + cls, text);
    $('transcript').append(d);
    $('transcript').scrollTop = $('transcript').scrollHeight;
    return d;
  }

  function onFrame(f) {
    switch (f.type) {
    case 'session_start':
      localStorage.setItem(SESSION, f.session_id);
      $('session').textContent = f.session_id + (f.resumed ? ' (resumed, ' + f.message_count +
                                                 ' messages)' : ' (new)');
      break;
    case 'connected':
      status('connected');
      break;
    case 'chunk':
      if (!answer) answer = line('agent', '');
      answer.textContent += f.content;
      break;
    case 'chunk_reset':
      if (answer) answer.textContent = '';
      break;
    case 'tool_call':
      line('tool', 'tool ' + f.name + ' ' + JSON.stringify(f.arguments));
      break;
    case 'tool_result':
      line('tool', (f.is_error ? 'tool failed: ' : 'tool result: ') + JSON.stringify(f.result));
      break;
    case 'done':
      if (!answer) answer = line('agent', '');
      answer.textContent = f.full_response;
      answer = null;
      status('done');
      break;
    case 'stopped':
      answer = null;
      status(f.message || 'stopped');
      break;
    case 'error':
      answer = null;
      line('error', f.code + ': ' + f.message);
      break;
    default:
      break; // thinking, operator_status, agent_event: not shown
    }
  }

  function connectChat() {
    const sid = localStorage.getItem(SESSION);
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host +
                '/ws/chat' + (sid ? '?session_id=' + encodeURIComponent(sid) : '');
    const protocols = token() ? ['kith.v1', 'bearer.' + token()] : ['kith.v1'];
    $('transcript').replaceChildren();
    answer = null;
    status('connecting');
    ws = new WebSocket(url, protocols);
    // A socket that says nothing for 5 s becomes a listen-only relay
    // (WIRE §24.7): this one is a chat client, so it speaks at once.
    ws.onopen = () => ws.send(JSON.stringify({ type: 'connect' }));
    ws.onmessage = (m) => {
      try { onFrame(JSON.parse(m.data)); } catch (e) { status('a frame could not be read'); }
    };
    ws.onclose = (e) => {
      ws = null;
      status('disconnected (' + e.code + (e.reason ? ': ' + e.reason : '') + ')');
      if (open) setTimeout(() => { if (open && !ws) start(); }, 1000); // token checked again
    };
  }

  function send(ev) {
    ev.preventDefault();
    const text = $('chat-input').value;
    if (!text.trim() || !ws || ws.readyState !== WebSocket.OPEN) return;
    ws.send(JSON.stringify({ type: 'message', content: text }));
    line('user', text);
    $('chat-input').value = '';
    status('waiting for the agent');
  }

  function stopTurn() {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'stop' }));
  }

  function switchSession(id) {
    if (id) localStorage.setItem(SESSION, id); else localStorage.removeItem(SESSION);
    if (ws) { ws.onclose = null; ws.close(1000); ws = null; }
    connectChat();
  }

  // ---------------------------------------------------------------- events

  function showEvent(data) {
    let text = data;
    try {
      const e = JSON.parse(data);
      const rest = Object.assign({}, e);
      delete rest.type;
      text = e.type + ' ' + JSON.stringify(rest);
    } catch (e) { /* shown as sent */ }
    const list = $('event-list');
    list.prepend(el('li', '', text));
    while (list.children.length > EVENTS_KEPT) list.lastChild.remove();
  }

  async function followEvents() {
    if (eventsAbort) eventsAbort.abort();
    const ctl = new AbortController();
    eventsAbort = ctl;
    try {
      const r = await fetch('/api/events', authed({ signal: ctl.signal }));
      if (!r.ok) throw new Error('HTTP ' + r.status);
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const data = buf.slice(0, cut).split('\n').filter((l) => l.startsWith('data:'))
            .map((l) => l.slice(5).replace(/^ /, '')).join('\n');
          buf = buf.slice(cut + 2);
          if (data) showEvent(data);
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    if (open && eventsAbort === ctl) setTimeout(followEvents, 2000); // the stream ended: again
  }

  // ---------------------------------------------------------------- lists

  async function refreshLists() {
    try {
      const [peers, sessions, nodes, canvases, tokens] = await Promise.all([
        fetch('/api/peers', authed()).then((r) => r.json()),
        fetch('/api/sessions', authed()).then((r) => r.json()),
        fetch('/api/nodes', authed()).then((r) => r.json()),
        fetch('/api/canvas', authed()).then((r) => r.json()),
        fetch('/api/tokens', authed()).then((r) => r.json()),
      ]);
      const pl = $('peers');
      pl.replaceChildren();
      for (const p of peers.peers || []) {
        const li = el('li', '', p.name + ' — ' + (p.addr || '') + ' — ' + (p.pubkey || ''));
        li.dataset.peer = p.peer_id;
        const b = el('button', 'revoke', 'Remove');
        b.type = 'button';
        b.addEventListener('click', () => removePeer(p.peer_id, p.name));
        li.append(' ', b);
        pl.append(li);
      }
      if (!pl.children.length) pl.append(el('li', 'muted', 'no trusted peers'));
      const sl = $('sessions');
      sl.replaceChildren();
      for (const s of sessions.sessions || []) {
        const li = el('li', '', s.id + (s.name ? ' “' + s.name + '”' : '') + ' — ' +
                                s.message_count + ' messages');
        li.dataset.session = s.id;
        li.title = 'open this session';
        li.addEventListener('click', () => switchSession(s.id));
        sl.append(li);
      }
      if (!sl.children.length) sl.append(el('li', 'muted', 'no sessions yet'));
      const nl = $('nodes');
      nl.replaceChildren();
      for (const n of nodes.nodes || [])
        nl.append(el('li', '', n.name + ' — ' + n.commands.join(', ') + ' — ' + n.id));
      if (!nl.children.length) nl.append(el('li', 'muted', 'no nodes connected'));
      const cl = $('canvases');
      cl.replaceChildren();
      for (const c of canvases.canvases || [])
        cl.append(el('li', '', c.id + ' — ' + c.content_type + ', version ' + c.version + ', ' +
                               c.watchers + ' watching'));
      if (!cl.children.length) cl.append(el('li', 'muted', 'no canvases'));
      const tl = $('tokens');
      tl.replaceChildren();
      for (const t of tokens.tokens || []) {
        const li = el('li', '', (t.name || '(unnamed)') + ' — ' + t.scope + ' — ' + t.id +
                                (t.current ? ' (this browser)' : ''));
        li.dataset.token = t.id;
        if (!t.current) {
          const b = el('button', 'revoke', 'Revoke');
          b.type = 'button';
          b.addEventListener('click', () => revoke(t.id));
          li.append(' ', b);
        }
        tl.append(li);
      }
      if (!tl.children.length) tl.append(el('li', 'muted', 'pairing is off: no tokens'));
    } catch (e) {
      $('peers').replaceChildren(el('li', 'error', 'could not be read'));
    }
  }

  // ---------------------------------------------------------------- peers

  // POST /api/peers: answered once trusted_peers.json is written and in force.
  async function addPeer(ev) {
    ev.preventDefault();
    const row = { name: $('peer-name').value.trim(), pubkey: $('peer-pubkey').value.trim(),
                  addr: $('peer-addr').value.trim() };
    const r = await fetch('/api/peers', authed({
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(row) }));
    const body = await r.json().catch(() => ({}));
    $('peer-status').textContent = r.ok ? 'trusted ' + body.name + ' (' + body.peer_id + ')'
                                        : (body.error || 'refused (' + r.status + ')');
    if (r.ok) $('peer-form').reset();
    refreshLists();
  }

  async function removePeer(peerId, name) {
    const r = await fetch('/api/peers/' + peerId, authed({ method: 'DELETE' }));
    const body = await r.json().catch(() => ({}));
    $('peer-status').textContent = r.ok ? 'removed ' + name
                                        : (body.error || 'could not remove ' + name);
    refreshLists();
  }

  // ---------------------------------------------------------------- tokens

  async function revoke(id) {
    const r = await fetch('/api/tokens/' + id, authed({ method: 'DELETE' }));
    $('minted').textContent = r.ok ? 'revoked ' + id : 'could not revoke ' + id + ' (' + r.status + ')';
    refreshLists();
  }

  // A node token is shown once, here, and never kept by the page.
  async function mint(ev) {
    ev.preventDefault();
    const r = await fetch('/api/tokens', authed({
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ scope: 'node', name: $('mint-name').value.trim() }) }));
    const body = await r.json().catch(() => ({}));
    $('minted').textContent = r.ok
      ? 'node token for “' + body.name + '” (shown this once): ' + body.token
      : (body.error || 'minting failed (' + r.status + ')');
    if (r.ok) $('mint-name').value = '';
    refreshLists();
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('pair-form').addEventListener('submit', pair);
    $('token-form').addEventListener('submit', useToken);
    $('forget').addEventListener('click', forget);
    $('chat-form').addEventListener('submit', send);
    $('stop').addEventListener('click', stopTurn);
    $('new-session').addEventListener('click', () => switchSession(null));
    $('refresh').addEventListener('click', refreshLists);
    $('mint-form').addEventListener('submit', mint);
    $('peer-form').addEventListener('submit', addPeer);
    health();
    start();
  });
})();
