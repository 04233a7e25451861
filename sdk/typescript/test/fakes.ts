// Test doubles: a hand-driven clock, a scripted WebSocket, a token provider.

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import type { AccessToken, TokenProvider } from "../src/session.js";
import type { Timers } from "../src/timers.js";
import type { WebSocketLike } from "../src/gateway.js";

/** The repository root (tests run from dist/test). */
export const repoRoot = fileURLToPath(new URL("../../../../", import.meta.url));

export function readRepoJson(relative: string): unknown {
  return JSON.parse(readFileSync(`${repoRoot}${relative}`, "utf8"));
}

/** Lets pending promise callbacks run. */
export function flush(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

interface Task {
  readonly id: number;
  readonly at: number;
  readonly callback: () => void;
}

/** Timers and a clock that move only when told to. */
export class FakeClock implements Timers {
  now = 1_000_000;
  private tasks: Task[] = [];
  private nextId = 1;

  readonly clock = (): number => this.now;

  setTimeout(callback: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.tasks.push({ id, at: this.now + Math.max(0, ms), callback });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.tasks = this.tasks.filter((task) => task.id !== handle);
  }

  /** Delays of the timers pending now, soonest first. */
  pending(): number[] {
    return this.tasks.map((task) => task.at - this.now).sort((a, b) => a - b);
  }

  /** Moves time forward, running due timers in order and letting promises settle. */
  async advance(ms: number): Promise<void> {
    const end = this.now + ms;
    for (;;) {
      await flush();
      const due = this.tasks.filter((task) => task.at <= end).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (due === undefined) break;
      this.tasks = this.tasks.filter((task) => task !== due);
      this.now = Math.max(this.now, due.at);
      due.callback();
    }
    this.now = end;
    await flush();
  }
}

/** A WebSocket the test plays the server side of. */
export class FakeWebSocket implements WebSocketLike {
  static instances: FakeWebSocket[] = [];

  static reset(): void {
    FakeWebSocket.instances = [];
  }

  static get last(): FakeWebSocket {
    const ws = FakeWebSocket.instances.at(-1);
    if (ws === undefined) throw new Error("no socket was opened");
    return ws;
  }

  readyState = 0;
  readonly sent: string[] = [];
  closedByClient: { code?: number; reason?: string } | undefined;
  onopen: ((event: Event) => void) | null = null;
  onmessage: ((event: MessageEvent) => void) | null = null;
  onclose: ((event: CloseEvent) => void) | null = null;
  onerror: ((event: Event) => void) | null = null;

  constructor(readonly url: string) {
    FakeWebSocket.instances.push(this);
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(data);
  }

  close(code?: number, reason?: string): void {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }

  /** The frames the client sent, parsed. */
  frames(): { v: number; t: string; d: Record<string, unknown> }[] {
    return this.sent.map((text) => JSON.parse(text));
  }

  serverOpen(): void {
    this.readyState = 1;
    this.onopen?.(new Event("open"));
  }

  serverSend(frame: unknown): void {
    const data = typeof frame === "string" ? frame : JSON.stringify(frame);
    this.onmessage?.({ data } as MessageEvent);
  }

  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason, wasClean: code !== 1006 } as CloseEvent);
  }
}

/** A token provider that records what it was asked. */
export class FakeTokens implements TokenProvider {
  calls: { rejected?: string; minValidityMs?: number }[] = [];
  counter = 0;
  failWith: unknown;

  constructor(private readonly clock: FakeClock, private readonly ttlMs = 900_000) {}

  current: AccessToken | undefined;

  async accessToken(options: { rejected?: string; minValidityMs?: number } = {}): Promise<AccessToken> {
    this.calls.push({ ...options });
    if (this.failWith !== undefined) throw this.failWith;
    const stale =
      this.current === undefined ||
      options.rejected === this.current.token ||
      this.current.expiresAtMs - this.clock.now <= (options.minValidityMs ?? 0);
    if (stale) {
      this.counter += 1;
      this.current = { token: `token-${this.counter}`, expiresAtMs: this.clock.now + this.ttlMs };
    }
    return this.current as AccessToken;
  }
}

export const ULID = {
  user: "01HZX3N4B5C6D7E8F9G0H1J2K0",
  guild: "01HZX3N4B5C6D7E8F9G0H1J2K3",
  channel: "01HZX3N4B5C6D7E8F9G0H1J2K4",
  message: "01HZX3N4B5C6D7E8F9G0H1J2K7",
};

/** A `message_create` payload that the manifest's schema accepts. */
export function sampleMessage(): Record<string, unknown> {
  return {
    message_id: ULID.message,
    guild_id: ULID.guild,
    channel_id: ULID.channel,
    author_id: ULID.user,
    content: "hello",
    markdown_tokens: [{ type: "paragraph_start" }, { type: "text", text: "hello" }, { type: "paragraph_end" }],
    attachments: [],
    reactions: [],
    created_at_unix: 1_767_225_600,
  };
}
