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
