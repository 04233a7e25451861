// The flow an example page follows, end to end against fakes: log in, list
// guilds and channels, read history, go live, send a message. It also pins
// the public types: it only compiles if the generated signatures fit.

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { GatewayClient, RestClient, type Message, type Rest } from "../src/index.js";
import { FakeClock, FakeWebSocket, sampleMessage, ULID } from "./fakes.js";

const json = (body: unknown): Response => new Response(JSON.stringify(body), { status: 200, headers: { "content-type": "application/json" } });

describe("example flow", () => {
  it("logs in, lists, reads history, receives and sends messages", async () => {
    FakeWebSocket.reset();
    const clock = new FakeClock();
    const seen: string[] = [];
    const rest = new RestClient({
      baseUrl: "https://chat.example/api",
      timers: clock,
      now: clock.clock,
      fetch: async (input, init) => {
        const url = new URL(String(input));
        seen.push(`${init?.method} ${url.pathname}${url.search}`);
        switch (`${init?.method} ${url.pathname}`) {
          case "POST /api/auth/login":
            return json({ access_token: "a".repeat(40), refresh_token: "r".repeat(40), expires_in_secs: 900 });
          case "GET /api/guilds":
            return json({ guilds: [{ guild_id: ULID.guild, name: "Home", visibility: "private" }] });
          case `GET /api/guilds/${ULID.guild}/channels`:
            return json({ channels: [{ channel_id: ULID.channel, name: "general", kind: "text" }] });
          case `GET /api/guilds/${ULID.guild}/channels/${ULID.channel}/messages`:
            return json({ messages: [sampleMessage()], next_before: ULID.message });
          case `POST /api/guilds/${ULID.guild}/channels/${ULID.channel}/messages`:
            return json(sampleMessage());
          default:
            return new Response("", { status: 404 });
        }
      },
    });

    await rest.authLogin({ username: "ada", password: "correct horse battery" });
    const { guilds } = await rest.guildsList();
    const guild = guilds[0];
    assert.ok(guild);
    const { channels } = await rest.channelsList({ guild_id: guild.guild_id });
    const channel = channels[0];
    assert.ok(channel);
    const path = { guild_id: guild.guild_id, channel_id: channel.channel_id };
    const query: Rest.MessagesListQuery = { limit: 50 };
    const page = await rest.messagesList(path, { query });
    const timeline: string[] = page.messages.map((m) => m.content);

    const gateway = new GatewayClient({
      url: "https://chat.example",
      tokens: rest.session,
      WebSocket: FakeWebSocket,
      timers: clock,
      now: clock.clock,
    });
    gateway.on("message_create", (m: Message) => {
      if (m.channel_id === channel.channel_id) timeline.push(m.content);
    });
    gateway.subscribe(guild.guild_id, channel.channel_id);
    gateway.connect();
    await clock.advance(0);
    const ws = FakeWebSocket.last;
    assert.equal(ws.url, `wss://chat.example/gateway/ws?access_token=${"a".repeat(40)}`);
    ws.serverOpen();
    ws.serverSend({ v: 1, t: "ready", d: { user_id: ULID.user } });
    ws.serverSend({ v: 1, t: "message_create", d: { ...sampleMessage(), content: "live" } });

    const sent = await rest.messagesCreate(path, { content: "hello" });
    assert.equal(sent.message_id, ULID.message);
    gateway.close();

    assert.deepEqual(timeline, ["hello", "live"]);
    assert.deepEqual(seen, [
      "POST /api/auth/login",
      "GET /api/guilds",
      `GET /api/guilds/${ULID.guild}/channels`,
      `GET /api/guilds/${ULID.guild}/channels/${ULID.channel}/messages?limit=50`,
      `POST /api/guilds/${ULID.guild}/channels/${ULID.channel}/messages`,
    ]);
  });
});
