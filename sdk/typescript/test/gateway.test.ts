import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { beforeEach, describe, it } from "node:test";

import { ApiError, GatewayError } from "../src/errors.js";
import {
  CLOSE_CODES,
  GatewayClient,
  closeAction,
  type GatewayClientOptions,
  type MissedEvents,
  type StateChange,
} from "../src/gateway.js";
import type { InvalidFrame } from "../src/dispatcher.js";
import { FakeClock, FakeTokens, FakeWebSocket, repoRoot, ULID } from "./fakes.js";

const CHANNEL_2 = "01HZX3N4B5C6D7E8F9G0H1J2K5";
const FAR_FUTURE_MS = 60 * 60 * 1000;

function setup(options: Partial<GatewayClientOptions> = {}) {
  FakeWebSocket.reset();
  const clock = new FakeClock();
  const tokens = new FakeTokens(clock);
  const gateway = new GatewayClient({
    url: "https://chat.example",
    tokens,
    WebSocket: FakeWebSocket,
    timers: clock,
    now: clock.clock,
    random: () => 0.5,
    ...options,
  });
  const states: StateChange[] = [];
  const missed: MissedEvents[] = [];
  const errors: unknown[] = [];
  const invalid: InvalidFrame[] = [];
  gateway.onStateChange((change) => states.push(change));
  gateway.onMissedEvents((info) => missed.push(info));
  gateway.onError((error) => errors.push(error));
  gateway.onInvalid((frame) => invalid.push(frame));
  return { clock, tokens, gateway, states, missed, errors, invalid };
}

type Ctx = ReturnType<typeof setup>;

/** Lets the client open a socket, then plays the server's open + ready. */
async function ready(ctx: Ctx): Promise<FakeWebSocket> {
  await ctx.clock.advance(0);
  const ws = FakeWebSocket.last;
  ws.serverOpen();
  ws.serverSend({ v: 1, t: "ready", d: { user_id: ULID.user } });
  return ws;
}

function ack(ws: FakeWebSocket, channelId = ULID.channel): void {
  ws.serverSend({ v: 1, t: "subscribed", d: { guild_id: ULID.guild, channel_id: channelId } });
}

function subscribes(ws: FakeWebSocket): string[] {
  return ws
    .frames()
    .filter((f) => f.t === "subscribe")
    .map((f) => String(f.d.channel_id));
}

beforeEach(() => FakeWebSocket.reset());

describe("GatewayClient connection", () => {
  it("connects to wss://<origin>/gateway/ws with the access token", async () => {
    const ctx = setup();
    ctx.gateway.connect();
    await ctx.clock.advance(0);
    assert.equal(FakeWebSocket.last.url, "wss://chat.example/gateway/ws?access_token=token-1");
    assert.equal(ctx.gateway.state, "connecting");
    FakeWebSocket.last.serverOpen();
    assert.equal(ctx.gateway.state, "open");
    FakeWebSocket.last.serverSend({ v: 1, t: "ready", d: { user_id: ULID.user } });
    assert.equal(ctx.gateway.state, "ready");

    const plain = setup({ url: "http://localhost:3000/app/" });
    plain.gateway.connect();
    await plain.clock.advance(0);
    assert.equal(FakeWebSocket.last.url, "ws://localhost:3000/gateway/ws?access_token=token-1");
  });

  it("sends subscriptions once ready, and re-sends them after a reconnect", async () => {
    const ctx = setup();
    ctx.gateway.subscribe(ULID.guild, ULID.channel);
    ctx.gateway.connect();
    const first = await ready(ctx);
    assert.deepEqual(first.frames(), [{ v: 1, t: "subscribe", d: { guild_id: ULID.guild, channel_id: ULID.channel } }]);
    ctx.gateway.subscribe(ULID.guild, CHANNEL_2);
    ctx.gateway.subscribe(ULID.guild, CHANNEL_2);
    assert.deepEqual(subscribes(first), [ULID.channel, CHANNEL_2]);

    ctx.gateway.unsubscribe(ULID.guild, ULID.channel);
    first.serverClose(1006);
    await ctx.clock.advance(30_000);
    const second = await ready(ctx);
    assert.notEqual(second, first);
    assert.deepEqual(subscribes(second), [CHANNEL_2]);
    assert.deepEqual(ctx.gateway.subscriptions, [{ guild_id: ULID.guild, channel_id: CHANNEL_2 }]);
  });

  it("forwards invalid frames and counts unknown events", async () => {
    const ctx = setup();
    ctx.gateway.connect();
    const ws = await ready(ctx);
    ws.serverSend("{nope");
    ws.serverSend({ v: 1, t: "brand_new_event", d: {} });
    ws.serverSend({ v: 1, t: "subscribed", d: { guild_id: 5 } });
    assert.deepEqual(
      ctx.invalid.map((i) => i.reason),
      ["not_json", "invalid_payload"],
    );
    assert.equal(ctx.gateway.unknownEventCount, 1);
  });

  it("close() stops for good: no reconnect, socket closed with 1000", async () => {
    const ctx = setup();
    ctx.gateway.connect();
    const ws = await ready(ctx);
    ctx.gateway.close();
    assert.equal(ws.closedByClient?.code, 1000);
    assert.equal(ctx.gateway.state, "stopped");
    assert.equal(ctx.states.at(-1)?.stopReason, "closed_by_client");
    await ctx.clock.advance(FAR_FUTURE_MS);
    assert.equal(FakeWebSocket.instances.length, 1);
  });
});

describe("close codes", () => {
  it("covers exactly the close codes of docs/ARCHITECTURE.md, with their reasons", () => {
    const doc = readFileSync(`${repoRoot}docs/ARCHITECTURE.md`, "utf8");
    const section = doc.split("## Close codes")[1]?.split("\n## ")[0] ?? "";
    const rows = [...section.matchAll(/^\| (\d{4}) \| `([a-z0-9_]+)` \|/gm)].map((m) => [Number(m[1]), m[2]]);
    assert.ok(rows.length >= 18, "the table was found");
    assert.deepEqual(
      Object.entries(CLOSE_CODES).map(([code, policy]) => [Number(code), policy.reason]).sort(),
      rows.sort(),
    );
  });

  const expected: { [code: number]: "reconnect" | "refresh" | string } = {
    1001: "reconnect",
    1002: "reconnect",
    1003: "reconnect",
    1007: "reconnect",
    1008: "reconnect",
    1009: "reconnect",
    1011: "reconnect",
    4001: "reconnect",
    4002: "reconnect",
    4003: "reconnect",
    4004: "stop:unsupported_version",
    4008: "reconnect",
    4009: "reconnect",
    4010: "refresh",
    4011: "reconnect",
    4012: "stop:access_revoked",
    4013: "stop:ip_banned",
    4014: "reconnect",
    // Not in the table: a clean close, no status, a dropped connection.
    1000: "reconnect",
    1005: "reconnect",
    1006: "reconnect",
  };

  for (const [codeText, behaviour] of Object.entries(expected)) {
    const code = Number(codeText);
    it(`${code} (${CLOSE_CODES[code]?.reason ?? "not listed"}): ${behaviour}`, async () => {
      const ctx = setup();
      ctx.gateway.subscribe(ULID.guild, ULID.channel);
      ctx.gateway.connect();
      const first = await ready(ctx);
      ack(first);
      first.serverClose(code);

      if (behaviour.startsWith("stop:")) {
        assert.equal(closeAction(code), "stop");
        assert.equal(ctx.gateway.state, "stopped");
        assert.equal(ctx.states.at(-1)?.stopReason, behaviour.slice(5));
        assert.equal(ctx.states.at(-1)?.closeCode, code);
        await ctx.clock.advance(FAR_FUTURE_MS);
        assert.equal(FakeWebSocket.instances.length, 1, "never reconnects");
        assert.throws(() => ctx.gateway.sendMessage({ guild_id: ULID.guild, channel_id: ULID.channel, content: "x" }), GatewayError);
        return;
      }

      assert.equal(closeAction(code), behaviour === "refresh" ? "refresh_then_reconnect" : "reconnect");
      assert.equal(ctx.gateway.state, "waiting");
      assert.equal(ctx.states.at(-1)?.closeCode, code);
      await ctx.clock.advance(1000);
      assert.equal(FakeWebSocket.instances.length, 2, "reconnected within the first backoff ceiling");
      const second = FakeWebSocket.last;
      if (behaviour === "refresh") {
        assert.deepEqual(ctx.tokens.calls.at(-1), { rejected: "token-1" });
        assert.match(second.url, /access_token=token-2$/);
      } else {
        assert.match(second.url, /access_token=token-1$/);
      }
      second.serverOpen();
      second.serverSend({ v: 1, t: "ready", d: { user_id: ULID.user } });
      assert.deepEqual(subscribes(second), [ULID.channel], "re-subscribed");
      assert.deepEqual(ctx.missed, [], "refetch waits for the subscription");
      ack(second);
      assert.deepEqual(ctx.missed, [{ closeCode: code }]);
    });
  }
});

describe("missed events", () => {
  it("are not reported on the first connection", async () => {
    const ctx = setup();
    ctx.gateway.subscribe(ULID.guild, ULID.channel);
    ctx.gateway.connect();
    ack(await ready(ctx));
    await ctx.clock.advance(10_000);
    assert.deepEqual(ctx.missed, []);
  });

  it("are reported after a resync (4011) even without subscriptions", async () => {
    const ctx = setup();
    ctx.gateway.connect();
    (await ready(ctx)).serverClose(4011, "resync");
    await ctx.clock.advance(1000);
    await ready(ctx);
    assert.deepEqual(ctx.missed, [{ closeCode: 4011 }]);
  });

  it("are reported after the resubscribe timeout when a subscribe is never acknowledged", async () => {
    const ctx = setup({ resubscribeTimeoutMs: 5000 });
    ctx.gateway.subscribe(ULID.guild, ULID.channel);
    ctx.gateway.connect();
    ack(await ready(ctx));
    FakeWebSocket.last.serverClose(1011);
    await ctx.clock.advance(1000);
    await ready(ctx);
    await ctx.clock.advance(4999);
    assert.deepEqual(ctx.missed, []);
    await ctx.clock.advance(1);
    assert.deepEqual(ctx.missed, [{ closeCode: 1011 }]);
  });

  it("are reported once, with the last close code, after several failed attempts", async () => {
    const ctx = setup();
    ctx.gateway.connect();
    (await ready(ctx)).serverClose(1001);
    await ctx.clock.advance(1000);
    FakeWebSocket.last.serverClose(1006); // the handshake failed
    await ctx.clock.advance(2000);
    await ready(ctx);
    assert.deepEqual(ctx.missed, [{ closeCode: 1006 }]);
  });
});

describe("reconnect backoff", () => {
  it("grows while handshakes fail, is capped, and resets once a connection is stable", async () => {
    const ctx = setup({ backoff: { baseMs: 1000, maxMs: 8000 }, stableAfterMs: 10_000, random: () => 0.999999 });
    ctx.gateway.connect();
    const delays: number[] = [];
    ctx.gateway.onStateChange((s) => {
      if (s.state === "waiting" && s.retryInMs !== undefined) delays.push(s.retryInMs);
    });
    for (let i = 0; i < 6; i += 1) {
      await ctx.clock.advance(0);
      FakeWebSocket.last.serverClose(1006);
      await ctx.clock.advance(delays.at(-1) ?? 0);
    }
    assert.deepEqual(delays, [1000, 2000, 4000, 8000, 8000, 8000]);

    const ws = await ready(ctx);
    await ctx.clock.advance(10_000);
    ws.serverClose(1001);
    assert.equal(delays.at(-1), 1000, "back to the base after a stable connection");
  });

  it("does not reset when the connection drops before it is stable", async () => {
    const ctx = setup({ backoff: { baseMs: 1000, maxMs: 30_000 }, random: () => 0.999999 });
    const delays: number[] = [];
    ctx.gateway.onStateChange((s) => {
      if (s.retryInMs !== undefined) delays.push(s.retryInMs);
    });
    ctx.gateway.connect();
    for (let i = 0; i < 3; i += 1) {
      const ws = await ready(ctx);
      await ctx.clock.advance(500);
      ws.serverClose(1011);
      await ctx.clock.advance(delays.at(-1) ?? 0);
    }
    assert.deepEqual(delays, [1000, 2000, 4000]);
  });

  it("tries a fresh token after two failed handshakes in a row", async () => {
    const ctx = setup();
    ctx.gateway.connect();
    await ctx.clock.advance(0);
    FakeWebSocket.last.serverClose(1006);
    await ctx.clock.advance(1000);
    assert.match(FakeWebSocket.last.url, /token-1$/);
    FakeWebSocket.last.serverClose(1006);
    await ctx.clock.advance(2000);
    assert.match(FakeWebSocket.last.url, /token-2$/);
  });
});

describe("token refresh", () => {
  it("refreshes the refreshBeforeExpiryMs before the token expires, then reconnects on 4010 with it", async () => {
    const ctx = setup({ refreshBeforeExpiryMs: 60_000 });
    ctx.gateway.connect();
    const ws = await ready(ctx);
    const callsAtReady = ctx.tokens.calls.length;
    await ctx.clock.advance(900_000 - 60_000 - 1);
    assert.equal(ctx.tokens.calls.length, callsAtReady, "not yet");
    await ctx.clock.advance(1);
    assert.deepEqual(ctx.tokens.calls.at(-1), { rejected: "token-1" });
    assert.equal(ctx.tokens.current?.token, "token-2");

    await ctx.clock.advance(60_000);
    ws.serverClose(4010, "token_expired");
    await ctx.clock.advance(1000);
    assert.match(FakeWebSocket.last.url, /access_token=token-2$/);
    assert.equal(ctx.tokens.counter, 2, "no second refresh was needed");
  });

  it("retries a refresh that failed for a transient reason", async () => {
    const ctx = setup({ refreshBeforeExpiryMs: 60_000 });
    ctx.gateway.connect();
    await ready(ctx);
    ctx.tokens.failWith = new TypeError("offline");
    await ctx.clock.advance(840_000);
    const failed = ctx.tokens.calls.length;
    assert.equal(ctx.gateway.state, "ready");
    ctx.tokens.failWith = undefined;
    await ctx.clock.advance(2000);
    assert.equal(ctx.tokens.calls.length, failed + 1);
    assert.equal(ctx.tokens.current?.token, "token-2");
    assert.equal(ctx.errors.length, 1);
  });

  it("stops when the session is refused (401)", async () => {
    const ctx = setup({ refreshBeforeExpiryMs: 60_000 });
    ctx.gateway.connect();
    const ws = await ready(ctx);
    ctx.tokens.failWith = new ApiError(401, "invalid_credentials");
    await ctx.clock.advance(840_000);
    assert.equal(ctx.gateway.state, "stopped");
    assert.equal(ctx.states.at(-1)?.stopReason, "unauthenticated");
    assert.equal(ws.closedByClient?.code, 1000);
    await ctx.clock.advance(FAR_FUTURE_MS);
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  it("stops before connecting when there is no session", async () => {
    const ctx = setup();
    ctx.tokens.failWith = new ApiError(401, "invalid_credentials");
    ctx.gateway.connect();
    await ctx.clock.advance(0);
    assert.equal(ctx.gateway.state, "stopped");
    assert.equal(FakeWebSocket.instances.length, 0);
  });
});

describe("outgoing frames are bounded", () => {
  it("rejects a message while not connected instead of queueing it", async () => {
    const ctx = setup();
    const send = () => ctx.gateway.sendMessage({ guild_id: ULID.guild, channel_id: ULID.channel, content: "hi" });
    assert.throws(send, (e: unknown) => e instanceof GatewayError && e.code === "not_connected");
    ctx.gateway.connect();
    const ws = await ready(ctx);
    send();
    assert.deepEqual(ws.frames().at(-1), {
      v: 1,
      t: "message_create",
      d: { guild_id: ULID.guild, channel_id: ULID.channel, content: "hi" },
    });
    ws.serverClose(1006);
    assert.throws(send, (e: unknown) => e instanceof GatewayError && e.code === "not_connected");
  });

  it("caps the number of subscriptions", () => {
    const ctx = setup({ maxSubscriptions: 2 });
    ctx.gateway.subscribe(ULID.guild, "A");
    ctx.gateway.subscribe(ULID.guild, "B");
    ctx.gateway.subscribe(ULID.guild, "B");
    assert.throws(
      () => ctx.gateway.subscribe(ULID.guild, "C"),
      (e: unknown) => e instanceof GatewayError && e.code === "too_many_subscriptions",
    );
  });

  it("keeps under the server's ingress window, deferring subscribes and refusing messages", async () => {
    const ctx = setup({ maxFramesPerWindow: 3, sendWindowMs: 10_000 });
    for (const id of ["A", "B", "C", "D"]) ctx.gateway.subscribe(ULID.guild, id);
    ctx.gateway.connect();
    const ws = await ready(ctx);
    assert.deepEqual(subscribes(ws), ["A", "B", "C"]);
    assert.throws(
      () => ctx.gateway.sendMessage({ guild_id: ULID.guild, channel_id: "A", content: "x" }),
      (e: unknown) => e instanceof GatewayError && e.code === "rate_limited",
    );
    await ctx.clock.advance(10_000);
    assert.deepEqual(subscribes(ws), ["A", "B", "C", "D"]);
  });
});

describe("replay positions", () => {
  const GUILD_2 = "01HZX3N4B5C6D7E8F9G0H1J2K8";
  const GUILD_3 = "01HZX3N4B5C6D7E8F9G0H1J2K9";
  const CHANNEL_3 = "01HZX3N4B5C6D7E8F9G0H1J2KA";
  const GUILD_LOG = `g:${ULID.guild}`;
  const GUILD_2_LOG = `g:${GUILD_2}`;
  const USER_LOG = `u:${ULID.user}`;

  /** Opens a positioned socket whose ready carries the user log's baseline. */
  async function readyAt(ctx: Ctx, userToken?: string): Promise<FakeWebSocket> {
    await ctx.clock.advance(0);
    const ws = FakeWebSocket.last;
    ws.serverOpen();
    const p = userToken === undefined ? {} : { p: { [USER_LOG]: userToken } };
    ws.serverSend({ v: 1, t: "ready", d: { user_id: ULID.user }, ...p });
    return ws;
  }

  /** A logged event of a type this client does not know (its `p` counts all the same). */
  function logged(positions: Record<string, string>) {
    return { v: 1, t: "brand_new_event", d: {}, p: positions };
  }

  function subscribedIn(guild: string, channel: string, token?: string) {
    const p = token === undefined ? {} : { p: { [`g:${guild}`]: token } };
    return { v: 1, t: "subscribed", d: { guild_id: guild, channel_id: channel }, ...p };
  }

  function resumed(scope: string, outcome: { replayed: number; through: string } | "resync") {
    if (outcome === "resync") return { v: 1, t: "resumed", d: { scope, replayed: 0, resync: true } };
    return { v: 1, t: "resumed", d: { scope, replayed: outcome.replayed, resync: false }, p: { [scope]: outcome.through } };
  }

  /** The types of the frames the client sent, with the subscribes' channels. */
  function sentTypes(ws: FakeWebSocket): string[] {
    return ws.frames().map((f) => (f.t === "subscribe" ? `subscribe ${String(f.d.channel_id)}` : f.t));
  }

  /** A positioned client subscribed in the guild, with positions held in both logs, whose socket then drops. */
  async function heldThenDropped(ctx: Ctx, user = "0a.5", guild = "0c.9"): Promise<FakeWebSocket> {
    ctx.gateway.subscribe(ULID.guild, ULID.channel);
    ctx.gateway.connect();
    const first = await readyAt(ctx, user);
    first.serverSend(subscribedIn(ULID.guild, ULID.channel, guild));
    first.serverClose(1006);
    await ctx.clock.advance(1000);
    return first;
  }

  it("asks for positions only when told to", async () => {
    const ctx = setup({ positions: true });
    ctx.gateway.connect();
    await ctx.clock.advance(0);
    assert.equal(FakeWebSocket.last.url, "wss://chat.example/gateway/ws?positions=1&access_token=token-1");
  });

  it("keeps the newest position per followed log from every frame", async () => {
    const ctx = setup({ positions: true });
    ctx.gateway.connect();
    const ws = await readyAt(ctx, "00ff.7");
    // Not followed: another user's log, a guild this socket is not subscribed in.
    ws.serverSend(logged({ [USER_LOG]: "00ff.8", [`u:${ULID.message}`]: "0a.1", [GUILD_LOG]: "0a.1" }));
    assert.deepEqual(ctx.gateway.positions(), { [USER_LOG]: "00ff.8" });
    ws.serverSend(subscribedIn(ULID.guild, ULID.channel, "0a.3"));
    ws.serverSend(logged({ [GUILD_LOG]: "0a.4" }));
    // Within an epoch, an older offset does not win.
    ws.serverSend(subscribedIn(ULID.guild, CHANNEL_2, "0a.2"));
    assert.deepEqual(ctx.gateway.positions(), { [USER_LOG]: "00ff.8", [GUILD_LOG]: "0a.4" });
    // A new epoch replaces the log's position; offsets past 2^53 compare exactly.
    ws.serverSend(logged({ [USER_LOG]: "0b.1" }));
    ws.serverSend(logged({ [USER_LOG]: "0b.18446744073709551615" }));
    ws.serverSend(logged({ [USER_LOG]: "0b.18446744073709551614" }));
    assert.equal(ctx.gateway.positions()[USER_LOG], "0b.18446744073709551615");
    // A malformed p drops the frame, positions included.
    ws.serverSend(logged({ [GUILD_LOG]: "0a" }));
    assert.equal(ctx.gateway.positions()[GUILD_LOG], "0a.4");
    assert.deepEqual(
      ctx.invalid.map((i) => i.reason),
      ["bad_envelope"],
    );
  });

  it("hands a frame's positions to the app's handlers too", async () => {
    const ctx = setup({ positions: true });
    const seen: unknown[] = [];
    ctx.gateway.on("subscribed", (_d, _t, p) => seen.push(p));
    ctx.gateway.connect();
    const ws = await readyAt(ctx, "0a.1");
    ws.serverSend(subscribedIn(ULID.guild, ULID.channel, "0c.3"));
    ws.serverSend(subscribedIn(ULID.guild, CHANNEL_2));
    assert.deepEqual(seen, [{ [GUILD_LOG]: "0c.3" }, undefined]);
  });

  it("accepts frames up to the positions headroom only when it asked for positions", async () => {
    const big = { v: 1, t: "ready", d: { user_id: ULID.user, pad: "x".repeat(66_000) }, p: { [USER_LOG]: "0a.1" } };
    const plain = setup();
    plain.gateway.connect();
    (await ready(plain)).serverSend(big);
    assert.deepEqual(plain.invalid.map((i) => i.reason), ["too_large"]);
    const positioned = setup({ positions: true });
    positioned.gateway.connect();
    (await readyAt(positioned, "0a.0")).serverSend(big);
    assert.deepEqual(positioned.invalid, []);
  });

  it("resumes after a reconnect before any subscribe, quoting the positions held at the drop", async () => {
    const ctx = setup({ positions: true });
    ctx.gateway.subscribe(GUILD_2, CHANNEL_3);
    await heldThenDropped(ctx);
    FakeWebSocket.last.serverClose(1006); // a failed handshake: still the same gap
    await ctx.clock.advance(2000);
    // The new socket's baseline is past the gap: the resume quotes the old position.
    const second = await readyAt(ctx, "0a.8");
    assert.deepEqual(sentTypes(second), ["resume", `subscribe ${CHANNEL_3}`, `subscribe ${ULID.channel}`]);
    assert.deepEqual(second.frames()[0], {
      v: 1,
      t: "resume",
      d: { positions: { [USER_LOG]: "0a.5", [GUILD_LOG]: "0c.9" } },
    });
    // Held where the gap starts until the logs are answered.
    assert.deepEqual(ctx.gateway.positions(), { [USER_LOG]: "0a.5", [GUILD_LOG]: "0c.9" });
    assert.deepEqual(ctx.missed, [], "reported once the resume is answered");
  });

  it("closes each log's gap with its own resumed, and reports which logs were replayed", async () => {
    const ctx = setup({ positions: true });
    await heldThenDropped(ctx);
    const second = await readyAt(ctx, "0a.8");
    // The user's log, at once: two replayed events, then its resumed.
    second.serverSend(logged({ [USER_LOG]: "0a.6" }));
    second.serverSend(logged({ [USER_LOG]: "0a.7" }));
    second.serverSend(resumed(USER_LOG, { replayed: 2, through: "0a.7" }));
    // Up to the replay's end, then past it to the socket's baseline.
    assert.equal(ctx.gateway.positions()[USER_LOG], "0a.8");
    // The guild's, after its first subscribed (which carries no baseline).
    second.serverSend(subscribedIn(ULID.guild, ULID.channel));
    assert.deepEqual(ctx.missed, [], "the guild's replay is still to come");
    second.serverSend(logged({ [GUILD_LOG]: "0c.11" }));
    assert.equal(ctx.gateway.positions()[GUILD_LOG], "0c.11");
    second.serverSend(resumed(GUILD_LOG, { replayed: 1, through: "0c.12" }));
    assert.deepEqual(ctx.gateway.positions(), { [USER_LOG]: "0a.8", [GUILD_LOG]: "0c.12" });
    assert.deepEqual(ctx.missed, [
      {
        closeCode: 1006,
        positions: { [USER_LOG]: "0a.5", [GUILD_LOG]: "0c.9" },
        resume: { replayed: [USER_LOG, GUILD_LOG], resync: [], unanswered: [] },
      },
    ]);
    // Live again: positions move as usual.
    second.serverSend(logged({ [GUILD_LOG]: "0c.13", [USER_LOG]: "0a.9" }));
    assert.deepEqual(ctx.gateway.positions(), { [USER_LOG]: "0a.9", [GUILD_LOG]: "0c.13" });
  });

  it("reports the logs to refetch: answered resync, followed without a position, never answered", async () => {
    const ctx = setup({ positions: true, resubscribeTimeoutMs: 5000 });
    ctx.gateway.subscribe(GUILD_3, CHANNEL_3); // never gets a baseline
    ctx.gateway.subscribe(GUILD_2, CHANNEL_2); // its subscribe will be refused
    ctx.gateway.subscribe(ULID.guild, ULID.channel);
    ctx.gateway.connect();
    const first = await readyAt(ctx, "0a.5");
    first.serverSend(subscribedIn(GUILD_3, CHANNEL_3));
    first.serverSend(subscribedIn(GUILD_2, CHANNEL_2, "0d.1"));
    first.serverSend(subscribedIn(ULID.guild, ULID.channel, "0c.9"));
    first.serverClose(1001);
    await ctx.clock.advance(1000);

    const second = await readyAt(ctx, "0a.8");
    assert.deepEqual(second.frames()[0]?.d, { positions: { [USER_LOG]: "0a.5", [GUILD_2_LOG]: "0d.1", [GUILD_LOG]: "0c.9" } });
    second.serverSend(resumed(USER_LOG, "resync"));
    // Resync: what this socket delivered (its baseline) is held; the app refetches the rest.
    assert.equal(ctx.gateway.positions()[USER_LOG], "0a.8");
    second.serverSend(subscribedIn(GUILD_3, CHANNEL_3, "0e.4"));
    second.serverSend(subscribedIn(ULID.guild, ULID.channel));
    second.serverSend(resumed(GUILD_LOG, "resync"));
    assert.equal(ctx.gateway.positions()[GUILD_LOG], undefined, "no position until a live frame of the guild");
    assert.deepEqual(ctx.missed, []);
    await ctx.clock.advance(5000);
    assert.deepEqual(ctx.missed, [
      {
        closeCode: 1001,
        positions: { [USER_LOG]: "0a.5", [GUILD_2_LOG]: "0d.1", [GUILD_LOG]: "0c.9" },
        resume: { replayed: [], resync: [`g:${GUILD_3}`, USER_LOG, GUILD_LOG], unanswered: [GUILD_2_LOG] },
      },
    ]);
    second.serverSend(logged({ [GUILD_LOG]: "0c.20" }));
    assert.equal(ctx.gateway.positions()[GUILD_LOG], "0c.20");
    // The unanswered log stays where its gap starts.
    assert.equal(ctx.gateway.positions()[GUILD_2_LOG], "0d.1");
  });

  it("does not advance a log past its gap while its replay is pending, so a drop then loses nothing", async () => {
    const ctx = setup({ positions: true });
    await heldThenDropped(ctx, "0a.5", "0c.9");
    const second = await readyAt(ctx, "0a.8");
    // Live frames past the gap, before the replays: a user event also in
    // the guild's log (the socket is not in the guild yet), and one past
    // the user's baseline.
    second.serverSend(logged({ [USER_LOG]: "0a.9", [GUILD_LOG]: "0c.30" }));
    assert.deepEqual(ctx.gateway.positions(), { [USER_LOG]: "0a.5", [GUILD_LOG]: "0c.9" });
    // The user's replay: frames up to the baseline are replayed ones.
    second.serverSend(logged({ [USER_LOG]: "0a.6" }));
    // The guild's replay, after its first subscribed: two of three frames.
    second.serverSend(subscribedIn(ULID.guild, ULID.channel));
    second.serverSend(logged({ [GUILD_LOG]: "0c.10" }));
    second.serverSend(logged({ [GUILD_LOG]: "0c.12" }));
    assert.deepEqual(ctx.gateway.positions(), { [USER_LOG]: "0a.6", [GUILD_LOG]: "0c.12" });
    second.serverClose(1006);
    await ctx.clock.advance(2000);

    // The next resume quotes the replays' progress, not the positions past the gap.
    const third = await readyAt(ctx, "0a.11");
    assert.deepEqual(third.frames()[0], {
      v: 1,
      t: "resume",
      d: { positions: { [USER_LOG]: "0a.6", [GUILD_LOG]: "0c.12" } },
    });
    third.serverSend(resumed(USER_LOG, { replayed: 3, through: "0a.9" }));
    third.serverSend(subscribedIn(ULID.guild, ULID.channel));
    third.serverSend(logged({ [GUILD_LOG]: "0c.14" }));
    third.serverSend(resumed(GUILD_LOG, { replayed: 1, through: "0c.14" }));
    assert.deepEqual(ctx.gateway.positions(), { [USER_LOG]: "0a.11", [GUILD_LOG]: "0c.14" });
    // One report for the whole outage, with the positions of its first drop.
    assert.deepEqual(ctx.missed, [
      {
        closeCode: 1006,
        positions: { [USER_LOG]: "0a.5", [GUILD_LOG]: "0c.9" },
        resume: { replayed: [USER_LOG, GUILD_LOG], resync: [], unanswered: [] },
      },
    ]);
  });

  it("keeps a resync for the report when the socket drops before it", async () => {
    const ctx = setup({ positions: true });
    await heldThenDropped(ctx);
    const second = await readyAt(ctx, "0a.8");
    second.serverSend(resumed(USER_LOG, "resync"));
    second.serverClose(1006);
    await ctx.clock.advance(2000);
    const third = await readyAt(ctx, "0a.9");
    // The user's log resumes from what the second socket delivered.
    assert.deepEqual(third.frames()[0]?.d, { positions: { [USER_LOG]: "0a.8", [GUILD_LOG]: "0c.9" } });
    third.serverSend(resumed(USER_LOG, { replayed: 0, through: "0a.8" }));
    third.serverSend(subscribedIn(ULID.guild, ULID.channel));
    third.serverSend(resumed(GUILD_LOG, { replayed: 0, through: "0c.9" }));
    assert.deepEqual(ctx.missed.map((m) => m.resume), [{ replayed: [GUILD_LOG], resync: [USER_LOG], unanswered: [] }]);
  });

  it("resumes only the logs it still follows, and refetches everything when it held none", async () => {
    const ctx = setup({ positions: true });
    await heldThenDropped(ctx);
    ctx.gateway.unsubscribe(ULID.guild, ULID.channel);
    const second = await readyAt(ctx, "0a.8");
    assert.deepEqual(second.frames(), [{ v: 1, t: "resume", d: { positions: { [USER_LOG]: "0a.5" } } }]);
    assert.deepEqual(ctx.gateway.positions(), { [USER_LOG]: "0a.5" });

    const bare = setup({ positions: true });
    bare.gateway.connect();
    (await readyAt(bare)).serverClose(1006);
    await bare.clock.advance(1000);
    const next = await readyAt(bare, "0a.3");
    assert.deepEqual(next.frames(), [], "nothing to resume");
    assert.deepEqual(bare.missed, [{ closeCode: 1006 }]);
  });

  it("forgets the positions of another user", async () => {
    const ctx = setup({ positions: true });
    await heldThenDropped(ctx);
    await ctx.clock.advance(0);
    const ws = FakeWebSocket.last;
    ws.serverOpen();
    ws.serverSend({ v: 1, t: "ready", d: { user_id: ULID.message }, p: { [`u:${ULID.message}`]: "0f.2" } });
    assert.deepEqual(sentTypes(ws), [`subscribe ${ULID.channel}`]);
    ws.serverSend(subscribedIn(ULID.guild, ULID.channel, "0c.20"));
    assert.deepEqual(ctx.missed, [{ closeCode: 1006 }]);
    assert.deepEqual(ctx.gateway.positions(), { [`u:${ULID.message}`]: "0f.2", [GUILD_LOG]: "0c.20" });
  });

  it("without the positions option, never resumes: the app refetches", async () => {
    const ctx = setup();
    ctx.gateway.subscribe(ULID.guild, ULID.channel);
    ctx.gateway.connect();
    const first = await ready(ctx);
    first.serverSend(subscribedIn(ULID.guild, ULID.channel, "0c.9"));
    first.serverClose(1006);
    await ctx.clock.advance(1000);
    const second = await ready(ctx);
    assert.deepEqual(sentTypes(second), [`subscribe ${ULID.channel}`]);
    ack(second);
    assert.deepEqual(ctx.missed, [{ closeCode: 1006 }]);
    assert.deepEqual(ctx.gateway.positions(), {});
  });

  it("resume() after subscribing: holds the log at the replay's progress until its resumed", async () => {
    const ctx = setup({ positions: true });
    ctx.gateway.connect();
    const ws = await readyAt(ctx, "0a.9");
    ws.serverSend(logged({ [USER_LOG]: "0a.10" }));
    const resumedSeen: unknown[] = [];
    ctx.gateway.on("resumed", (d) => resumedSeen.push(d));
    ctx.gateway.resume({ [USER_LOG]: "0a.5" });
    assert.deepEqual(ws.frames().at(-1), { v: 1, t: "resume", d: { positions: { [USER_LOG]: "0a.5" } } });
    assert.deepEqual(ctx.gateway.positions(), { [USER_LOG]: "0a.5" });
    // Already pending: left out.
    ctx.gateway.resume({ [USER_LOG]: "0a.1" });
    assert.equal(ws.frames().length, 1);
    // Live, after the resume: past what the socket had delivered, so not a replayed frame.
    ws.serverSend(logged({ [USER_LOG]: "0a.11" }));
    ws.serverSend(logged({ [USER_LOG]: "0a.6" }));
    ws.serverSend(logged({ [USER_LOG]: "0a.7" }));
    assert.deepEqual(ctx.gateway.positions(), { [USER_LOG]: "0a.7" });
    ws.serverSend(resumed(USER_LOG, { replayed: 2, through: "0a.9" }));
    assert.deepEqual(ctx.gateway.positions(), { [USER_LOG]: "0a.11" });
    assert.deepEqual(resumedSeen, [{ scope: USER_LOG, replayed: 2, resync: false }]);

    ctx.gateway.resume({ [USER_LOG]: "0a.7" });
    ws.serverSend(logged({ [USER_LOG]: "0a.8" }));
    ws.serverClose(1006);
    await ctx.clock.advance(1000);
    const next = await readyAt(ctx, "0a.12");
    assert.deepEqual(next.frames()[0]?.d, { positions: { [USER_LOG]: "0a.8" } });
  });

  it("refuses a resume it cannot send", async () => {
    const ctx = setup({ positions: true });
    assert.throws(() => ctx.gateway.resume({}), (e: unknown) => e instanceof GatewayError && e.code === "not_connected");
    ctx.gateway.connect();
    await readyAt(ctx, "0a.0");
    assert.throws(() => ctx.gateway.resume({ [GUILD_LOG]: "0a" }), TypeError);
    const many = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`g:${i}`, "0a.1"]));
    assert.throws(() => ctx.gateway.resume(many), TypeError);
  });
});

describe("ping and heartbeat", () => {
  it("sends a ping with its nonce and hands the pong to handlers", async () => {
    const ctx = setup();
    const pongs: string[] = [];
    ctx.gateway.on("pong", (d) => pongs.push(d.nonce));
    assert.throws(() => ctx.gateway.ping("n1"), (e: unknown) => e instanceof GatewayError && e.code === "not_connected");
    ctx.gateway.connect();
    const ws = await ready(ctx);
    ctx.gateway.ping("n1");
    ctx.gateway.ping();
    assert.deepEqual(ws.frames(), [
      { v: 1, t: "ping", d: { nonce: "n1" } },
      { v: 1, t: "ping", d: { nonce: "" } },
    ]);
    ws.serverSend({ v: 1, t: "pong", d: { nonce: "n1" } });
    assert.deepEqual(pongs, ["n1"]);
    assert.throws(() => ctx.gateway.ping("é".repeat(33)), TypeError);
  });

  it("is off by default", async () => {
    const ctx = setup();
    ctx.gateway.connect();
    const ws = await ready(ctx);
    await ctx.clock.advance(120_000);
    assert.deepEqual(ws.frames(), []);
  });

  it("pings every interval while pongs come back", async () => {
    const ctx = setup({ heartbeat: { intervalMs: 20_000, timeoutMs: 5000 } });
    ctx.gateway.connect();
    const ws = await ready(ctx);
    await ctx.clock.advance(19_999);
    assert.deepEqual(ws.frames(), []);
    for (const nonce of ["hb-1", "hb-2", "hb-3"]) {
      await ctx.clock.advance(1);
      assert.deepEqual(ws.frames().at(-1), { v: 1, t: "ping", d: { nonce } });
      await ctx.clock.advance(4000);
      ws.serverSend({ v: 1, t: "pong", d: { nonce } });
      await ctx.clock.advance(19_999);
    }
    assert.equal(ctx.gateway.state, "ready");
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  it("lets go of a socket whose pong is late and reconnects, reporting missed events", async () => {
    const ctx = setup({ heartbeat: { intervalMs: 20_000, timeoutMs: 5000 } });
    ctx.gateway.connect();
    const first = await ready(ctx);
    await ctx.clock.advance(20_000);
    first.serverSend({ v: 1, t: "pong", d: { nonce: "not-ours" } });
    await ctx.clock.advance(4999);
    assert.equal(ctx.gateway.state, "ready");
    await ctx.clock.advance(1);
    assert.equal(first.closedByClient?.code, 1000);
    assert.equal(ctx.gateway.state, "waiting");
    assert.equal(ctx.states.at(-1)?.closeCode, 1006);
    first.serverClose(1000); // the close completing later changes nothing
    await ctx.clock.advance(1000);
    assert.equal(FakeWebSocket.instances.length, 2);
    await ready(ctx);
    assert.deepEqual(ctx.missed, [{ closeCode: 1006 }]);
    assert.equal(FakeWebSocket.instances.length, 2);
  });
});
