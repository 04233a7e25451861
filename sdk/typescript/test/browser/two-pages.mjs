// Two browser pages of the example chat (example/) against a real Filament
// server.
//
//   node test/browser/two-pages.mjs --origin http://127.0.0.1:PORT
//
// The script serves example/ and dist/ from a small HTTP server of its own
// (port 0) that also forwards /api/* and /gateway/ws (websocket upgrade
// included) to --origin, so the page, the api and the gateway share one
// origin as in production. It prepares an owner, a member, a guild with a
// text channel and the membership over REST, then drives Chromium through
// playwright-core: both users log in and open the channel, a message typed
// in page A shows up in both pages, the owner kicks the member from page A's
// member list, and the channel and the guild leave page B's lists.
//
// Needs `npm run build` first (dist/example/app.js). Exit code 0 on success;
// otherwise 1 with what went wrong, the pages' console output and their
// visible state. Options: --chromium PATH (default /usr/bin/chromium, or
// $CHROMIUM), --timeout MS per wait (default 15000), --deadline MS for the
// whole run (default 120000).

import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { chromium } from "playwright-core";

const PACKAGE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
/** What the static side serves: URL prefix → directory. Nothing else is readable. */
const STATIC_ROOTS = {
  "/example/": path.join(PACKAGE_DIR, "example"),
  "/dist/": path.join(PACKAGE_DIR, "dist"),
};
const CONTENT_TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".map": "application/json; charset=utf-8",
  ".json": "application/json; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".ts": "text/plain; charset=utf-8",
};
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const PASSWORD = "example page password 1";

/** A failed expectation: reported without a stack trace. */
class Failure extends Error {}

function usage(message) {
  console.error(`two-pages: ${message}`);
  console.error("usage: node test/browser/two-pages.mjs --origin http://HOST:PORT [--chromium PATH] [--timeout MS] [--deadline MS]");
  process.exit(2);
}

function options() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        origin: { type: "string" },
        chromium: { type: "string" },
        timeout: { type: "string" },
        deadline: { type: "string" },
      },
      strict: true,
    }));
  } catch (error) {
    usage(error.message);
  }
  if (values.origin === undefined) usage("--origin is required");
  let origin;
  try {
    origin = new URL(values.origin);
  } catch {
    usage(`--origin ${values.origin} is not a URL`);
  }
  if (origin.protocol !== "http:") usage("--origin must be http://");
  const number = (raw, fallback, name) => {
    if (raw === undefined) return fallback;
    const n = Number(raw);
    if (!Number.isInteger(n) || n <= 0) usage(`--${name} must be a positive integer`);
    return n;
  };
  return {
    origin,
    chromium: values.chromium ?? process.env.CHROMIUM ?? "/usr/bin/chromium",
    timeoutMs: number(values.timeout, 15_000, "timeout"),
    deadlineMs: number(values.deadline, 120_000, "deadline"),
  };
}

// ---------------------------------------------------------------------------
// The page's origin: static files plus a pass-through to the server.

/** Starts the server on 127.0.0.1:0; resolves to `{ url, close }`. */
async function startFrontServer(upstream) {
  const sockets = new Set();
  const track = (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  };

  const server = http.createServer((req, res) => {
    const pathname = new URL(req.url, "http://front").pathname;
    if (pathname === "/api" || pathname.startsWith("/api/")) {
      forwardRequest(upstream, req, res);
    } else if (pathname === "/" || pathname === "/example") {
      res.writeHead(302, { location: "/example/index.html" }).end();
    } else {
      serveStatic(pathname, res).catch((error) => {
        if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
        res.end(`static: ${error.message}`);
      });
    }
  });
  server.on("connection", track);
  server.on("upgrade", (req, socket, head) => {
    const pathname = new URL(req.url, "http://front").pathname;
    if (pathname !== "/gateway/ws") {
      socket.end("HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
      return;
    }
    forwardUpgrade(upstream, req, socket, head, track);
  });

  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      }),
  };
}

async function serveStatic(pathname, res) {
  const prefix = Object.keys(STATIC_ROOTS).find((p) => pathname.startsWith(p));
  if (prefix === undefined) {
    res.writeHead(404, { "content-type": "text/plain" }).end("not found");
    return;
  }
  const root = STATIC_ROOTS[prefix];
  let relative;
  try {
    relative = decodeURIComponent(pathname.slice(prefix.length));
  } catch {
    res.writeHead(400, { "content-type": "text/plain" }).end("bad path");
    return;
  }
  const file = path.resolve(root, relative === "" ? "index.html" : relative);
  if (file !== root && !file.startsWith(root + path.sep)) {
    res.writeHead(403, { "content-type": "text/plain" }).end("outside the served directories");
    return;
  }
  const info = await stat(file).catch(() => null);
  if (info === null || !info.isFile()) {
    res.writeHead(404, { "content-type": "text/plain" }).end("not found");
    return;
  }
  const body = await readFile(file);
  res.writeHead(200, {
    "content-type": CONTENT_TYPES[path.extname(file)] ?? "application/octet-stream",
    "content-length": body.length,
    "cache-control": "no-store",
  });
  res.end(body);
}

/** Headers as sent, minus hop-by-hop ones, with Host pointing upstream. */
function upstreamHeaders(req, upstream, keepUpgrade) {
  const hopByHop = new Set(["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"]);
  const out = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i];
    const lower = name.toLowerCase();
    if (lower === "host") continue;
    if (!keepUpgrade && hopByHop.has(lower)) continue;
    out.push([name, req.rawHeaders[i + 1]]);
  }
  out.push(["host", upstream.host]);
  return out;
}

function forwardRequest(upstream, req, res) {
  const headers = {};
  for (const [name, value] of upstreamHeaders(req, upstream, false)) {
    const lower = name.toLowerCase();
    headers[lower] = headers[lower] === undefined ? value : `${headers[lower]}, ${value}`;
  }
  const outgoing = http.request(
    {
      host: upstream.hostname,
      port: upstream.port || 80,
      method: req.method,
      path: req.url,
      headers,
    },
    (answer) => {
      const forwarded = {};
      for (const [name, value] of Object.entries(answer.headers)) {
        if (!["connection", "keep-alive", "transfer-encoding"].includes(name)) forwarded[name] = value;
      }
      res.writeHead(answer.statusCode ?? 502, forwarded);
      answer.pipe(res);
    },
  );
  outgoing.on("error", (error) => {
    if (!res.headersSent) {
      res.writeHead(502, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: "bad_gateway", detail: error.message }));
    } else {
      res.destroy(error);
    }
  });
  req.pipe(outgoing);
}

/**
 * Replays the upgrade request on a fresh TCP connection to the server, then
 * splices the two sockets: the server's 101 and every frame after it pass
 * through untouched.
 */
function forwardUpgrade(upstream, req, socket, head, track) {
  const target = net.connect({ host: upstream.hostname, port: Number(upstream.port || 80) });
  track(target);
  const fail = () => {
    socket.destroy();
    target.destroy();
  };
  target.on("error", fail);
  socket.on("error", fail);
  target.on("connect", () => {
    target.setNoDelay(true);
    socket.setNoDelay(true);
    const lines = [`${req.method} ${req.url} HTTP/1.1`];
    for (const [name, value] of upstreamHeaders(req, upstream, true)) lines.push(`${name}: ${value}`);
    target.write(`${lines.join("\r\n")}\r\n\r\n`);
    if (head.length > 0) target.write(head);
    socket.pipe(target);
    target.pipe(socket);
  });
  socket.on("close", () => target.destroy());
  target.on("close", () => socket.destroy());
}

// ---------------------------------------------------------------------------
// Test data, straight through REST.

async function api(origin, method, route, { token, body } = {}) {
  const headers = { accept: "application/json" };
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(new URL(`/api${route}`, origin), {
      method,
      headers,
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(10_000),
    });
  } catch (error) {
    const why = error.cause?.message ?? error.message;
    throw new Failure(`setup: ${method} ${origin.origin}/api${route} got no answer: ${why}`);
  }
  const text = await response.text();
  let json = null;
  try {
    json = text === "" ? null : JSON.parse(text);
  } catch {
    json = text;
  }
  if (!response.ok) {
    throw new Failure(`setup: ${method} /api${route} answered ${response.status}: ${text.slice(0, 300)}`);
  }
  return json;
}

async function makeUser(origin, role) {
  const username = `${role}_${randomBytes(5).toString("hex")}`;
  await api(origin, "POST", "/auth/register", { body: { username, password: PASSWORD } });
  const pair = await api(origin, "POST", "/auth/login", { body: { username, password: PASSWORD } });
  const me = await api(origin, "GET", "/auth/me", { token: pair.access_token });
  return { username, userId: me.user_id, token: pair.access_token };
}

async function prepare(origin) {
  const owner = await makeUser(origin, "owner");
  const member = await makeUser(origin, "member");
  const guild = await api(origin, "POST", "/guilds", {
    token: owner.token,
    body: { name: `Example ${randomBytes(3).toString("hex")}`, visibility: "private" },
  });
  const channel = await api(origin, "POST", `/guilds/${guild.guild_id}/channels`, {
    token: owner.token,
    body: { name: "general", kind: "text" },
  });
  await api(origin, "POST", `/guilds/${guild.guild_id}/members/${member.userId}`, { token: owner.token });
  return { owner, member, guildId: guild.guild_id, channelId: channel.channel_id };
}

// ---------------------------------------------------------------------------
// Browser steps. Every wait is Playwright's own polling, bounded by a timeout.

const byTestId = (id) => `[data-testid="${id}"]`;

function watch(page, name, log) {
  page.on("console", (message) => log.push(`[${name}] console.${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => log.push(`[${name}] page error: ${error.message}`));
  page.on("requestfailed", (request) =>
    log.push(`[${name}] request failed: ${request.method()} ${request.url()} (${request.failure()?.errorText})`),
  );
}

async function step(description, action) {
  try {
    return await action();
  } catch (error) {
    if (error instanceof Failure) throw error;
    throw new Failure(`${description}: ${error.message.split("\n")[0]}`, { cause: error });
  }
}

/**
 * Acts in `page` as a user would, on the tab in front: Chromium pauses
 * animation frames in background tabs, which Playwright's actionability
 * checks wait on.
 */
async function inFront(page, action) {
  await page.bringToFront();
  return action();
}

async function logIn(page, frontUrl, user, timeout) {
  await step(`${user.username}: open the page`, () => page.goto(`${frontUrl}/example/index.html`, { timeout }));
  await step(`${user.username}: the app starts`, () =>
    page.waitForFunction(() => document.documentElement.dataset.appReady === "true", null, { timeout }),
  );
  await inFront(page, async () => {
    await page.fill(byTestId("login-username"), user.username, { timeout });
    await page.fill(byTestId("login-password"), PASSWORD, { timeout });
    await page.click(byTestId("login-submit"), { timeout });
  });
  await step(`${user.username}: logged in`, () =>
    page.locator(`${byTestId("me")}[data-user-id="${user.userId}"]`).waitFor({ timeout }),
  );
  await step(`${user.username}: the gateway is ready`, () =>
    page.locator(`${byTestId("gateway-state")}[data-state="ready"]`).waitFor({ timeout }),
  );
}

async function openChannel(page, who, guildId, channelId, timeout) {
  const guild = page.locator(`${byTestId("guild-item")}[data-guild-id="${guildId}"]`);
  await step(`${who}: the guild is listed`, () => guild.waitFor({ timeout }));
  await inFront(page, () => guild.locator(byTestId("guild-button")).click({ timeout }));
  const channel = page.locator(`${byTestId("channel-item")}[data-channel-id="${channelId}"]`);
  await step(`${who}: the channel is listed`, () => channel.waitFor({ timeout }));
  await inFront(page, () => channel.locator(byTestId("channel-button")).click({ timeout }));
  await step(`${who}: the channel is open`, () =>
    page.locator(`${byTestId("channel-item")}[data-channel-id="${channelId}"][aria-current="true"]`).waitFor({ timeout }),
  );
  // The gateway acknowledged the subscription: live messages will come.
  await step(`${who}: the channel's subscription is acknowledged`, () =>
    page.locator(`${byTestId("channel-item")}[data-channel-id="${channelId}"][data-live="true"]`).waitFor({ timeout }),
  );
  await step(`${who}: the composer is shown`, () => page.locator(byTestId("composer-input")).waitFor({ timeout }));
}

function messageLocator(page, text) {
  return page.locator(byTestId("message")).filter({ has: page.locator(byTestId("message-content"), { hasText: text }) });
}

/** How many `selector` elements there are (whose text contains `text`, if given). */
function countIn(page, selector, text) {
  return page.evaluate(
    ({ selector, text }) =>
      [...document.querySelectorAll(selector)].filter((e) => text === null || (e.textContent ?? "").includes(text)).length,
    { selector, text },
  );
}

/** Polls (Playwright's waitForFunction) until the count is `expected`, or fails at the timeout. */
async function expectCount(page, selector, text, expected, description, timeout) {
  try {
    await page.waitForFunction(
      ({ selector, text, expected }) =>
        [...document.querySelectorAll(selector)].filter((e) => text === null || (e.textContent ?? "").includes(text))
          .length === expected,
      { selector, text, expected },
      { timeout },
    );
  } catch (error) {
    const found = await countIn(page, selector, text).catch(() => "unknown");
    throw new Failure(`${description}: expected ${expected}, found ${found} (${error.message.split("\n")[0]})`);
  }
}

async function pageState(page) {
  try {
    return await page.evaluate(() => {
      const text = (sel) => [...document.querySelectorAll(sel)].map((e) => e.outerHTML.replace(/\s+/g, " ").slice(0, 200));
      return {
        url: location.href,
        error: document.querySelector('[data-testid="error"]')?.textContent ?? "",
        gateway: document.querySelector('[data-testid="gateway-state"]')?.getAttribute("data-state"),
        guilds: text('[data-testid="guild-item"]'),
        channels: text('[data-testid="channel-item"]'),
        messages: text('[data-testid="message"]'),
        members: text('[data-testid="member-item"]'),
      };
    });
  } catch (error) {
    return { unavailable: error.message };
  }
}

// ---------------------------------------------------------------------------

async function run(opts, cleanups, pages) {
  const timeout = opts.timeoutMs;
  const distApp = path.join(PACKAGE_DIR, "dist", "example", "app.js");
  if (!existsSync(distApp)) throw new Failure(`${distApp} is missing: run \`npm run build\` first`);
  if (!existsSync(opts.chromium)) throw new Failure(`no Chromium at ${opts.chromium} (see .ci/sdk-setup)`);

  const started = Date.now();
  const data = await prepare(opts.origin);
  console.log(
    `two-pages: owner ${data.owner.username}, member ${data.member.username}, guild ${data.guildId}, channel ${data.channelId}`,
  );

  const front = await startFrontServer(opts.origin);
  cleanups.push(() => front.close());
  console.log(`two-pages: serving the example at ${front.url}, forwarding to ${opts.origin.origin}`);

  const userDataDir = await mkdtemp(path.join(tmpdir(), "filament-two-pages-"));
  cleanups.push(() => rm(userDataDir, { recursive: true, force: true }));
  const context = await step("launch Chromium", () =>
    chromium.launchPersistentContext(userDataDir, {
      executablePath: opts.chromium,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 30_000,
    }),
  );
  cleanups.push(() => context.close());
  context.setDefaultTimeout(timeout);

  const pageA = context.pages()[0] ?? (await context.newPage());
  const pageB = await context.newPage();
  pages.push(["A (owner)", pageA], ["B (member)", pageB]);
  for (const [name, page] of pages) watch(page, name, opts.log);

  // One page at a time: each acts in front (see inFront).
  await logIn(pageA, front.url, data.owner, timeout);
  await logIn(pageB, front.url, data.member, timeout);
  await openChannel(pageA, "A", data.guildId, data.channelId, timeout);
  await openChannel(pageB, "B", data.guildId, data.channelId, timeout);
  console.log(`two-pages: both pages are in the channel (${Date.now() - started} ms)`);

  // A message typed in A reaches both pages, once each.
  const text = `hello from A ${randomBytes(4).toString("hex")}`;
  await inFront(pageA, async () => {
    await pageA.fill(byTestId("composer-input"), text);
    await pageA.click(byTestId("composer-send"));
  });
  await step("B: the message from A arrives live", () => messageLocator(pageB, text).waitFor({ timeout }));
  await step("A: the message shows in A", () => messageLocator(pageA, text).waitFor({ timeout }));
  const author = await messageLocator(pageB, text).getAttribute("data-author-id");
  if (author !== data.owner.userId) throw new Failure(`B: the message's author is ${author}, expected ${data.owner.userId}`);
  console.log(`two-pages: the message went from A to B (${Date.now() - started} ms)`);

  // B answers. A's socket delivers in order, so once A shows the answer, the
  // gateway's copy of A's own message has been handled too: each page must
  // then hold exactly one copy of each message (REST answer and echo merged).
  const answer = `answer from B ${randomBytes(4).toString("hex")}`;
  await inFront(pageB, async () => {
    await pageB.fill(byTestId("composer-input"), answer);
    await pageB.click(byTestId("composer-send"));
  });
  await step("A: the answer from B arrives live", () => messageLocator(pageA, answer).waitFor({ timeout }));
  await step("B: the answer shows in B", () => messageLocator(pageB, answer).waitFor({ timeout }));
  for (const [name, page] of [["A", pageA], ["B", pageB]]) {
    for (const sent of [text, answer]) {
      await expectCount(page, byTestId("message-content"), sent, 1, `${name}: copies of "${sent}"`, timeout);
    }
  }

  // The owner kicks the member from A's member list.
  const memberRow = pageA.locator(`${byTestId("member-item")}[data-user-id="${data.member.userId}"]`);
  await step("A: the member is listed", () => memberRow.waitFor({ timeout }));
  await inFront(pageA, () => memberRow.locator(byTestId("kick-button")).click());
  await step("A: the kicked member leaves A's member list", () => memberRow.waitFor({ state: "detached", timeout }));

  const channelInB = pageB.locator(`${byTestId("channel-item")}[data-channel-id="${data.channelId}"]`);
  const guildInB = pageB.locator(`${byTestId("guild-item")}[data-guild-id="${data.guildId}"]`);
  await step("B: the channel disappears after the kick", () => channelInB.waitFor({ state: "detached", timeout }));
  await step("B: the guild disappears after the kick", () => guildInB.waitFor({ state: "detached", timeout }));
  await step("B: the message pane is closed", () => pageB.locator(byTestId("composer")).waitFor({ state: "hidden", timeout }));
  const gatewayB = await pageB.locator(byTestId("gateway-state")).getAttribute("data-state");
  if (gatewayB !== "ready") throw new Failure(`B: the gateway is ${gatewayB} after the kick, expected it still ready`);
  // A is unaffected: still in the channel.
  await expectCount(pageA, `${byTestId("channel-item")}[data-channel-id="${data.channelId}"]`, null, 1, "A: the channel stays listed", timeout);
  console.log(`two-pages: the kick removed the guild and channel from B (${Date.now() - started} ms)`);

  const errors = opts.log.filter((line) => line.includes("page error:"));
  if (errors.length > 0) throw new Failure(`the pages threw:\n${errors.join("\n")}`);
}

async function main() {
  const opts = { ...options(), log: [] };
  const cleanups = [];
  const pages = [];
  const watchdog = setTimeout(() => {
    console.error(`two-pages: FAILED: the run took longer than ${opts.deadlineMs} ms`);
    process.exit(1);
  }, opts.deadlineMs);
  watchdog.unref();

  let failed = null;
  try {
    await run(opts, cleanups, pages);
  } catch (error) {
    failed = error;
  }
  if (failed !== null) {
    // Before the browser closes: what the pages looked like.
    for (const [name, page] of pages) {
      console.error(`--- page ${name}:\n${JSON.stringify(await pageState(page), null, 2)}`);
    }
  }
  for (const cleanup of cleanups.reverse()) {
    try {
      await cleanup();
    } catch (error) {
      console.error(`two-pages: cleanup: ${error.message}`);
    }
  }
  clearTimeout(watchdog);
  if (failed !== null) {
    if (opts.log.length > 0) console.error(`--- browser log:\n${opts.log.join("\n")}`);
    if (failed instanceof Failure) {
      console.error(`two-pages: FAILED: ${failed.message}`);
    } else {
      console.error("two-pages: FAILED with an unexpected error:");
      console.error(failed);
    }
    process.exitCode = 1;
    return;
  }
  console.log("two-pages: OK");
}

await main();
